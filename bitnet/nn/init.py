"""Weight initialization with an explicit random source (a Generator or a seed, never a global).

``allocation_limit(nbytes)`` bounds the bytes that the initializers (``uniform_fan_in``,
``fan_in_bias``, ``filled``: every parameter and buffer of bitnet's layers) may allocate inside a
``with`` block (per thread): a model file's loader builds the model its config describes under the
limit the file justifies, so a config cannot make bitnet allocate gigabytes before a check has
failed. ``allocation_limit(nbytes, zeros=True)`` also skips the random draws: parameters start as
zeros (the loader overwrites them with the file's values, so drawing them would be wasted time and
float64 temporaries).
"""
from __future__ import annotations

import contextlib
import math
import threading

import numpy as np

_limit = threading.local()


class AllocationLimitError(MemoryError):
    """An initializer was asked for more bytes than the enclosing ``allocation_limit`` allows."""


@contextlib.contextmanager
def allocation_limit(nbytes: int, zeros: bool = False):
    """Inside the block, the initializers allocate at most ``nbytes`` bytes in total, else raise
    ``AllocationLimitError`` before allocating; with ``zeros`` parameters are zeros instead of random
    draws. The previous limit (or none) is restored after."""
    previous = getattr(_limit, "left", None), getattr(_limit, "zeros", False)
    _limit.left, _limit.zeros = int(nbytes), bool(zeros)
    try:
        yield
    finally:
        _limit.left, _limit.zeros = previous


def _spend(shape, dtype) -> None:
    """Count ``shape`` x ``dtype`` against the current limit (sizes as Python ints: no overflow)."""
    shape = (int(shape),) if np.ndim(shape) == 0 else tuple(int(s) for s in shape)
    if any(s < 0 for s in shape):
        raise ValueError(f"an array of shape {shape}: sizes must be >= 0")
    left = getattr(_limit, "left", None)
    if left is None:
        return
    n = math.prod(shape) * np.dtype(dtype).itemsize
    if n > left:
        raise AllocationLimitError(f"an array of shape {shape} ({n} bytes) exceeds the {left} bytes left under the "
                                   "allocation limit")
    _limit.left = left - n


def _zeros_mode() -> bool:
    return getattr(_limit, "left", None) is not None and getattr(_limit, "zeros", False)


def as_generator(rng) -> np.random.Generator:
    """A ``numpy.random.Generator`` from a Generator, an int seed, or None (fresh OS entropy)."""
    if isinstance(rng, np.random.Generator):
        return rng
    if rng is None or isinstance(rng, (int, np.integer)):
        return np.random.default_rng(rng)
    raise TypeError(f"rng must be a numpy.random.Generator, an int seed or None, got {type(rng).__name__}")


def fan_in(shape) -> int:
    """Inputs feeding one output: in_features for (out, in); C/groups*KH*KW for conv weights."""
    return int(np.prod(shape[1:]))


def uniform_fan_in(shape, rng, dtype=np.float32) -> np.ndarray:
    """U(-b, b) with b = 1/sqrt(fan_in): PyTorch's default for Linear/Conv weights and biases."""
    _spend(shape, dtype)
    if _zeros_mode():
        return np.zeros(shape, dtype)
    bound = 1.0 / math.sqrt(max(1, fan_in(shape)))
    return rng.uniform(-bound, bound, size=shape).astype(dtype)


def fan_in_bias(weight_shape, rng, dtype=np.float32) -> np.ndarray:
    """The bias of a layer whose weight has ``weight_shape``: U(-b, b) with the weight's bound, drawn
    as the first column of a second weight-shaped draw (the random stream bitnet always used)."""
    out = int(weight_shape[0])
    if _zeros_mode():
        _spend((out,), dtype)
        return np.zeros(out, dtype)
    _spend((out,), dtype)  # the draw below is a temporary; the bias keeps ``out`` values
    left = getattr(_limit, "left", None)
    if left is not None:
        _limit.left = None
    try:
        return uniform_fan_in(weight_shape, rng, dtype).reshape(out, -1)[:, 0].copy()
    finally:
        if left is not None:
            _limit.left = left


def filled(shape, value, dtype=np.float32) -> np.ndarray:
    """An array of ``value``s (batch-norm buffers), counted against the allocation limit."""
    _spend(shape, dtype)
    return np.full(shape, value, dtype)
