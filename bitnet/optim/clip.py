"""Gradient clipping, in place on ``p.grad``, as PyTorch's ``torch.nn.utils.clip_grad_*_``.

``clip_grad_norm_``: the total norm is taken over all gradients together, as if concatenated,
``total = (sum_p ||g_p||_q ** q) ** (1/q)`` (``max_p max|g_p|`` for ``q = inf``); when
``c = max_norm / (total + 1e-6)`` is below 1, every gradient is multiplied by ``c``.
``clip_grad_value_``: every gradient entry is clipped to ``[-clip_value, clip_value]``.
Parameters whose ``.grad`` is ``None`` are skipped; gradients keep their dtype.
"""
from __future__ import annotations

import math

import numpy as np

from bitnet.tensor import Tensor
from bitnet.optim._checks import check_number

__all__ = ["clip_grad_norm_", "clip_grad_value_"]


def _grads(params) -> list:
    if isinstance(params, Tensor):
        params = [params]
    return [p.grad for p in params if p.grad is not None]


def clip_grad_norm_(params, max_norm: float, norm_type: float = 2.0,
                    error_if_nonfinite: bool = False) -> Tensor:
    """Scale all gradients so that their total ``norm_type``-norm is at most ``max_norm``.

    Returns the total norm before clipping as a 0-d ``Tensor`` (as PyTorch) in the gradients' dtype
    (float32 for float32 gradients; computed in float64, rounded once); ``float(total)`` or
    ``total.item()`` gives the number. 0 if no parameter has a gradient.
    Raises ``RuntimeError`` if the norm is nan/inf and ``error_if_nonfinite`` is set.
    """
    max_norm = check_number("clip_grad_norm_", "max_norm", max_norm, low=0.0)
    norm_type = check_number("clip_grad_norm_", "norm_type", norm_type, low=0.0, low_open=True)
    grads = _grads(params)
    if not grads:
        return Tensor(np.zeros((), np.float32))
    dtype = np.result_type(*grads)
    dtype = dtype if dtype.kind == "f" else np.dtype(np.float32)
    per_grad = np.array([np.linalg.norm(np.ravel(g).astype(np.float64), ord=norm_type)
                         for g in grads])
    total = float(np.linalg.norm(per_grad, ord=norm_type))
    if error_if_nonfinite and not math.isfinite(total):
        raise RuntimeError(f"clip_grad_norm_: the total {norm_type}-norm of the gradients is "
                           f"{total}; pass error_if_nonfinite=False to clip anyway")
    coef = max_norm / (total + 1e-6)
    if coef < 1:
        for g in grads:
            g *= coef
    return Tensor(np.asarray(total, dtype=dtype))


def clip_grad_value_(params, clip_value: float) -> None:
    """Clip every gradient entry to ``[-clip_value, clip_value]`` in place."""
    clip_value = check_number("clip_grad_value_", "clip_value", clip_value, low=0.0)
    for g in _grads(params):
        np.clip(g, -clip_value, clip_value, out=g)
