"""Weight initialization with an explicit random source (a Generator or a seed, never a global)."""
from __future__ import annotations

import math

import numpy as np


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
    bound = 1.0 / math.sqrt(max(1, fan_in(shape)))
    return rng.uniform(-bound, bound, size=shape).astype(dtype)
