"""In-place arithmetic on tensors: ``t += x``, ``t -= x``, ``t *= x``, ``t /= x`` (PyTorch's rules).

``t op= x`` computes ``t.data = t.data op x`` into ``t.data`` itself: the dtype and shape of ``t``
are kept (``x`` may broadcast into ``t``'s shape, never enlarge it; a float operand into an integer
tensor is a TypeError), and every reference to ``t`` (e.g. a model's parameter) sees the new values.
No graph is recorded. Allowed on tensors that do not require grad, and on leaves that do (parameters)
inside ``with bitnet.no_grad():`` -- the manual SGD step::

    with bitnet.no_grad():
        for p in model.parameters():
            p -= lr * p.grad

Refused (RuntimeError): on a leaf that requires grad while gradients are recorded (the update would
silently escape differentiation), and on a non-leaf that requires grad (an op's output: its values
may be saved for ``backward()``). Each in-place update bumps ``t._version``, so a ``backward()``
through an operation that used ``t`` before the update raises instead of using stale values.
Unlike optimizers, an in-place update does not apply a Parameter's ``constraint``.
A tensor on "cuda" is updated on the device, from operands as for comparisons (``bitnet.ops.compare``).
"""
from __future__ import annotations

import numpy as np

from bitnet.gpu.arrays import array_module, is_device_array
from bitnet.tensor import Tensor, is_grad_enabled

_SYMBOLS = {np.add: "+=", np.subtract: "-=", np.multiply: "*=", np.true_divide: "/="}


def _check_allowed(t: Tensor, symbol: str) -> None:
    if not t.requires_grad:
        return
    if t._ctx is not None:
        raise RuntimeError(
            f"in-place '{symbol}' on a tensor produced by an operation that records gradients (a non-leaf "
            f"tensor of shape {t.shape}): the graph may have saved its values for backward(), and changing "
            f"them would corrupt the gradients; write it out of place instead: y = y {symbol[0]} x")
    if is_grad_enabled():
        raise RuntimeError(
            f"in-place '{symbol}' on a leaf tensor that requires grad (e.g. a parameter, shape {t.shape}) "
            "while gradients are being recorded; wrap the update in `with bitnet.no_grad():`, e.g. "
            "`with bitnet.no_grad(): p -= lr * p.grad`")


def apply(t: Tensor, other, ufunc) -> Tensor:
    """``ufunc(t.data, other, out=t.data)`` under the rules of the module docstring; returns ``t``."""
    symbol = _SYMBOLS[ufunc]
    _check_allowed(t, symbol)
    if isinstance(other, Tensor):
        src = other.data
    elif isinstance(other, (bool, int, float, np.ndarray, np.generic)):
        src = other  # Python numbers stay "weak" (they adopt t's dtype, as in NumPy and PyTorch)
    elif isinstance(other, (list, tuple)):
        src = np.asarray(other)
    else:
        return NotImplemented
    if is_device_array(t.data) or is_device_array(src):
        # one device: a tensor on "cuda" takes numbers, 0-d host arrays, lists and arrays on "cuda"
        from bitnet.ops.compare import on_one_device
        src = on_one_device(f"in-place '{symbol}'", t.data, other if isinstance(other, (list, tuple)) else src)
        ufunc = getattr(array_module(t.data), ufunc.__name__)
    shape = src.shape if is_device_array(src) else np.shape(src)
    try:
        fits = np.broadcast_shapes(t.shape, shape) == t.shape
    except ValueError:
        fits = False
    if not fits:
        raise ValueError(f"in-place '{symbol}': an operand of shape {shape} does not broadcast into the "
                         f"tensor's shape {t.shape} (in-place updates keep the shape); use y = t "
                         f"{symbol[0]} x for a broadcast result")
    try:
        ufunc(t.data, src, out=t.data, casting="same_kind")
    except TypeError as e:  # numpy's UFuncTypeError: e.g. a float operand into an integer tensor
        kind = src.dtype if is_device_array(src) else np.result_type(src)
        raise TypeError(f"in-place '{symbol}' cannot store a {kind} result in a "
                        f"{t.dtype} tensor ({e}); convert the tensor first, e.g. t = t.astype(np.float32)") from None
    t._version += 1
    return t


def install(cls) -> None:
    cls.__iadd__ = lambda self, other: apply(self, other, np.add)
    cls.__isub__ = lambda self, other: apply(self, other, np.subtract)
    cls.__imul__ = lambda self, other: apply(self, other, np.multiply)
    cls.__itruediv__ = lambda self, other: apply(self, other, np.true_divide)
