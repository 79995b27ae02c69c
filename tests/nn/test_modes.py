"""bitnet.nn.modes.eval_mode, and the two users of it: summary() and evaluate() give every module back
its own train/eval flag (a frozen batch norm inside a model in training mode stays frozen)."""
from __future__ import annotations

import io

import numpy as np
import pytest

import bitnet
from bitnet import nn
from bitnet.data import DataLoader
from bitnet.nn.modes import eval_mode
from bitnet.training import evaluate


def _mixed_model():
    """A model in training mode whose batch norms are frozen (eval), one of them nested."""
    rng = np.random.default_rng(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3, rng=rng), nn.BatchNorm2d(4), nn.Tanh(),
                          nn.Sequential(nn.Conv2d(4, 4, 3, rng=rng), nn.BatchNorm2d(4)),
                          nn.Flatten(), nn.Dense(4, 3, rng=rng))
    model.train()
    model[1].eval()
    model[3][1].eval()
    return model


def _flags(model):
    return {name: m.training for name, m in model.named_modules()}


def test_eval_mode_sets_eval_inside_and_restores_each_flag_also_on_error():
    model = _mixed_model()
    before = _flags(model)
    assert before["1"] is False and before["3.1"] is False and before["0"] is True
    with eval_mode(model) as m:
        assert m is model and not any(_flags(model).values())
    assert _flags(model) == before
    with pytest.raises(RuntimeError, match="boom"):
        with eval_mode(model):
            raise RuntimeError("boom")
    assert _flags(model) == before
    model.eval()
    model[0].train()  # a model in eval with one layer in training mode: also kept
    before = _flags(model)
    with eval_mode(model):
        pass
    assert _flags(model) == before


def test_summary_keeps_a_frozen_batchnorm_frozen():
    model = _mixed_model()
    before = _flags(model)
    bitnet.summary(model, (1, 5, 5), file=io.StringIO())
    assert _flags(model) == before
    running = model[1].running_mean.copy()
    model(bitnet.Tensor(np.random.default_rng(1).standard_normal((4, 1, 5, 5)).astype(np.float32)))
    assert np.array_equal(model[1].running_mean, running)  # still frozen: its statistics do not move


def test_evaluate_keeps_a_frozen_batchnorm_frozen():
    model = _mixed_model()
    before = _flags(model)
    rng = np.random.default_rng(2)
    x, y = rng.standard_normal((8, 1, 5, 5)).astype(np.float32), rng.integers(0, 3, 8)
    evaluate(model, DataLoader((x, y), 4))
    assert _flags(model) == before


def test_evaluate_restores_the_flags_when_the_model_fails():
    model = _mixed_model()
    before = _flags(model)
    bad = np.zeros((4, 2, 5, 5), np.float32)  # 2 channels for a 1-channel model
    with pytest.raises(ValueError):
        evaluate(model, DataLoader((bad, np.zeros(4, np.int64)), 4))
    assert _flags(model) == before
