"""Gradient clipping, in place on ``p.grad``, as PyTorch's ``torch.nn.utils.clip_grad_*_``.

``clip_grad_norm_``: the total norm is taken over all gradients together, as if concatenated,
``total = (sum_p ||g_p||_q ** q) ** (1/q)`` (``max_p max|g_p|`` for ``q = inf``); when
``c = max_norm / (total + 1e-6)`` is below 1, every gradient is multiplied by ``c``.
``clip_grad_value_``: every gradient entry is clipped to ``[-clip_value, clip_value]``.
Parameters whose ``.grad`` is ``None`` are skipped; gradients keep their dtype.

Gradients on "cuda" (device arrays) are clipped on the device, by the same formulas, without copying
them to the host and without waiting for the GPU: the norm stays on the device, and "multiply by
``c`` when ``c < 1``" is a multiplication by ``where(c < 1, c, 1)`` (by 1, exact, otherwise). The
returned norm is then a 0-d tensor on "cuda" (as PyTorch's); reading it (``float(total)``) waits for
the GPU, once. Only ``error_if_nonfinite=True`` reads the norm back inside the call (one sync per step).
"""
from __future__ import annotations

import math

import numpy as np

from bitnet.gpu.arrays import array_module, is_device_array
from bitnet.tensor import Tensor
from bitnet.optim._checks import check_number

__all__ = ["clip_grad_norm_", "clip_grad_value_"]


def _grads(params) -> list:
    if isinstance(params, Tensor):
        params = [params]
    return [p.grad for p in params if p.grad is not None]


def _on_one_device(grads, name) -> bool:
    """True when every gradient is a device array, False when none is; a mix is a RuntimeError."""
    on_device = [is_device_array(g) for g in grads]
    if any(on_device) and not all(on_device):
        raise RuntimeError(f"{name}: {on_device.count(True)} gradient(s) are on cuda and "
                           f"{on_device.count(False)} on cpu; clip the gradients of one device at a time "
                           "(or move the model to one device first)")
    return bool(on_device) and on_device[0]


def _vector_norm(xp, x, q: float):
    """``np.linalg.norm(x, ord=q)`` of a 1-D float array, with NumPy's formulas, on ``x``'s device."""
    if q == math.inf:
        return xp.abs(x).max()
    if q == 2:
        return xp.sqrt(xp.dot(x, x))
    if q == 1:
        return xp.abs(x).sum()
    return (xp.abs(x) ** q).sum() ** (1 / q)


def clip_grad_norm_(params, max_norm: float, norm_type: float = 2.0,
                    error_if_nonfinite: bool = False) -> Tensor:
    """Scale all gradients so that their total ``norm_type``-norm is at most ``max_norm``.

    Returns the total norm before clipping as a 0-d ``Tensor`` (as PyTorch) in the gradients' dtype
    (float32 for float32 gradients; computed in float64, rounded once), on the gradients' device;
    ``float(total)`` or ``total.item()`` gives the number. 0 if no parameter has a gradient.
    Raises ``RuntimeError`` if the norm is nan/inf and ``error_if_nonfinite`` is set.
    """
    max_norm = check_number("clip_grad_norm_", "max_norm", max_norm, low=0.0)
    norm_type = check_number("clip_grad_norm_", "norm_type", norm_type, low=0.0, low_open=True)
    grads = _grads(params)
    if not grads:
        return Tensor(np.zeros((), np.float32))
    dtype = np.result_type(*(g.dtype for g in grads))
    dtype = dtype if dtype.kind == "f" else np.dtype(np.float32)
    if _on_one_device(grads, "clip_grad_norm_"):
        return _clip_norm_on_device(grads, max_norm, norm_type, error_if_nonfinite, dtype)
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


def _clip_norm_on_device(grads, max_norm, norm_type, error_if_nonfinite, dtype) -> Tensor:
    """``clip_grad_norm_`` for device gradients (module docstring): the CPU's float64 formulas on the
    device; the per-gradient norms are summed in the device's order, so the total may differ from the
    CPU's in the last float64 bits."""
    xp = array_module(grads[0])
    per_grad = xp.stack([_vector_norm(xp, g.reshape(-1).astype(xp.float64), norm_type) for g in grads])
    total = _vector_norm(xp, per_grad, norm_type)
    if error_if_nonfinite and not math.isfinite(float(total)):  # the one read-back (a GPU sync)
        raise RuntimeError(f"clip_grad_norm_: the total {norm_type}-norm of the gradients is "
                           f"{float(total)}; pass error_if_nonfinite=False to clip anyway")
    coef = max_norm / (total + 1e-6)
    coef = xp.where(coef < 1, coef, 1.0)  # nan (a nan norm) is not < 1: no scaling, as on the CPU
    for g in grads:
        g *= coef.astype(g.dtype)  # the CPU's `g *= coef` rounds the Python float coef to g's dtype
    return Tensor(total.astype(dtype))


def clip_grad_value_(params, clip_value: float) -> None:
    """Clip every gradient entry to ``[-clip_value, clip_value]`` in place (on the gradient's device)."""
    clip_value = check_number("clip_grad_value_", "clip_value", clip_value, low=0.0)
    for g in _grads(params):
        array_module(g).clip(g, -clip_value, clip_value, out=g)
