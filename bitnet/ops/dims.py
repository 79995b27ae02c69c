"""Argument normalization shared by the ops: ``dim=`` / ``keepdim=`` (PyTorch) as aliases of
``axis=`` / ``keepdims=`` (NumPy), and ``pair`` for 2-D sizes (kernel, stride, padding, dilation).

Every reduction and axis-taking op accepts either spelling; passing both is a ``TypeError``.
"""
from __future__ import annotations

import numpy as np


def pair(v, name: str) -> tuple:
    """Normalize an int or a 2-sequence of ints to a pair, with a clear error otherwise."""
    if isinstance(v, (int, np.integer)):
        return int(v), int(v)
    try:
        a, b = v
        return int(a), int(b)
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be an int or a pair of ints, got {v!r}") from None


def resolve(name: str, axis=None, dim=None, keepdims=None, keepdim=None, default_axis=None):
    """``(axis, keepdims)`` from either spelling; ``default_axis`` when neither axis nor dim is given."""
    if axis is not None and dim is not None:
        raise TypeError(f"{name}: got both axis={axis!r} (NumPy's name) and dim={dim!r} (PyTorch's name) "
                        "for the same argument; pass only one of them")
    if keepdims is not None and keepdim is not None:
        raise TypeError(f"{name}: got both keepdims={keepdims!r} (NumPy's name) and keepdim={keepdim!r} "
                        "(PyTorch's name) for the same argument; pass only one of them")
    axis = dim if dim is not None else axis
    keep = keepdim if keepdim is not None else keepdims
    return (default_axis if axis is None else axis), bool(keep)
