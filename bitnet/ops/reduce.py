"""Reductions over axes: sum, mean, max (and min through max of -x); argmax / argmin (no gradient).

Every front end takes ``axis=`` / ``keepdims=`` (NumPy) or ``dim=`` / ``keepdim=`` (PyTorch).
"""
from __future__ import annotations

import builtins

import numpy as np

from bitnet.gpu.arrays import array_module, is_device_array
from bitnet.ops.dims import resolve
from bitnet.tensor import Function, Tensor


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


def sum(a, axis=None, keepdims=None, *, dim=None, keepdim=None):  # noqa: A001
    """y = sum of a over ``axis`` (``dim``; all axes by default)."""
    axis, keepdims = resolve("sum", axis, dim, keepdims, keepdim)
    return Sum.apply(a, axis=axis, keepdims=keepdims)


def mean(a, axis=None, keepdims=None, *, dim=None, keepdim=None):
    """y = mean of a over ``axis`` (``dim``; all axes by default)."""
    axis, keepdims = resolve("mean", axis, dim, keepdims, keepdim)
    return Mean.apply(a, axis=axis, keepdims=keepdims)


def max(a, axis=None, keepdims=None, *, dim=None, keepdim=None):  # noqa: A001
    """y = max of a over ``axis`` (``dim``): the values only (PyTorch's ``max(dim=)`` also returns
    the indices: use ``argmax`` for those)."""
    axis, keepdims = resolve("max", axis, dim, keepdims, keepdim)
    return Max.apply(a, axis=axis, keepdims=keepdims)


def min(a, axis=None, keepdims=None, *, dim=None, keepdim=None):  # noqa: A001
    """y = min of a over ``axis`` (``dim``) = -max(-a): the values only (see ``max``)."""
    from bitnet.ops.elementwise import neg
    axis, keepdims = resolve("min", axis, dim, keepdims, keepdim)
    return neg(Max.apply(neg(a), axis=axis, keepdims=keepdims))


def _arg(fn, name, a, axis, dim, keepdims, keepdim):
    axis, keepdims = resolve(name, axis, dim, keepdims, keepdim)
    data = a.data if isinstance(a, Tensor) else np.asarray(a)
    if axis is not None and not isinstance(axis, (int, np.integer)):
        raise TypeError(f"{name}: dim must be one int (or None for the flattened tensor), got {axis!r}")
    if axis is not None and not -data.ndim <= axis < builtins.max(data.ndim, 1):
        raise ValueError(f"{name}: dim {axis} is out of range for a tensor with {data.ndim} dimensions")
    if is_device_array(data):  # the device module's argmax / argmin, an int64 result on the device
        return Tensor(getattr(array_module(data), fn.__name__)(data, axis=axis, keepdims=keepdims).astype(
            np.int64, copy=False))
    return Tensor(np.asarray(fn(data, axis=axis, keepdims=keepdims), dtype=np.int64))


def argmax(a, axis=None, keepdims=None, *, dim=None, keepdim=None):
    """Index (int64) of the maximum along ``axis`` (``dim``), or in the flattened tensor when None;
    the first one on ties; a NaN counts as the maximum (NumPy, PyTorch). No gradient."""
    return _arg(np.argmax, "argmax", a, axis, dim, keepdims, keepdim)


def argmin(a, axis=None, keepdims=None, *, dim=None, keepdim=None):
    """Index (int64) of the minimum along ``axis`` (``dim``), as ``argmax``. No gradient."""
    return _arg(np.argmin, "argmin", a, axis, dim, keepdims, keepdim)
