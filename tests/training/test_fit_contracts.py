"""fit's contracts with its loss function and its callbacks: the validation loss is the training
``loss_fn``'s (and a loss_fn that evaluation cannot call is refused before the first step); callbacks
that started get their ``on_train_end`` whatever stops the run, and CSVLogger keeps an existing log
until it has a row to write; a stop requested before an epoch's first step runs no step."""
from __future__ import annotations

import functools
import gc
import os
import warnings

import numpy as np
import pytest

from bitnet import functional as F, nn, optim
from bitnet.callbacks import Callback, CSVLogger, EarlyStopping, ModelCheckpoint
from bitnet.data import DataLoader
from bitnet.training import evaluate, fit


def _problem(n=128, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, 6)).astype(np.float32)
    y = (x[:, 0] - x[:, 1] > 0).astype(np.int64)
    return x, y


def _setup(shuffle=False):
    x, y = _problem()
    model = nn.Sequential(nn.Dense(6, 8, rng=0), nn.Tanh(), nn.Dense(8, 2, rng=1))
    train = DataLoader((x, y), 32, shuffle=shuffle, rng=0 if shuffle else None)
    return model, optim.Adam(model.parameters(), lr=0.01), train, DataLoader((x, y), 64)


def _weights(model):
    return {k: np.array(v, copy=True) for k, v in model.state_dict().items()}


def _same(a, b):
    return a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


def scaled(logits, targets, reduction="mean"):
    return F.cross_entropy(logits, targets, reduction=reduction) * 100


class _NotIterated:
    """A loader that fails the test if anything draws a batch from it."""

    def __init__(self, n=2):
        self.n = n

    def __len__(self):
        return self.n

    def __iter__(self):
        raise AssertionError("a batch was drawn before the loss_fn was checked")


# 1. the validation loss is computed with fit's loss_fn


def test_val_loss_is_the_training_loss_fn_on_the_validation_set():
    model, opt, train, val = _setup()
    logs = []
    hist = fit(model, opt, train, 2, loss_fn=scaled, val_loader=val, progress=False, log=logs.append)
    plain, acc = evaluate(model, val)
    mine, acc2 = evaluate(model, val, loss_fn=scaled)
    assert hist.last.val_loss == pytest.approx(mine, rel=1e-12) and acc2 == acc == hist.last.val_accuracy
    assert mine == pytest.approx(100 * plain, rel=1e-5)
    assert f"val loss {mine:.4f}" in logs[-1]


def test_early_stopping_and_checkpoints_watch_the_loss_fn(tmp_path):
    model, opt, train, val = _setup()
    es = EarlyStopping("val_loss", patience=5, verbose=False)
    ck = ModelCheckpoint(tmp_path / "m-{epoch}-{val_loss:.3f}.h5", save_best_only=True)
    hist = fit(model, opt, train, 2, loss_fn=scaled, val_loader=val, callbacks=[es, ck], progress=False, log=None)
    assert es.best == min(hist.history["val_loss"]) and es.best > 10  # the scaled loss, not cross-entropy's
    assert ck.saved[-1].endswith(f"-{hist.last.val_loss:.3f}.h5")


def test_a_partial_and_a_kwargs_loss_fn_are_accepted():
    smooth = functools.partial(F.cross_entropy, label_smoothing=0.2)

    def anything(logits, targets, **options):
        return F.cross_entropy(logits, targets, **options)
    for loss_fn in (smooth, anything):
        model, opt, train, val = _setup()
        hist = fit(model, opt, train, 1, loss_fn=loss_fn, val_loader=val, progress=False, log=None)
        assert hist.last.val_loss == pytest.approx(evaluate(model, val, loss_fn=loss_fn)[0], rel=1e-12)
    model, _, _, val = _setup()
    assert evaluate(model, val, loss_fn=smooth)[0] > evaluate(model, val)[0]  # the smoothing counts


def test_a_loss_fn_without_reduction_is_refused_before_the_first_step():
    def two_args(logits, targets):
        return F.cross_entropy(logits, targets)
    model, opt, train, val = _setup()
    before = _weights(model)
    with pytest.raises(TypeError, match=r"takes no 'reduction' keyword, which the validation loss") as info:
        fit(model, opt, _NotIterated(), 1, loss_fn=two_args, val_loader=val, progress=False, log=None)
    assert 'def two_args(logits, targets, reduction="mean")' in str(info.value)
    assert _same(before, _weights(model))
    with pytest.raises(TypeError, match=r"evaluate: loss_fn .*two_args\(logits, targets\) takes no 'reduction'"):
        evaluate(model, _NotIterated(), loss_fn=two_args)
    with pytest.raises(TypeError, match="def my_loss"):  # a lambda has no name to suggest
        evaluate(model, val, loss_fn=lambda logits, targets: F.cross_entropy(logits, targets))
    # without validation, fit only calls loss_fn(logits, targets): a two-argument loss still trains
    hist = fit(model, opt, train, 1, loss_fn=two_args, progress=False, log=None)
    assert len(hist.steps) == 4 and not _same(before, _weights(model))


