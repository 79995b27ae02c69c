"""bitnet.callbacks and the History that fit returns: early stopping (with the best weights
restored), checkpoints, CSV and learning-rate logs, a callback that stops mid-epoch, and clear
errors for callbacks that cannot work."""
from __future__ import annotations

import csv
import math

import numpy as np
import pytest

import bitnet
from bitnet import nn, optim
from bitnet.callbacks import Callback, CSVLogger, EarlyStopping, LearningRateLogger, ModelCheckpoint
from bitnet.data import DataLoader
from bitnet.history import History
from bitnet.optim.lr_scheduler import StepLR
from bitnet.training import fit


def _problem(n=128, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, 6)).astype(np.float32)
    y = (x[:, 0] - x[:, 1] > 0).astype(np.int64)
    return x, y


def _setup(lr=0.05):
    x, y = _problem()
    model = nn.Sequential(nn.Dense(6, 8, rng=0), nn.Tanh(), nn.Dense(8, 2, rng=1))
    return model, optim.SGD(model.parameters(), lr=lr), DataLoader((x, y), 32), DataLoader((x, y), 64)


class _Scripted(Callback):
    """Reports the epochs' val_loss as a given sequence (to drive EarlyStopping exactly)."""

    def __init__(self, values):
        self.values = list(values)

    def on_epoch_end(self, run, stats):
        stats.val_loss = self.values[stats.epoch - 1]


def test_history_records_every_epoch_and_step_with_the_learning_rate():
    model, opt, train, val = _setup()
    sched = StepLR(opt, step_size=4, gamma=0.5)  # per step: 4 steps an epoch
    hist = fit(model, opt, train, epochs=3, val_loader=val, scheduler=sched, progress=False, log=None)
    assert isinstance(hist, History) and len(hist.epochs) == 3 and len(hist.steps) == 12
    assert [s.step for s in hist.steps[:4]] == [1, 2, 3, 4] and hist.steps[4].epoch == 2
    assert [s.lr for s in hist.steps[:5]] == [0.05, 0.05, 0.05, 0.05, 0.025]
    assert [e.lr for e in hist.epochs] == [0.025, 0.0125, 0.00625]
    # the epoch's loss is the size-weighted mean of its steps' losses
    assert hist.epochs[0].loss == pytest.approx(np.mean([s.loss for s in hist.steps[:4]]))
    assert hist.history["val_accuracy"] == [e.val_accuracy for e in hist.epochs]
    assert hist.stopped is None and "3 epochs, 12 steps" in repr(hist)
    html = hist._repr_html_()
    assert html.count("<tr>") == 4 and "val_accuracy" in html


@pytest.mark.parametrize("patience, stop_epoch", [(0, 3), (1, 3), (2, 4), (3, 5)])
def test_early_stopping_counts_epochs_without_improvement(patience, stop_epoch):
    model, opt, train, val = _setup()
    values = [1.0, 0.5, 0.6, 0.55, 0.7, 0.8, 0.9, 1.0]
    es = EarlyStopping("val_loss", patience=patience, verbose=False)
    hist = fit(model, opt, train, epochs=8, val_loader=val, callbacks=[_Scripted(values), es], progress=False,
               log=None)
    assert len(hist.epochs) == stop_epoch
    assert es.best == 0.5 and es.best_epoch == 2
    assert hist.stopped.startswith("early stopping: val_loss did not improve")


def test_min_delta_and_baseline_and_nan():
    model, opt, train, val = _setup()
    es = EarlyStopping("val_loss", patience=1, min_delta=0.1, verbose=False)
    hist = fit(model, opt, train, epochs=5, val_loader=val, callbacks=[_Scripted([1.0, 0.95, 0.5, 0.45, 0.1]), es],
               progress=False, log=None)
    assert len(hist.epochs) == 2  # 0.95 is not 0.1 better than 1.0
    es = EarlyStopping("val_loss", patience=1, baseline=0.4, verbose=False)
    hist = fit(model, opt, train, epochs=5, val_loader=val, callbacks=[_Scripted([0.5, 0.3]), es], progress=False,
               log=None)
    assert len(hist.epochs) == 1 and es.best_epoch is None
    es = EarlyStopping("val_loss", patience=2, verbose=False)
    hist = fit(model, opt, train, epochs=5, val_loader=val, callbacks=[_Scripted([0.5, math.nan, math.nan, 0.1, 0.1]),
               es], progress=False, log=None)
    assert len(hist.epochs) == 3


