"""``fit`` and ``evaluate``: the training loop of the docs, packaged with progress output.

The loop is the explicit PyTorch-style loop (see docs/training.md)::

    for x, y in loader:
        optimizer.zero_grad()
        loss = F.cross_entropy(model(Tensor(x)), y)
        loss.backward()
        optimizer.step()

``loss_fn`` (``bitnet.functional.cross_entropy`` by default) is called as ``loss_fn(logits, targets)`` for a
training step, which must return the batch's mean loss as a scalar ``Tensor``, and as
``loss_fn(logits, targets, reduction="sum")`` for an evaluation (``evaluate``, and ``fit``'s validation after
each epoch), which must return the batch's summed loss (the mean over the set is the total divided by the
number of samples). A function written as ``def my_loss(logits, targets, reduction="mean")`` that passes
``reduction`` on to a bitnet loss does both; ``fit`` and ``evaluate`` check the signature before the first
batch (``inspect.signature``, where the callable has one).

``fit`` adds a scheduler step per iteration (optional), running loss / accuracy / throughput on
a progress bar, an evaluation after each epoch when a validation loader is given, callbacks
(``bitnet.callbacks``) and a ``History`` of every epoch and step (``bitnet.history``).

``distributed=comm`` (a ``bitnet.distributed`` communicator) trains data-parallel over its ranks, each
on its part of every global batch, and ``evaluate`` splits its set over them: what changes is listed
in ``bitnet.distributed.fitting``; one rank (or ``None``) is the plain loop.

``device="cuda"`` trains on the GPU: the model is moved there (``Module.to``, in place, so the
optimizer's parameters move with it), and each loader's batches are copied there one step ahead
(``bitnet.data.DevicePrefetcher``). Per step, the loss and the number of correct predictions come back
to the host (for the progress bar, the history and the finite-loss check): one synchronization.
"""
from __future__ import annotations

import inspect
import time
import warnings

import numpy as np

from bitnet import functional as F
from bitnet.backend import check_device
from bitnet.callbacks import Callback, TrainingRun
from bitnet.history import EpochStats, History, StepStats
from bitnet.nn.modes import eval_mode
from bitnet.data.prefetch import on_device
from bitnet.gpu.arrays import array_module, is_device_array, to_device, to_host
from bitnet.ops import workspace
from bitnet.progress import Progress
from bitnet.tensor import Tensor, no_grad

__all__ = ["EpochStats", "History", "StepStats", "evaluate", "fit"]


def _bar(total, desc, progress):
    """``progress``: True (the default style: tqdm where installed, bitnet.progress), False (none),
    or a style name ("auto", "tqdm", "plain")."""
    if isinstance(progress, str):
        return Progress(total, desc, style=progress)
    return Progress(total, desc, enabled=bool(progress))


def _several(comm) -> bool:
    return comm is not None and comm.size > 1


def evaluate(model, loader, loss_fn=F.cross_entropy, progress: bool = False, desc: str = "eval", distributed=None,
             device=None):
    """Mean loss and accuracy of ``model`` over ``loader`` in eval mode (no graph recorded).

    ``loss_fn(logits, targets, reduction="sum")`` must return the batch's summed loss as a scalar ``Tensor``
    (module docstring): the mean is the total over the set divided by its number of samples. A ``loss_fn``
    without a ``reduction`` keyword is refused with a ``TypeError`` before the first batch.

    ``device`` ("cpu" / "cuda"): move the model there first and feed it the batches there (module
    docstring); None evaluates where the model and the batches are.

    Every module's train/eval mode is restored afterwards (``bitnet.nn.modes.eval_mode``: a batch
    norm frozen with ``.eval()`` in a model in training mode stays frozen). ``distributed``: a
    communicator whose ranks each evaluate a contiguous part of what one process would evaluate (a
    DataLoader's dataset, respecting its ``drop_last``; or a share of a list of batches) and add up
    their sums (every rank returns the result for the whole set; the progress bar shows on rank 0 only)."""
    _check_loss_fn(loss_fn, "evaluate", evaluation=True)
    if _several(distributed):
        from bitnet.distributed.fitting import evaluation_loader
        loader = evaluation_loader(loader, distributed)
        progress = progress and distributed.is_main
    device = _check_device("evaluate", device, distributed)
    if device is not None:
        model.to(device)
        loader = on_device(loader, device)
    total_loss, correct, seen = 0.0, 0, 0
    bar = _bar(len(loader), desc, progress)
    try:
        with eval_mode(model), no_grad():
            for x, y in loader:
                logits = model(Tensor(x))
                loss = _scalar(loss_fn(logits, y, reduction="sum"), "evaluate", 'reduction="sum"')
                loss_sum, right = _host_numbers(loss.data, logits.data, y)
                total_loss += loss_sum
                correct += right
                seen += len(y)
                bar.update()
    finally:
        bar.close()
    if _several(distributed):
        from bitnet.distributed.fitting import evaluation_totals
        total_loss, correct, seen = evaluation_totals(distributed, total_loss, correct, seen)
    if seen == 0:
        raise ValueError("evaluate: the loader yielded no samples")
    return total_loss / seen, correct / seen