def test_a_loss_fn_that_cannot_be_called_with_two_arguments_or_returns_a_vector():
    model, opt, train, val = _setup()
    before = _weights(model)
    with pytest.raises(TypeError, match=r"cannot be called as loss_fn\(logits, targets\)"):
        fit(model, opt, _NotIterated(), 1, loss_fn=lambda logits: logits.sum(), progress=False, log=None)
    with pytest.raises(TypeError, match="loss_fn must be a function"):
        fit(model, opt, _NotIterated(), 1, loss_fn="cross_entropy", progress=False, log=None)

    def per_sample(logits, targets, reduction="mean"):
        return F.cross_entropy(logits, targets, reduction="none")
    with pytest.raises(ValueError, match=r"must return a scalar Tensor, got shape \(32,\)"):
        fit(model, opt, train, 1, loss_fn=per_sample, progress=False, log=None)
    with pytest.raises(ValueError, match=r'reduction="sum"\) must return a scalar Tensor, got shape \(64,\)'):
        evaluate(model, val, loss_fn=per_sample)
    assert _same(before, _weights(model))


def test_mnist_val_loss_follows_the_loss_fn(data_dir):
    from bitnet.data import MNIST_MEAN, MNIST_STD, Normalize, load_mnist
    x, y = load_mnist("train", data_dir=data_dir)
    norm = Normalize(MNIST_MEAN, MNIST_STD)
    train = DataLoader((x[:256], y[:256]), 64, transform=norm)
    val = DataLoader((x[256:384], y[256:384]), 128, transform=norm)
    model = nn.Sequential(nn.Flatten(), nn.Dense(784, 10, rng=0))
    hist = fit(model, optim.Adam(model.parameters(), lr=1e-3), train, 1, loss_fn=scaled, val_loader=val,
               progress=False, log=None)
    assert hist.last.val_loss == pytest.approx(evaluate(model, val, loss_fn=scaled)[0], rel=1e-12)
    assert hist.last.val_loss == pytest.approx(100 * evaluate(model, val)[0], rel=1e-5)


# 2. callbacks that started get their end call; CSVLogger keeps an old log until it writes


class _Recorder(Callback):
    def __init__(self, calls, name):
        self.calls, self.name = calls, name

    def on_train_begin(self, run):
        self.calls.append((self.name, "begin"))

    def on_train_end(self, run):
        self.calls.append((self.name, "end"))


def test_a_callback_refusing_at_train_begin_leaves_the_csv_log_and_ends_the_started_ones(tmp_path):
    log = tmp_path / "keep.csv"
    old = "epoch,loss\n1,0.5\n2,0.25\n"
    log.write_text(old)
    model, opt, train, val = _setup()
    before, calls = _weights(model), []
    logger = CSVLogger(log)
    with warnings.catch_warnings():
        warnings.simplefilter("error", ResourceWarning)
        with pytest.raises(FileNotFoundError, match="ModelCheckpoint: cannot save"):
            fit(model, opt, train, 1, progress=False, log=None,
                callbacks=[_Recorder(calls, "a"), logger, ModelCheckpoint(tmp_path / "nodir" / "ck.h5"),
                           _Recorder(calls, "b")])
        gc.collect()
    assert log.read_text() == old and logger._file is None
    assert calls == [("a", "begin"), ("a", "end")]  # b never started, so it gets no end either
    assert _same(before, _weights(model))


def test_csv_log_survives_a_run_that_fails_in_its_first_epoch_and_is_replaced_by_one_that_runs(tmp_path):
    log = tmp_path / "keep.csv"
    log.write_text("epoch,loss\n1,0.5\n")
    model, opt, train, val = _setup()

    class Boom(Callback):
        def on_step_end(self, run, step):
            raise RuntimeError("boom")
    logger = CSVLogger(log)
    with pytest.raises(RuntimeError, match="boom"):
        fit(model, opt, train, 1, callbacks=[logger, Boom()], progress=False, log=None)
    assert log.read_text() == "epoch,loss\n1,0.5\n" and logger._file is None
    fit(model, opt, train, 2, callbacks=[logger], progress=False, log=None)
    lines = log.read_text().splitlines()
    assert len(lines) == 3 and lines[0].startswith("epoch,loss,accuracy") and lines[1].startswith("1,")


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0, reason="root may write read-only files")
def test_csv_logger_refuses_a_read_only_log_before_training(tmp_path):
    log = tmp_path / "ro.csv"
    log.write_text("old\n")
    log.chmod(0o444)
    model, opt, train, _ = _setup()
    with pytest.raises(PermissionError, match="CSVLogger: cannot write"):
        fit(model, opt, _NotIterated(), 1, callbacks=[CSVLogger(log)], progress=False, log=None)


