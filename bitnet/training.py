"""``fit`` and ``evaluate``: the training loop of the docs, packaged with progress output.

The loop is the explicit PyTorch-style loop (see docs/training.md)::

    for x, y in loader:
        optimizer.zero_grad()
        loss = F.cross_entropy(model(Tensor(x)), y)
        loss.backward()
        optimizer.step()

``fit`` adds a scheduler step per iteration (optional), running loss / accuracy / throughput on
a progress line, and an evaluation after each epoch when a validation loader is given.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from bitnet import functional as F
from bitnet.ops import workspace
from bitnet.progress import Progress
from bitnet.tensor import Tensor, no_grad


@dataclass
class EpochStats:
    epoch: int
    loss: float
    accuracy: float
    seconds: float
    samples_per_s: float
    val_loss: float = float("nan")
    val_accuracy: float = float("nan")


@dataclass
class History:
    epochs: list = field(default_factory=list)

    @property
    def last(self) -> EpochStats:
        return self.epochs[-1]


def evaluate(model, loader, loss_fn=F.cross_entropy, progress: bool = False, desc: str = "eval"):
    """Mean loss and accuracy of ``model`` over ``loader`` in eval mode (no graph recorded).

    The model's train/eval mode is restored afterwards."""
    was_training = model.training
    model.eval()
    total_loss, correct, seen = 0.0, 0, 0
    bar = Progress(len(loader), desc, enabled=progress)
    try:
        with no_grad():
            for x, y in loader:
                logits = model(Tensor(x))
                total_loss += float(loss_fn(logits, y, reduction="sum").data)
                correct += int((logits.data.argmax(axis=1) == y).sum())
                seen += len(y)
                bar.update()
    finally:
        model.train(was_training)
    if seen == 0:
        raise ValueError("evaluate: the loader yielded no samples")
    return total_loss / seen, correct / seen


def fit(model, optimizer, train_loader, epochs: int, loss_fn=F.cross_entropy, val_loader=None,
        scheduler=None, progress: bool = True, log=print, after_step=None, start_epoch: int = 1,
        after_epoch=None) -> History:
    """Train ``model`` for ``epochs`` passes over ``train_loader``.

    ``scheduler.step()`` is called after every optimizer step (schedules count iterations);
    ``after_step(model)``, if given, runs after every step (e.g. weight clipping). ``log``
    receives one summary line per epoch (``None`` silences it). Returns a ``History``.
    ``start_epoch`` > 1 continues a run (epochs ``start_epoch..epochs``, e.g. from a checkpoint);
    ``after_epoch(epoch, stats)`` runs after each epoch (e.g. to save a checkpoint).
    """
    if epochs < 1:
        raise ValueError(f"fit: epochs must be >= 1, got {epochs}")
    if not 1 <= start_epoch <= epochs + 1:
        raise ValueError(f"fit: start_epoch must be in 1..{epochs + 1}, got {start_epoch}")
    try:
        return _fit(model, optimizer, train_loader, epochs, loss_fn, val_loader, scheduler, progress, log,
                    after_step, start_epoch, after_epoch)
    finally:
        workspace.clear()  # the step's recycled arrays (bitnet.ops.workspace): not kept after training


def _fit(model, optimizer, train_loader, epochs, loss_fn, val_loader, scheduler, progress, log, after_step,
         start_epoch, after_epoch) -> History:
    history = History()
    params = [p for p in model.parameters() if p.requires_grad]
    for epoch in range(start_epoch, epochs + 1):
        model.train()
        bar = Progress(len(train_loader), f"epoch {epoch}/{epochs}", enabled=progress)
        loss_sum, correct, seen = 0.0, 0, 0
        start = time.perf_counter()
        for x, y in train_loader:
            for p in params:
                p.grad = None
            logits = model(Tensor(x))
            loss = loss_fn(logits, y)
            if not np.isfinite(loss.data):
                raise FloatingPointError(
                    f"epoch {epoch}, step {bar.count + 1}: the training loss became {float(loss.data)}; "
                    "lower the learning rate or check the input normalization")
            loss.backward()
            optimizer.step()
            if scheduler is not None:
                scheduler.step()
            if after_step is not None:
                after_step(model)
            n = len(y)
            loss_sum += float(loss.data) * n
            correct += int((logits.data.argmax(axis=1) == y).sum())
            seen += n
            elapsed = time.perf_counter() - start
            bar.update(loss=loss_sum / seen, acc=correct / seen, img_s=f"{seen / elapsed:.0f}")
        seconds = time.perf_counter() - start
        stats = EpochStats(epoch, loss_sum / seen, correct / seen, seconds, seen / seconds)
        if val_loader is not None:
            stats.val_loss, stats.val_accuracy = evaluate(model, val_loader)
        history.epochs.append(stats)
        if log is not None:
            msg = (f"epoch {epoch}/{epochs}: loss {stats.loss:.4f} acc {stats.accuracy:.4f} "
                   f"{seconds:.1f}s ({stats.samples_per_s:.0f} img/s)")
            if val_loader is not None:
                msg += f" | val loss {stats.val_loss:.4f} val acc {stats.val_accuracy:.4f}"
            log(msg)
        if after_epoch is not None:
            after_epoch(epoch, stats)
    return history
