"""Callbacks for ``fit``: early stopping, checkpoints, learning-rate and CSV logs, and your own.

``fit(..., callbacks=[...])`` calls, on every callback in order::

    on_train_begin(run)              before the first epoch
    on_epoch_begin(run, epoch)
    on_step_end(run, step)           after each optimizer (and scheduler) step; ``step``: StepStats
    on_epoch_end(run, stats)         after the epoch's validation; ``stats``: EpochStats
    on_train_end(run)                after the last epoch, also when training stopped or raised

``on_train_end`` goes to every callback whose ``on_train_begin`` returned, also when a later
callback's ``on_train_begin`` raised (so a callback can release in it what it took in
``on_train_begin``), and each is called even when an earlier one raises.

``run`` (a ``TrainingRun``) holds the model, optimizer, scheduler, the ``History`` so far and the
current epoch. A callback stops training with ``run.stop(reason)``: after a step, the epoch ends
there (its statistics cover the steps that ran and are recorded as usual); after an epoch, no
other epoch starts; before an epoch's first step (in ``on_train_begin`` or ``on_epoch_begin``), no
step runs: that epoch is not recorded and gets no ``on_epoch_end`` (the weights stay as they
were). The history is kept either way and ``history.stopped`` holds the reason.
"""
from __future__ import annotations

import csv
import math
import os

import numpy as np

from bitnet.history import METRICS


class TrainingRun:
    """The state a callback sees: ``model``, ``optimizer``, ``scheduler``, ``history``, ``epoch``
    (current, 1-based), ``epochs`` (the last epoch), ``has_validation``, ``stop_training``, and
    ``comm`` (the ``bitnet.distributed`` communicator of a distributed ``fit``, else None) with
    ``is_main`` (True on rank 0, or without ``comm``: the rank that writes files)."""

    def __init__(self, model, optimizer, scheduler, history, epochs, has_validation, log, comm=None):
        self.model, self.optimizer, self.scheduler, self.history = model, optimizer, scheduler, history
        self.epochs, self.has_validation, self.log, self.comm = epochs, has_validation, log, comm
        self.epoch = 0
        self.stop_training = False

    @property
    def is_main(self) -> bool:
        return self.comm is None or self.comm.is_main

    def barrier(self, what: str) -> None:
        """Wait until every rank of a distributed ``fit`` gets here (nothing without ``comm``)."""
        if self.comm is not None and self.comm.size > 1:
            self.comm.barrier(what=what)

    def stop(self, reason: str) -> None:
        """Stop training (see the module docstring); ``reason`` goes to ``history.stopped``."""
        self.stop_training = True
        self.history.stopped = reason

    @property
    def lr(self) -> float:
        """The first parameter group's learning rate (NaN for an optimizer without one)."""
        groups = getattr(self.optimizer, "param_groups", None)
        try:
            return float(groups[0]["lr"])
        except (TypeError, IndexError, KeyError, ValueError):
            return float("nan")


class Callback:
    """Base class: every hook does nothing. Subclass and override the ones you need."""

    def on_train_begin(self, run): pass

    def on_epoch_begin(self, run, epoch): pass

    def on_step_end(self, run, step): pass

    def on_epoch_end(self, run, stats): pass

    def on_train_end(self, run): pass


def _monitored(monitor, mode, who):
    """``(monitor, better)``: ``better(a, b, delta)`` is True when ``a`` improves on ``b``."""
    names = [m for m in METRICS if m != "lr"]
    if monitor not in names:
        raise ValueError(f"{who}: monitor must be one of {', '.join(names)}; got {monitor!r}")
    if mode == "auto":
        mode = "max" if monitor.endswith("accuracy") else "min"
    if mode not in ("min", "max"):
        raise ValueError(f"{who}: mode must be 'auto', 'min' or 'max', got {mode!r}")
    if mode == "min":
        return mode, lambda a, b, delta: a < b - delta
    return mode, lambda a, b, delta: a > b + delta


def _check_validation(run, monitor, who):
    if monitor.startswith("val_") and not run.has_validation:
        raise ValueError(f"{who} monitors {monitor!r}, but fit() got no val_loader; pass val_loader=... "
                         f"or monitor the training {monitor[4:]!r}")


