"""Tensor factories with PyTorch's names: zeros, ones, rand, randn, zeros_like, ones_like, arange.

Sizes are given as ``zeros(2, 3)`` or ``zeros((2, 3))``; the dtype defaults to float32 (bitnet's
training dtype). The random ones draw from an explicit generator, never from a hidden global state:
``rng`` is a ``numpy.random.Generator``, an int seed, or None for a fresh, unseeded
``np.random.default_rng()`` (a different draw every call)::

    x = bitnet.randn(4, 3, rng=0)            # reproducible
    g = np.random.default_rng(1); a, b = bitnet.rand(2, rng=g), bitnet.rand(2, rng=g)

    zeros / ones:  every element 0 / 1
    rand:          independent samples of U[0, 1)
    randn:         independent samples of N(0, 1)
    arange:        start, start + step, ... < end (int64 for int arguments, float32 otherwise)

``device`` ("cpu" / "cuda") places the tensor; left out, it is the default of the enclosing
``with bitnet.device(...)`` block ("cpu" outside any), and for ``zeros_like`` / ``ones_like`` the
device of ``t``. Random tensors are drawn on the host from ``rng`` and copied: the same seed gives
the same numbers on both devices.
"""
from __future__ import annotations

import numbers

import numpy as np

from bitnet.backend import current_device
from bitnet.gpu.arrays import device_of
from bitnet.tensor import Tensor

__all__ = ["zeros", "ones", "rand", "randn", "zeros_like", "ones_like", "arange"]


def _size(name, size) -> tuple:
    if len(size) == 1 and isinstance(size[0], (tuple, list)):
        size = tuple(size[0])
    if not all(isinstance(n, numbers.Integral) and not isinstance(n, bool) and n >= 0 for n in size):
        raise TypeError(f"{name}: the size must be non-negative ints, as {name}(2, 3) or {name}((2, 3)); "
                        f"got {size!r}")
    return tuple(int(n) for n in size)


def _generator(name, rng) -> np.random.Generator:
    if rng is None:
        return np.random.default_rng()
    if isinstance(rng, np.random.Generator):
        return rng
    if isinstance(rng, numbers.Integral) and not isinstance(rng, bool):
        return np.random.default_rng(int(rng))
    raise TypeError(f"{name}: rng must be a numpy.random.Generator, an int seed or None, got "
                    f"{type(rng).__name__}; e.g. rng=np.random.default_rng(0) or rng=0")


def _made(data, requires_grad, device) -> Tensor:
    """``data`` as a tensor on ``device`` (None: the ``with bitnet.device`` default)."""
    device = current_device() if device is None else device
    return Tensor(data, requires_grad=requires_grad, device=device)


def _float_dtype(name, dtype):
    dtype = np.dtype(dtype)
    if dtype not in (np.float32, np.float64):
        raise TypeError(f"{name}: dtype must be float32 or float64, got {dtype}")
    return dtype


def zeros(*size, dtype=np.float32, requires_grad: bool = False, device=None) -> Tensor:
    """A tensor of zeros of the given size."""
    return _made(np.zeros(_size("zeros", size), dtype), requires_grad, device)


def ones(*size, dtype=np.float32, requires_grad: bool = False, device=None) -> Tensor:
    """A tensor of ones of the given size."""
    return _made(np.ones(_size("ones", size), dtype), requires_grad, device)


def rand(*size, rng=None, dtype=np.float32, requires_grad: bool = False, device=None) -> Tensor:
    """Samples of U[0, 1) drawn from ``rng`` (Generator, int seed, or None for a fresh one)."""
    data = _generator("rand", rng).random(_size("rand", size), dtype=_float_dtype("rand", dtype))
    return _made(data, requires_grad, device)


def randn(*size, rng=None, dtype=np.float32, requires_grad: bool = False, device=None) -> Tensor:
    """Samples of N(0, 1) drawn from ``rng`` (Generator, int seed, or None for a fresh one)."""
    data = _generator("randn", rng).standard_normal(_size("randn", size), dtype=_float_dtype("randn", dtype))
    return _made(data, requires_grad, device)


def zeros_like(t, dtype=None, requires_grad: bool = False, device=None) -> Tensor:
    """Zeros with the shape (and, unless given, the dtype) of tensor or array ``t``."""
    data = t.data if isinstance(t, Tensor) else np.asarray(t)
    return _made(np.zeros(data.shape, dtype or data.dtype), requires_grad, device or device_of(data))


def ones_like(t, dtype=None, requires_grad: bool = False, device=None) -> Tensor:
    """Ones with the shape (and, unless given, the dtype) of tensor or array ``t``."""
    data = t.data if isinstance(t, Tensor) else np.asarray(t)
    return _made(np.ones(data.shape, dtype or data.dtype), requires_grad, device or device_of(data))


def arange(start, end=None, step=1, dtype=None, requires_grad: bool = False, device=None) -> Tensor:
    """start, start + step, ... below ``end`` (``arange(n)`` is 0 .. n-1); int64 when every argument
    is an int, float32 otherwise, unless ``dtype`` is given (PyTorch's rule)."""
    if end is None:
        start, end = 0, start
    if dtype is None:
        ints = all(isinstance(v, numbers.Integral) for v in (start, end, step))
        dtype = np.int64 if ints else np.float32
    if step == 0:
        raise ValueError("arange: step must be non-zero")
    return _made(np.arange(start, end, step, dtype=dtype), requires_grad, device)
