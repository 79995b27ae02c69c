"""Reductions and shape primitives on "cuda" (``bitnet.ops.reduce`` and ``bitnet.ops.shape``, same math).

Reshape needs no class here (it is marked ``devices = ("cpu", "cuda")``); argmax / argmin, comparisons,
``any`` / ``all`` and in-place arithmetic are no ``Function``s and pick the array module themselves.

- Sum: y = sum of x over the axes; dy/dx = g broadcast back. Mean: the same divided by n, the number of
  elements reduced (dtype kept for float inputs). Max: dy/dx = g / (number of maxima of the slice) at
  each maximum (ties split equally), NaN slices give NaN and their gradient goes to their NaN positions;
  computed without asking the device whether any NaN is there (no sync).
- Transpose: the inverse permutation in the backward. GetItem: ``x[index]``, the backward adds the
  gradient into zeros (``scatter_add``, so repeated integer indices add up; a plain assignment when the
  index has no integer array, which cannot repeat). Host index arrays are copied to the device.
- Concatenate: the backward splits the gradient at the pieces' bounds. Pad: constant padding of the
  trailing axes, the backward slices the interior back out.
"""
from __future__ import annotations

import numpy as np

from bitnet.gpu.arrays import array_module, is_device_array, scatter_add, xp
from bitnet.gpu.dispatch import implements
from bitnet.ops import reduce as R
from bitnet.ops import shape as S


def _expand(m, g, axes, keepdims):
    """``g`` with the reduced ``axes`` re-inserted (size 1) unless they were kept."""
    if not keepdims:
        for a in axes:
            g = m.expand_dims(g, a)
    return g


@implements(R.Sum)
class Sum(R.Sum):
    """y = sum of x over ``axes``; dy/dx = g broadcast back to x's shape."""

    def forward(self, a, axis=None, keepdims=False):
        self.shape, self.axes, self.keepdims = a.shape, R._norm_axes(axis, a.ndim), keepdims
        return a.sum(axis=self.axes, keepdims=keepdims)

    def backward(self, g):
        m = array_module(g)
        return m.broadcast_to(_expand(m, g, self.axes, self.keepdims), self.shape).copy()


@implements(R.Mean)
class Mean(R.Mean):
    """y = sum(x) / n over ``axes`` (float inputs keep their dtype); dy/dx = g / n broadcast back."""

    def forward(self, a, axis=None, keepdims=False):
        self.shape, self.axes, self.keepdims = a.shape, R._norm_axes(axis, a.ndim), keepdims
        self.n = int(np.prod([a.shape[i] for i in self.axes])) if self.axes else 1
        out = a.mean(axis=self.axes, keepdims=keepdims)
        return out.astype(a.dtype, copy=False) if a.dtype.kind == "f" else out

    def backward(self, g):
        m = array_module(g)
        g = _expand(m, g, self.axes, self.keepdims) / g.dtype.type(self.n)
        return m.broadcast_to(g, self.shape).copy()


@implements(R.Max)
class Max(R.Max):
    """y = max of x over ``axes``; the gradient is split equally between the maximal elements (NaN
    slices: between their NaN positions)."""

    def forward(self, a, axis=None, keepdims=False):
        m = array_module(a)
        self.shape, self.axes, self.keepdims = a.shape, R._norm_axes(axis, a.ndim), keepdims
        out = a.max(axis=self.axes, keepdims=True)
        self.mask = a == out
        if a.dtype.kind == "f":  # NaN == NaN is False: mark the NaN positions of NaN slices too
            self.mask |= m.isnan(a) & m.isnan(out)
        return out if keepdims else out.reshape([n for i, n in enumerate(a.shape) if i not in self.axes])

    def backward(self, g):
        m = array_module(g)
        g = _expand(m, g, self.axes, self.keepdims)
        count = self.mask.sum(axis=self.axes, keepdims=True)
        return (self.mask * (g / count)).astype(g.dtype, copy=False)


@implements(S.Transpose)
class Transpose(S.Transpose):
    """y = x with its axes permuted; the backward applies the inverse permutation."""

    def backward(self, g):
        return g.transpose(tuple(int(i) for i in np.argsort(self.axes)))


def _device_index(index, m):
    """``index`` with its host arrays and sequences moved to the device (``m``); a tuple is the index
    tuple, one entry per axis, as in NumPy."""
    if isinstance(index, tuple):
        return tuple(_device_part(i, m) for i in index)
    return _device_part(index, m)


def _device_part(i, m):
    if isinstance(i, (list, tuple)) or (isinstance(i, np.ndarray) and i.ndim > 0):
        host = np.asarray(i)
        if host.size == 0 and host.dtype.kind == "f":  # [] names no element (NumPy): empty integer indices
            host = host.astype(np.intp)
        return m.asarray(host)
    if isinstance(i, np.ndarray):
        return i[()]  # a 0-d host array: its value (an integer or a bool)
    return i


def _may_repeat(index) -> bool:
    """True when ``index`` holds an integer array (which may name an element twice)."""
    parts = index if isinstance(index, tuple) else (index,)
    return any(is_device_array(i) and i.ndim > 0 and i.dtype.kind in "iu" for i in parts)


@implements(S.GetItem)
class GetItem(S.GetItem):
    """y = x[index] (a copy), basic and advanced indices; dx = zeros with g added at ``index``
    (repeated indices add up)."""

    def forward(self, a, index=None):
        m = array_module(a)
        index = _device_index(index, m)
        self.shape, self.dtype, self.index = a.shape, a.dtype, index
        return a[index].copy()

    def backward(self, g):
        out = array_module(g).zeros(self.shape, dtype=g.dtype)
        if _may_repeat(self.index):
            scatter_add(out, self.index, g)
        else:
            out[self.index] = g
        return out


@implements(S.Concatenate)
class Concatenate(S.Concatenate):
    """y = the inputs joined along ``axis``; the backward splits g back into the pieces."""

    def forward(self, *arrays, axis=0):
        self.axis = axis
        self.bounds = [int(b) for b in np.cumsum([a.shape[axis] for a in arrays])[:-1]]
        return xp().concatenate(arrays, axis=axis)

    def backward(self, g):
        return tuple(array_module(g).split(g, self.bounds, axis=self.axis))


@implements(S.Pad)
class Pad(S.Pad):
    """Constant padding of the last ``len(widths)`` axes; the backward is g's interior."""

    def forward(self, a, widths=(), value=0.0):
        full = ((0, 0),) * (a.ndim - len(widths)) + tuple(widths)
        self.inner = tuple(slice(lo, n + lo) for (lo, _), n in zip(full, a.shape))
        return array_module(a).pad(a, full, mode="constant", constant_values=value)

    def backward(self, g):
        return array_module(g).ascontiguousarray(g[self.inner])
