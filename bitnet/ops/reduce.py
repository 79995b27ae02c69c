"""Reductions over axes: sum, mean, max (and min through max of -x)."""
from __future__ import annotations

import numpy as np

from bitnet.tensor import Function


def _norm_axes(axis, ndim):
    if axis is None:
        return tuple(range(ndim))
    axes = (axis,) if np.isscalar(axis) else tuple(axis)
    out = []
    for a in axes:
        if not -ndim <= a < ndim:
            raise ValueError(f"axis {a} is out of range for a tensor with {ndim} dimensions")
        out.append(a % ndim)
    return tuple(sorted(set(out)))


def _expand(g, shape, axes, keepdims):
    """Re-insert the reduced axes of ``g`` so it broadcasts against the input shape."""
    if not keepdims:
        for a in axes:
            g = np.expand_dims(g, a)
    return g


class Sum(Function):
    """y = sum of x over ``axes``; dy/dx = 1 broadcast back."""

    def forward(self, a, axis=None, keepdims=False):
        self.shape, self.axes, self.keepdims = a.shape, _norm_axes(axis, a.ndim), keepdims
        return np.asarray(a.sum(axis=self.axes, keepdims=keepdims))

    def backward(self, g):
        return np.broadcast_to(_expand(g, self.shape, self.axes, self.keepdims), self.shape).copy()


class Mean(Function):
    """y = sum(x) / n over ``axes``; dy/dx = 1/n broadcast back."""

    def forward(self, a, axis=None, keepdims=False):
        self.shape, self.axes, self.keepdims = a.shape, _norm_axes(axis, a.ndim), keepdims
        self.n = int(np.prod([a.shape[i] for i in self.axes])) if self.axes else 1
        return np.asarray(a.mean(axis=self.axes, keepdims=keepdims), dtype=a.dtype if a.dtype.kind == "f" else None)

    def backward(self, g):
        g = _expand(g, self.shape, self.axes, self.keepdims) / np.asarray(self.n, g.dtype)
        return np.broadcast_to(g, self.shape).copy()


class Max(Function):
    """y = max of x over ``axes``. The gradient goes to the maximal elements, split equally
    between ties (so it is the average of the one-sided subgradients). NaN propagates: a slice
    holding a NaN gives NaN, and its gradient is split equally between its NaN positions
    (PyTorch's rule for ``torch.max(x)``)."""

    def forward(self, a, axis=None, keepdims=False):
        self.shape, self.axes, self.keepdims = a.shape, _norm_axes(axis, a.ndim), keepdims
        out = a.max(axis=self.axes, keepdims=True)
        self.mask = a == out
        if a.dtype.kind == "f":
            nan_out = np.isnan(out)
            if nan_out.any():  # NaN == NaN is False: mark the NaN positions of NaN slices instead
                self.mask |= np.isnan(a) & nan_out
        return np.asarray(out if keepdims else out.reshape(
            [n for i, n in enumerate(a.shape) if i not in self.axes]))

    def backward(self, g):
        g = _expand(g, self.shape, self.axes, self.keepdims)
        count = self.mask.sum(axis=self.axes, keepdims=True)
        return (self.mask * (g / count)).astype(g.dtype, copy=False)


def sum(a, axis=None, keepdims=False):  # noqa: A001
    return Sum.apply(a, axis=axis, keepdims=keepdims)


def mean(a, axis=None, keepdims=False):
    return Mean.apply(a, axis=axis, keepdims=keepdims)


def max(a, axis=None, keepdims=False):  # noqa: A001
    return Max.apply(a, axis=axis, keepdims=keepdims)


def min(a, axis=None, keepdims=False):  # noqa: A001
    from bitnet.ops.elementwise import neg
    return neg(max(neg(a), axis=axis, keepdims=keepdims))