def fit(model, optimizer, train_loader, epochs: int, loss_fn=F.cross_entropy, val_loader=None,
        scheduler=None, progress=True, log=print, after_step=None, start_epoch: int = 1,
        after_epoch=None, callbacks=None, distributed=None, device=None) -> History:
    """Train ``model`` for ``epochs`` passes over ``train_loader``; returns a ``History`` (per epoch
    and per step, ``bitnet.history``), also when a callback stops training early.

    ``loss_fn(logits, targets)`` gives the batch's mean loss that each step minimizes; with ``val_loader`` the
    validation loss is computed with the same ``loss_fn``, called with ``reduction="sum"`` (module docstring),
    so a ``loss_fn`` that lacks that keyword is refused (``TypeError``) before the first step.
    ``scheduler.step()`` is called after every optimizer step (schedules count iterations);
    ``after_step(model)``, if given, runs after every step (e.g. weight clipping). ``log``
    receives one summary line per epoch (``None`` silences it). ``progress``: True (tqdm where it
    is installed, else bitnet's own bar), False, or a style ("tqdm", "plain"; ``bitnet.progress``).
    ``start_epoch`` > 1 continues a run (epochs ``start_epoch..epochs``, e.g. from a checkpoint);
    ``after_epoch(epoch, stats)`` runs after each epoch (e.g. to save a checkpoint). ``callbacks``:
    ``bitnet.callbacks.Callback`` objects (early stopping, checkpoints, CSV and learning-rate logs,
    your own), called in order (``bitnet.callbacks``); every callback whose ``on_train_begin`` returned gets
    its ``on_train_end``, also when training raised or a later callback's ``on_train_begin`` did. A
    ``run.stop(reason)`` before an epoch's first step (in ``on_train_begin`` or ``on_epoch_begin``) runs no
    further step: that epoch is not recorded. ``distributed``: a ``bitnet.distributed``
    communicator to train data-parallel over its ranks, ``train_loader.batch_size`` being the global
    batch (module docstring). ``device``: "cpu" or "cuda" to move the model there and train on it, the
    batches copied there one step ahead (module docstring); None trains where the model is.
    """
    if epochs < 1:
        raise ValueError(f"fit: epochs must be >= 1, got {epochs}")
    if not 1 <= start_epoch <= epochs + 1:
        raise ValueError(f"fit: start_epoch must be in 1..{epochs + 1}, got {start_epoch}")
    callbacks = list(callbacks or [])
    for cb in callbacks:
        if not isinstance(cb, Callback):
            raise TypeError(f"fit: callbacks must be bitnet.callbacks.Callback objects, got {type(cb).__name__}; "
                            "subclass Callback and override the hooks you need")
    _check_loss_fn(loss_fn, "fit", evaluation=val_loader is not None)
    device = _check_device("fit", device, distributed)
    if device is not None:
        model.to(device)
        train_loader, val_loader = on_device(train_loader, device), on_device(val_loader, device)
    dist = None
    if _several(distributed) and not distributed.is_main:
        progress, log = False, None
    run = TrainingRun(model, optimizer, scheduler, History(), epochs, val_loader is not None, log, distributed)
    try:
        if _several(distributed):
            from bitnet.distributed.fitting import DistributedFit
            dist = DistributedFit(distributed, model, train_loader)
            train_loader = dist.loader
        started = []  # the callbacks whose on_train_begin returned: they get on_train_end, whatever happens
        try:
            for cb in callbacks:
                cb.on_train_begin(run)
                started.append(cb)
            _fit(run, train_loader, epochs, loss_fn, val_loader, progress, after_step, start_epoch, after_epoch,
                 callbacks, dist)
        except BaseException as error:
            _end_callbacks(started, run, error)
            raise
        _end_callbacks(started, run)
        return run.history
    finally:
        if dist is not None:
            dist.close()
        workspace.clear()  # the step's recycled arrays (bitnet.ops.workspace): not kept after training