def test_every_started_callback_ends_even_when_an_end_raises():
    calls = []

    class BadEnd(_Recorder):
        def on_train_end(self, run):
            super().on_train_end(run)
            raise OSError(f"{self.name} could not close")
    model, opt, train, _ = _setup()
    with pytest.raises(OSError, match="x could not close") as info:
        fit(model, opt, train, 1, callbacks=[BadEnd(calls, "x"), BadEnd(calls, "y"), _Recorder(calls, "z")],
            progress=False, log=None)
    assert [c for c in calls if c[1] == "end"] == [("x", "end"), ("y", "end"), ("z", "end")]
    if hasattr(info.value, "add_note"):
        assert any("y could not close" in n for n in info.value.__notes__)

    class Boom(Callback):
        def on_step_end(self, run, step):
            raise RuntimeError("the training error")
    calls.clear()
    with pytest.raises(RuntimeError, match="the training error") as info:  # the cause stays the error raised
        fit(model, opt, train, 1, callbacks=[BadEnd(calls, "x"), Boom(), _Recorder(calls, "z")], progress=False,
            log=None)
    assert [c for c in calls if c[1] == "end"] == [("x", "end"), ("z", "end")]
    if hasattr(info.value, "add_note"):
        assert any("x could not close" in n for n in info.value.__notes__)


# 3. a stop requested before an epoch's first step runs no step


class _Stopper(Callback):
    def __init__(self, where, epoch=1):
        self.where, self.epoch = where, epoch
        self.hooks, self.snapshots = [], {}

    def on_train_begin(self, run):
        self.hooks.append("train_begin")
        if self.where == "train_begin":
            run.stop("stopped at train begin")

    def on_epoch_begin(self, run, epoch):
        self.hooks.append(f"epoch_begin {epoch}")
        if self.where == "epoch_begin" and epoch == self.epoch:
            run.stop(f"stopped before epoch {epoch}")

    def on_step_end(self, run, step):
        self.hooks.append("step")

    def on_epoch_end(self, run, stats):
        self.hooks.append(f"epoch_end {stats.epoch}")
        self.snapshots[stats.epoch] = _weights(run.model)

    def on_train_end(self, run):
        self.hooks.append("train_end")


def test_a_stop_in_on_train_begin_runs_no_step():
    model, opt, train, val = _setup(shuffle=True)
    before, rng_state = _weights(model), train.rng.bit_generator.state
    stopper = _Stopper("train_begin")
    logs = []
    hist = fit(model, opt, train, 3, val_loader=val, callbacks=[stopper], progress=False, log=logs.append)
    assert hist.epochs == [] and hist.steps == [] and hist.stopped == "stopped at train begin"
    assert repr(hist) == "History(no epochs, 0 steps, stopped: stopped at train begin)"
    assert stopper.hooks == ["train_begin", "train_end"] and logs == []
    assert _same(before, _weights(model)) and train.rng.bit_generator.state == rng_state  # no batch drawn
    assert opt.state_dict()["state"] == {}  # the optimizer never stepped


@pytest.mark.parametrize("epoch", [1, 2])
def test_a_stop_in_on_epoch_begin_runs_no_step_of_that_epoch(tmp_path, epoch):
    model, opt, train, val = _setup(shuffle=True)
    before = _weights(model)
    stopper = _Stopper("epoch_begin", epoch)
    ck = ModelCheckpoint(tmp_path / "ck-{epoch}.h5")
    rng_states = []

    class RngState(Callback):
        def on_epoch_end(self, run, stats):
            rng_states.append(train.rng.bit_generator.state)
    hist = fit(model, opt, train, 3, val_loader=val, callbacks=[stopper, ck, RngState()], progress=False, log=None)
    ran = epoch - 1
    assert [e.epoch for e in hist.epochs] == list(range(1, epoch)) and [e.steps for e in hist.epochs] == [4] * ran
    assert len(hist.steps) == 4 * ran and hist.stopped == f"stopped before epoch {epoch}"
    assert stopper.hooks[-2:] == [f"epoch_begin {epoch}", "train_end"]  # no step, no epoch end for it
    assert [os.path.basename(p) for p in ck.saved] == [f"ck-{e}.h5" for e in range(1, epoch)]
    expected = stopper.snapshots[ran] if ran else before
    assert _same(expected, _weights(model))  # not a single step after the stop
    if not ran:
        assert opt.state_dict()["state"] == {}
    if ran:
        assert train.rng.bit_generator.state == rng_states[-1]  # the stopped epoch drew no batch order
        assert repr(hist).startswith("History(1 epochs, 4 steps; epoch 1:")
    else:
        assert repr(hist) == "History(no epochs, 0 steps, stopped: stopped before epoch 1)"