def test_restore_best_weights_gives_back_the_best_epochs_parameters():
    model, opt, train, val = _setup()
    snapshots = {}

    class Snap(Callback):
        def on_epoch_end(self, run, stats):
            snapshots[stats.epoch] = {k: v.copy() for k, v in run.model.state_dict().items()}
    logs = []
    es = EarlyStopping("val_loss", patience=2, restore_best_weights=True)
    hist = fit(model, opt, train, epochs=6, val_loader=val, callbacks=[_Scripted([0.9, 0.3, 0.5, 0.6, 0.7, 0.8]),
               Snap(), es], progress=False, log=logs.append)
    assert len(hist.epochs) == 4 and len(hist.epochs) == len(snapshots)
    for k, v in model.state_dict().items():
        assert np.array_equal(v, snapshots[2][k])
    assert not all(np.array_equal(v, snapshots[4][k]) for k, v in model.state_dict().items())
    assert any("restored the weights of epoch 2" in line for line in logs)


def test_a_callback_stops_mid_epoch_and_the_history_is_kept():
    model, opt, train, val = _setup()

    class StopAfter(Callback):
        def on_step_end(self, run, step):
            if step.epoch == 2 and step.step == 2:
                run.stop("enough")
    ends = []

    class End(Callback):
        def on_train_end(self, run):
            ends.append(len(run.history.epochs))
    hist = fit(model, opt, train, epochs=5, val_loader=val, callbacks=[StopAfter(), End()], progress=False, log=None)
    assert len(hist.epochs) == 2 and hist.epochs[1].steps == 2 and len(hist.steps) == 6
    assert hist.stopped == "enough" and ends == [2]


def test_checkpoints_best_only_with_a_template(tmp_path):
    model, opt, train, val = _setup()
    ck = ModelCheckpoint(tmp_path / "m-{epoch:02d}-{val_loss:.2f}.h5", monitor="val_loss", save_best_only=True)
    fit(model, opt, train, epochs=4, val_loader=val, callbacks=[_Scripted([0.9, 0.3, 0.5, 0.2]), ck], progress=False,
        log=None)
    assert [p.rsplit("/", 1)[1] for p in ck.saved] == ["m-01-0.90.h5", "m-02-0.30.h5", "m-04-0.20.h5"]
    loaded = bitnet.load(ck.saved[-1])
    for k, v in model.state_dict().items():
        assert np.array_equal(loaded.state_dict()[k], v)
    assert bitnet.load_training_state(ck.saved[-1]).epoch == 4


def test_csv_logger_and_learning_rate_logger(tmp_path):
    model, opt, train, val = _setup()
    logs = []
    path = tmp_path / "log.csv"
    fit(model, opt, train, epochs=2, val_loader=val, callbacks=[CSVLogger(path), LearningRateLogger(logs.append)],
        progress=False, log=None)
    rows = list(csv.DictReader(open(path)))
    assert [r["epoch"] for r in rows] == ["1", "2"] and float(rows[1]["lr"]) == 0.05
    assert logs == ["epoch 1: lr 0.05", "epoch 2: lr 0.05"]
    fit(model, opt, train, epochs=1, callbacks=[CSVLogger(path, append=True)], progress=False, log=None)
    lines = open(path).read().splitlines()
    assert len(lines) == 4 and lines[0].startswith("epoch,loss")


def test_bad_callbacks_fail_before_training(tmp_path):
    model, opt, train, val = _setup()
    before = {k: v.copy() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError, match="no val_loader"):
        fit(model, opt, train, epochs=1, callbacks=[EarlyStopping("val_loss")], progress=False, log=None)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        fit(model, opt, train, epochs=1, callbacks=[CSVLogger(tmp_path / "missing" / "log.csv")], progress=False,
            log=None)
    with pytest.raises(IsADirectoryError):
        fit(model, opt, train, epochs=1, callbacks=[ModelCheckpoint(tmp_path, monitor="loss")], progress=False,
            log=None)
    with pytest.raises(ValueError, match="field"):
        fit(model, opt, train, epochs=1, callbacks=[ModelCheckpoint(tmp_path / "{step}.h5", monitor="loss")],
            progress=False, log=None)
    with pytest.raises(TypeError, match="Callback"):
        fit(model, opt, train, epochs=1, callbacks=[print], progress=False, log=None)
    with pytest.raises(ValueError, match="monitor must be one of"):
        EarlyStopping("val_acc")
    for k, v in model.state_dict().items():
        assert np.array_equal(v, before[k])  # nothing trained


def test_history_plot(tmp_path):
    pytest.importorskip("matplotlib")
    model, opt, train, val = _setup()
    hist = fit(model, opt, train, epochs=2, val_loader=val, progress=False, log=None)
    fig = hist.plot(tmp_path / "h.png")
    assert (tmp_path / "h.png").stat().st_size > 1000
    assert [ax.get_ylabel() for ax in fig.axes] == ["loss", "accuracy"]
    assert len(fig.axes[0].lines) == 3  # steps, train, validation
    with pytest.raises(ValueError, match="nothing to plot"):
        History().plot()