def _fit(run, train_loader, epochs, loss_fn, val_loader, progress, after_step, start_epoch, after_epoch,
         callbacks, dist) -> None:
    model, optimizer, scheduler, history, log = run.model, run.optimizer, run.scheduler, run.history, run.log
    params = [p for p in model.parameters() if p.requires_grad]
    for epoch in range(start_epoch, epochs + 1):
        if run.stop_training:  # stopped by an epoch's end, or already in on_train_begin: no epoch starts
            break
        run.epoch = epoch
        for cb in callbacks:
            cb.on_epoch_begin(run, epoch)
        if run.stop_training:  # stopped in on_epoch_begin: the epoch runs no step and is not recorded
            break
        model.train()
        bar = _bar(len(train_loader), f"epoch {epoch}/{epochs}", progress)
        loss_sum, correct, seen, steps = 0.0, 0, 0, 0
        start = time.perf_counter()
        try:
            for x, y in train_loader:
                for p in params:
                    p.grad = None
                lr = run.lr
                logits = model(Tensor(x))
                loss = _scalar(loss_fn(logits, y), "fit", "")
                batch_loss, batch_correct = _host_numbers(loss.data, logits.data, y)
                if not np.isfinite(batch_loss):
                    raise FloatingPointError(
                        f"epoch {epoch}, step {steps + 1}: the training loss became {batch_loss}; "
                        "lower the learning rate or check the input normalization")
                loss.backward()
                optimizer.step()
                if scheduler is not None:
                    scheduler.step()
                if after_step is not None:
                    after_step(model)
                n, steps = len(y), steps + 1
                if dist is not None:  # the global batch's numbers, the same on every rank
                    batch_loss, batch_correct, n = dist.step_totals(batch_loss, batch_correct, n)
                loss_sum += batch_loss * n
                correct += batch_correct
                seen += n
                step = StepStats(epoch, steps, batch_loss, batch_correct / n, lr, n)
                history.steps.append(step)
                for cb in callbacks:
                    cb.on_step_end(run, step)
                elapsed = time.perf_counter() - start
                bar.update(loss=loss_sum / seen, acc=correct / seen, img_s=f"{seen / elapsed:.0f}")
                if run.stop_training:
                    break
        finally:
            bar.close()
        if seen == 0:
            raise ValueError(f"fit: epoch {epoch}: the training loader yielded no samples")
        if dist is not None:
            dist.end_epoch(epoch)
        seconds = time.perf_counter() - start
        stats = EpochStats(epoch, loss_sum / seen, correct / seen, seconds, seen / seconds, lr=run.lr, steps=steps)
        if val_loader is not None:
            stats.val_loss, stats.val_accuracy = evaluate(model, val_loader, loss_fn=loss_fn, distributed=run.comm)
        history.epochs.append(stats)
        if log is not None:
            msg = (f"epoch {epoch}/{epochs}: loss {stats.loss:.4f} acc {stats.accuracy:.4f} "
                   f"{seconds:.1f}s ({stats.samples_per_s:.0f} img/s)")
            if val_loader is not None:
                msg += f" | val loss {stats.val_loss:.4f} val acc {stats.val_accuracy:.4f}"
            log(msg)
        if after_epoch is not None:
            after_epoch(epoch, stats)
        for cb in callbacks:
            cb.on_epoch_end(run, stats)


