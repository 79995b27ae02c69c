"""Checks of layer constructor arguments, shared by the constructors and their ``state_bytes``.

Every check raises ``ValueError`` (``TypeError`` for a value of the wrong type) naming the layer and
the argument, showing the value received and saying what is expected, so a bad size fails where the
layer is made, never later as a ``ZeroDivisionError`` or an ``IndexError`` inside a forward pass.
Sizes are Python ints: a product of them cannot overflow, and none is zero or negative, so a sum of
layer sizes never cancels.
"""
from __future__ import annotations

import math
import numbers


def size(owner: str, name: str, value, low: int = 1) -> int:
    """``int(value)`` after checking it is an integer >= ``low``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{owner}: {name} must be an integer >= {low}, got {value!r} ({type(value).__name__})")
    if value < low:
        raise ValueError(f"{owner}: {name} must be an integer >= {low}, got {value!r}")
    return int(value)


def size_pair(owner: str, name: str, value, low: int = 1) -> tuple:
    """An int or a pair of ints, each >= ``low``, as a pair."""
    if isinstance(value, numbers.Integral) and not isinstance(value, bool):
        v = size(owner, name, value, low)
        return v, v
    if not isinstance(value, (list, tuple)) or len(value) != 2:
        raise TypeError(f"{owner}: {name} must be an int or a pair of ints >= {low}, got {value!r}")
    return size(owner, f"{name}[0]", value[0], low), size(owner, f"{name}[1]", value[1], low)


def real(owner: str, name: str, value, low=None, high=None) -> float:
    """``float(value)`` after checking it is a finite real number within [low, high]."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
        raise TypeError(f"{owner}: {name} must be a finite real number, got {value!r}")
    if (low is not None and value < low) or (high is not None and value > high):
        raise ValueError(f"{owner}: {name} must be in [{low}, {high}], got {value!r}")
    return float(value)


def conv_geometry(owner, in_channels, out_channels, kernel_size, stride, padding, dilation, groups) -> dict:
    """A convolution's arguments, checked: channels, kernel, stride, dilation and groups >= 1, groups
    dividing both channel counts, padding >= 0 and at most the kernel's reach ``dilation * (kernel - 1)``
    per axis (a "full" convolution; more padding only adds outputs that see padding alone)."""
    c, o = size(owner, "in_channels", in_channels), size(owner, "out_channels", out_channels)
    g = size(owner, "groups", groups)
    if c % g or o % g:
        raise ValueError(f"{owner}: groups={g} must divide in_channels={c} and out_channels={o}")
    k, s = size_pair(owner, "kernel_size", kernel_size), size_pair(owner, "stride", stride)
    d, p = size_pair(owner, "dilation", dilation), size_pair(owner, "padding", padding, low=0)
    for axis in (0, 1):
        reach = d[axis] * (k[axis] - 1)
        if p[axis] > reach:
            raise ValueError(f"{owner}: padding {p} exceeds the kernel's reach dilation * (kernel_size - 1) = "
                             f"{reach} on axis {axis} (kernel_size {k}, dilation {d}); use at most {reach}")
    return dict(in_channels=c, out_channels=o, kernel_size=k, stride=s, padding=p, dilation=d, groups=g)


def pool_geometry(owner, kernel_size, stride, padding) -> tuple:
    """A pooling window's (kernel, stride, padding), checked: kernel and stride >= 1, 0 <= padding
    <= half the kernel (PyTorch's rule, and what ``F.max_pool2d`` / ``F.avg_pool2d`` accept)."""
    k = size_pair(owner, "kernel_size", kernel_size)
    s = k if stride is None else size_pair(owner, "stride", stride)
    p = size_pair(owner, "padding", padding, low=0)
    if p[0] > k[0] // 2 or p[1] > k[1] // 2:
        raise ValueError(f"{owner}: padding {p} must be at most half the kernel size {k}")
    return k, s, p
