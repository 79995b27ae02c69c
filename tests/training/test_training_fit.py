"""fit / evaluate and the progress output."""
from __future__ import annotations

import io

import numpy as np
import pytest

from bitnet import nn, optim
from bitnet.data import DataLoader
from bitnet.progress import Progress
from bitnet.training import evaluate, fit


class _TTY(io.StringIO):
    def isatty(self):
        return True


def test_progress_redraws_in_place_on_a_terminal():
    out = _TTY()
    bar = Progress(4, "epoch 1/1", stream=out, refresh=1e9, style="plain")
    for i in range(4):
        bar.update(loss=0.5, acc=0.25)
    text = out.getvalue()
    assert text.count("\r") == 4 and text.endswith("\n") and text.count("\n") == 1
    assert "[########################] 4/4" in text and "loss 0.5000 acc 0.2500" in text


def test_progress_prints_lines_in_a_log():
    out = io.StringIO()
    bar = Progress(3, "eval", stream=out, log_every=1e9, style="plain")
    for _ in range(3):
        bar.update(n=1)
    lines = out.getvalue().splitlines()
    assert len(lines) == 1 and lines[0].startswith("eval 3/3 (100%)") and "\r" not in out.getvalue()


def _toy_problem(n=256, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, 8)).astype(np.float32)
    y = (x[:, 0] + 0.5 * x[:, 1] > 0).astype(np.int64)  # linearly separable
    return x, y


def test_fit_learns_and_evaluate_restores_mode():
    x, y = _toy_problem()
    model = nn.Sequential(nn.Dense(8, 16, rng=0), nn.Tanh(), nn.Dense(16, 2, rng=1))
    opt = optim.Adam(model.parameters(), lr=1e-2)
    loader = DataLoader((x, y), 32, shuffle=True, rng=0)
    logs = []
    hist = fit(model, opt, loader, epochs=5, val_loader=DataLoader((x, y), 64), progress=False, log=logs.append)
    assert len(hist.epochs) == 5 and len(logs) == 5 and "val acc" in logs[-1]
    assert hist.epochs[-1].loss < hist.epochs[0].loss
    assert hist.last.val_accuracy > 0.95
    model.train()
    loss, acc = evaluate(model, DataLoader((x, y), 64))
    assert model.training and acc == pytest.approx(hist.last.val_accuracy)


@pytest.mark.filterwarnings("ignore:invalid value:RuntimeWarning")  # the inf input, on purpose
def test_fit_rejects_zero_epochs_and_reports_divergence():
    x, y = _toy_problem(64)
    model = nn.Sequential(nn.Dense(8, 2, rng=0))
    with pytest.raises(ValueError, match="epochs must be >= 1"):
        fit(model, optim.SGD(model.parameters(), lr=0.1), DataLoader((x, y), 16), epochs=0)
    x_bad = x.copy()
    x_bad[0, 0] = np.inf
    with pytest.raises(FloatingPointError, match="step 1: the training loss became nan"):
        fit(model, optim.SGD(model.parameters(), lr=0.1), DataLoader((x_bad, y), 16), epochs=1,
            progress=False, log=None)
