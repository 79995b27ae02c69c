"""``eval_mode(model)``: run a block in eval mode and give every module back its own train/eval flag.

``model.train(was_training)`` after ``model.eval()`` restores only the root's flag: it sets every
submodule to the root's mode, so a batch norm frozen with ``model[1].eval()`` inside a model in
training mode comes back unfrozen. ``eval_mode`` saves each module's flag and restores each one
(in ``finally``), changing nothing else. Used by ``bitnet.summary`` and ``bitnet.training.evaluate``.

This module imports nothing from bitnet, so every part of it can use it without import cycles.
"""
from __future__ import annotations

from contextlib import contextmanager

__all__ = ["eval_mode", "training_flags"]


def training_flags(model) -> list:
    """``[(module, training), ...]`` for ``model`` and every module below it (a model without
    submodules, e.g. ``CudaPackedModel``: just itself)."""
    modules = model.modules() if hasattr(model, "modules") else [model]
    return [(m, bool(m.training)) for m in modules]


@contextmanager
def eval_mode(model):
    """``with eval_mode(model):`` the model in eval mode; afterwards every module has the flag it had
    before, also when the block raises."""
    saved = training_flags(model)
    model.eval()
    try:
        yield model
    finally:
        for m, flag in saved:
            object.__setattr__(m, "training", flag)  # as Module.train sets it (no __setattr__ bookkeeping)