class EarlyStopping(Callback):
    """Stop when ``monitor`` (``val_loss`` by default; also ``loss``, ``accuracy``,
    ``val_accuracy``) has not improved for ``patience`` epochs in a row (0 and 1 both stop at the
    first epoch without improvement). Improving means beating the best value so far by more than
    ``min_delta`` (lower for losses, higher for accuracies; ``mode`` "min" / "max" overrides); with
    ``baseline``, the first improvement must beat it. A NaN value never improves.

    ``restore_best_weights``: at the end of training (stopped or not) the model gets back the
    parameters and buffers it had after its best epoch (a copy is kept after each improvement)."""

    def __init__(self, monitor="val_loss", patience=0, min_delta=0.0, mode="auto", baseline=None,
                 restore_best_weights=False, verbose=True):
        if not isinstance(patience, (int, np.integer)) or patience < 0:
            raise ValueError(f"EarlyStopping: patience must be an int >= 0, got {patience!r}")
        if not math.isfinite(float(min_delta)) or min_delta < 0:
            raise ValueError(f"EarlyStopping: min_delta must be a finite number >= 0, got {min_delta!r}")
        self.monitor, self.patience, self.min_delta = monitor, int(patience), float(min_delta)
        self.mode, self._better = _monitored(monitor, mode, "EarlyStopping")
        self.baseline, self.restore_best_weights, self.verbose = baseline, restore_best_weights, verbose
        self.best = self.best_epoch = self.best_state = None
        self.wait = 0

    def on_train_begin(self, run):
        _check_validation(run, self.monitor, "EarlyStopping")
        self.best = self.baseline
        self.best_epoch, self.best_state, self.wait = None, None, 0

    def on_epoch_end(self, run, stats):
        value = getattr(stats, self.monitor)
        improved = not math.isnan(value) and (self.best is None or self._better(value, self.best, self.min_delta))
        if improved:
            self.best, self.best_epoch, self.wait = value, stats.epoch, 0
            if self.restore_best_weights:
                self.best_state = {k: np.array(v, copy=True) for k, v in run.model.state_dict().items()}
            return
        self.wait += 1
        if self.wait >= max(1, self.patience) and not run.stop_training:
            best = "none yet" if self.best_epoch is None else f"{self.best:.4f} at epoch {self.best_epoch}"
            run.stop(f"early stopping: {self.monitor} did not improve for {self.wait} epoch"
                     f"{'s' if self.wait > 1 else ''} (best {best})")
            if self.verbose and run.log is not None:
                run.log(run.history.stopped)

    def on_train_end(self, run):
        if self.restore_best_weights and self.best_state is not None:
            last = run.history.epochs[-1].epoch if run.history.epochs else None
            if last != self.best_epoch:
                run.model.load_state_dict(self.best_state)
                if self.verbose and run.log is not None:
                    run.log(f"restored the weights of epoch {self.best_epoch} ({self.monitor} {self.best:.4f})")


def _check_folder(path, who):
    """``bitnet.io.h5.check_destination``, its error naming the callback."""
    from bitnet.io.h5 import check_destination
    try:
        check_destination(path)
    except OSError as e:
        raise type(e)(f"{who}: {e}") from None


class ModelCheckpoint(Callback):
    """Save a checkpoint (``bitnet.save``: model, optimizer, scheduler, epoch, and the generator states of
    the model's Dropout layers) after each epoch, or with ``save_best_only`` only when ``monitor``
    improved. ``path`` may hold fields filled from the epoch's statistics, e.g.
    ``"ckpt-{epoch:02d}-{val_accuracy:.4f}.h5"``. ``rng``: a Generator saved with each checkpoint as its
    ``rng`` (the training loader's shuffling generator, ``train_loader.rng``), so that a resumed run
    (``state.restore(opt, train_loader.rng, sched)``) draws the same batches. Writes are atomic (a crash
    leaves the previous file). When training starts, the folder is checked and so is everything
    ``save`` will check (``bitnet.io.checkpoint.check_saveable``: the architecture, the optimizer's,
    schedule's and generators' state), so what cannot be saved fails before the first step."""

    def __init__(self, path, monitor="val_loss", save_best_only=False, mode="auto", save_training_state=True,
                 input_shape=None, verbose=False, rng=None):
        if rng is not None and not isinstance(rng, np.random.Generator):
            raise TypeError(f"ModelCheckpoint: rng must be a numpy.random.Generator (e.g. train_loader.rng), got "
                            f"{type(rng).__name__}")
        self.path, self.monitor, self.save_best_only = os.fspath(path), monitor, save_best_only
        self.mode, self._better = _monitored(monitor, mode, "ModelCheckpoint")
        self.save_training_state, self.input_shape, self.verbose = save_training_state, input_shape, verbose
        self.rng = rng
        self.best = None
        self.saved = []  # the paths written, in order

    def _filled(self, stats):
        try:
            return self.path.format(**{k: getattr(stats, k) for k in ("epoch",) + METRICS})
        except (KeyError, IndexError, ValueError) as e:
            raise ValueError(f"ModelCheckpoint: path {self.path!r} has a field that is not epoch or one of "
                             f"{', '.join(METRICS)} ({e})") from None

    def on_train_begin(self, run):
        if self.save_best_only:
            _check_validation(run, self.monitor, "ModelCheckpoint")
        probe = _TemplateProbe()
        if run.is_main:
            _check_folder(self._filled(probe), "ModelCheckpoint")
        from bitnet.io.checkpoint import check_saveable  # on every rank: they all hold the same objects
        if self.save_training_state:
            check_saveable(run.model, run.optimizer, 0, self.rng, run.scheduler, self.input_shape, "ModelCheckpoint")
        else:
            check_saveable(run.model, input_shape=self.input_shape, owner="ModelCheckpoint")
        self.best = None

    def on_epoch_end(self, run, stats):
        value = getattr(stats, self.monitor)
        if self.save_best_only:
            if math.isnan(value) or (self.best is not None and not self._better(value, self.best, 0.0)):
                return
            self.best = value
        from bitnet.io.checkpoint import save
        path = self._filled(stats)
        if run.is_main:  # distributed: rank 0 writes, the others wait for the file
            if self.save_training_state:
                save(run.model, path, optimizer=run.optimizer, epoch=stats.epoch, rng=self.rng,
                     scheduler=run.scheduler, input_shape=self.input_shape)
            else:
                save(run.model, path, input_shape=self.input_shape)
        run.barrier(f"waiting for rank 0 to write {path}")
        self.saved.append(path)
        if self.verbose and run.log is not None:
            run.log(f"saved {path} (epoch {stats.epoch}, {self.monitor} {value:.4f})")


