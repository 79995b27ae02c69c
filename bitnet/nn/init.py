"""Weight initialization with an explicit random source (a Generator or a seed, never a global).

``allocation_limit(n)`` bounds what the initializers may draw inside a ``with`` block (per thread):
a model file's loader builds the model its config describes under the limit the file's own weights
justify, so a config cannot make bitnet allocate gigabytes before a single check has failed.
"""
from __future__ import annotations

import contextlib
import math
import threading

import numpy as np

_limit = threading.local()


class AllocationLimitError(MemoryError):
    """An initializer was asked for more values than the enclosing ``allocation_limit`` allows."""


@contextlib.contextmanager
def allocation_limit(values: int):
    """Inside the block, the initializers draw at most ``values`` values in total, else raise
    ``AllocationLimitError`` before allocating; the previous limit (or none) is restored after."""
    previous = getattr(_limit, "left", None)
    _limit.left = int(values)
    try:
        yield
    finally:
        _limit.left = previous


def _spend(shape) -> None:
    left = getattr(_limit, "left", None)
    if left is None:
        return
    n = math.prod(int(s) for s in shape)
    if n > left:
        raise AllocationLimitError(f"a parameter of shape {tuple(shape)} ({n} values) exceeds the {left} values "
                                   "left under the allocation limit")
    _limit.left = left - n


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
    _spend(shape)
    bound = 1.0 / math.sqrt(max(1, fan_in(shape)))
    return rng.uniform(-bound, bound, size=shape).astype(dtype)