def _end_callbacks(started, run, error=None) -> None:
    """``on_train_end`` on every callback in ``started``, in order, each one called even when an earlier one
    raises. ``error``: the exception that ended training, which stays the one raised (a callback's error
    is added to it as a note); without one, the first callback error is raised once all have run."""
    first = None
    for cb in started:
        try:
            cb.on_train_end(run)
        except Exception as e:
            if error is None and first is None:
                first = e
                continue
            note = f"{type(cb).__name__}.on_train_end raised too: {type(e).__name__}: {e}"
            target = error if error is not None else first
            if hasattr(target, "add_note"):  # Python >= 3.11
                target.add_note(note)
            else:
                warnings.warn(note, RuntimeWarning, stacklevel=3)
    if first is not None:
        raise first


_LOSS_SIGNATURE = 'loss_fn(logits, targets, reduction="mean")'


def _check_loss_fn(loss_fn, who, evaluation) -> None:
    """Refuse (``TypeError``) a ``loss_fn`` that cannot be called as ``fit`` / ``evaluate`` call it: with
    ``(logits, targets)``, and for an ``evaluation`` also with ``reduction="sum"``. A callable whose
    signature ``inspect`` cannot read (some builtins) is not checked."""
    if not callable(loss_fn):
        raise TypeError(f"{who}: loss_fn must be a function {_LOSS_SIGNATURE}, got {type(loss_fn).__name__}")
    try:
        sig = inspect.signature(loss_fn)
    except (TypeError, ValueError):
        return
    name = getattr(loss_fn, "__qualname__", None) or type(loss_fn).__name__
    try:
        sig.bind(None, None)
    except TypeError:
        raise TypeError(f"{who}: loss_fn {name}{sig} cannot be called as loss_fn(logits, targets); expected "
                        f"{_LOSS_SIGNATURE}, returning the batch's mean loss (a scalar Tensor)") from None
    if evaluation:
        try:
            sig.bind(None, None, reduction="sum")
        except TypeError:
            why = "the validation loss (val_loader=...)" if who == "fit" else "the evaluation"
            own = getattr(loss_fn, "__name__", "")
            own = own if own.isidentifier() else "my_loss"
            raise TypeError(
                f"{who}: loss_fn {name}{sig} takes no 'reduction' keyword, which {why} needs: it calls "
                "loss_fn(logits, targets, reduction=\"sum\") for the batch's summed loss. Define it as "
                f"def {own}(logits, targets, reduction=\"mean\") and pass reduction on to the bitnet loss it "
                "uses (e.g. F.cross_entropy(logits, targets, reduction=reduction))") from None


def _scalar(loss, who, how):
    """``loss`` if it is a one-element ``Tensor`` (what a ``loss_fn`` must return), else a clear error."""
    call = f"loss_fn(logits, targets{', ' + how if how else ''})"
    if not isinstance(loss, Tensor):
        raise TypeError(f"{who}: {call} must return a bitnet Tensor (a scalar), got {type(loss).__name__}")
    if loss.data.size != 1:
        raise ValueError(f"{who}: {call} must return a scalar Tensor, got shape {tuple(loss.data.shape)}; "
                         f"reduce it ({'sum' if how else 'mean'} over the batch)")
    return loss


def _check_device(what, device, distributed):
    if check_device(device, what, none=True) == "cuda" and _several(distributed):
        raise ValueError(f"{what}: distributed training runs on the CPU only for now; got device='cuda' with "
                         f"{distributed.size} ranks. Drop device= (or distributed=)")
    return device


def _host_numbers(loss, logits, y):
    """``(float(loss), number of rows whose argmax is y)``, computed where the arrays are and brought
    to the host together (one transfer from a GPU)."""
    if not is_device_array(logits):
        return float(loss), int((logits.argmax(axis=1) == y).sum())
    right = (logits.argmax(axis=1) == to_device(y, "cuda")).sum()
    pair = to_host(array_module(loss).stack([loss.astype("float64"), right.astype("float64")]))
    return float(pair[0]), int(pair[1])