class _TemplateProbe:
    """Placeholder values to check a path template before training (epoch 1, metrics 0)."""
    epoch = 1
    loss = accuracy = val_loss = val_accuracy = lr = 0.0


class LearningRateLogger(Callback):
    """Log the learning rate at the start of each epoch (every parameter group's, when they
    differ): ``log("epoch 3: lr 0.00125")``; ``log`` defaults to fit's ``log``. The history
    records it too (``EpochStats.lr``, ``StepStats.lr``)."""

    def __init__(self, log=None):
        self.log = log

    def on_epoch_begin(self, run, epoch):
        log = self.log or run.log
        if log is None:
            return
        lrs = [g.get("lr") for g in getattr(run.optimizer, "param_groups", [])]
        distinct = sorted(set(float(v) for v in lrs if v is not None))
        text = " ".join(f"{v:g}" for v in distinct) if distinct else "n/a"
        log(f"epoch {epoch}: lr {text}")


class CSVLogger(Callback):
    """Write one CSV row per epoch (``epoch, loss, accuracy, val_loss, val_accuracy, lr, seconds,
    samples_per_s``) to ``path``, flushed after each epoch; ``append`` continues an existing file
    (a header only when the file is new or empty), else the file is replaced.

    When training starts, the folder is checked (and an existing file's write permission), but the file
    is opened only when the first epoch's row is written: a run that fails or stops before its first
    epoch ends (a later callback refusing its settings, an error in the first epoch) leaves an existing
    log as it was. The file is closed when training ends, however it ends."""

    COLUMNS = ("epoch", "loss", "accuracy", "val_loss", "val_accuracy", "lr", "seconds", "samples_per_s")

    def __init__(self, path, append=False, separator=","):
        self.path, self.append, self.separator = os.fspath(path), append, separator
        self._file = self._writer = None

    def on_train_begin(self, run):
        self._close()  # a file a previous run left open
        if not run.is_main:  # distributed: rank 0 writes the log
            return
        _check_folder(self.path, "CSVLogger")
        if os.path.exists(self.path) and not os.access(self.path, os.W_OK):
            raise PermissionError(f"CSVLogger: cannot write {self.path}: the file is not writable")

    def _open(self):
        new = not (self.append and os.path.exists(self.path) and os.path.getsize(self.path) > 0)
        self._file = open(self.path, "a" if self.append else "w", newline="")
        self._writer = csv.writer(self._file, delimiter=self.separator)
        if new:
            self._writer.writerow(self.COLUMNS)

    def on_epoch_end(self, run, stats):
        if not run.is_main:
            return
        if self._writer is None:
            self._open()
        self._writer.writerow([getattr(stats, c) for c in self.COLUMNS])
        self._file.flush()

    def on_train_end(self, run):
        self._close()

    def _close(self):
        if self._file is not None:
            self._file.close()
            self._file = self._writer = None
