"""Shape primitives: reshape, transpose, flatten, indexing/slicing, concatenation, stacking."""
from __future__ import annotations

import numpy as np

from bitnet.tensor import Function, Tensor


class Reshape(Function):
    def forward(self, a, shape=None):
        self.shape = a.shape
        try:
            return a.reshape(shape)
        except ValueError:
            raise ValueError(f"cannot reshape a tensor of shape {a.shape} ({a.size} elements) "
                             f"into shape {tuple(shape)}") from None

    def backward(self, g):
        return g.reshape(self.shape)


class Transpose(Function):
    """Permute axes; the backward applies the inverse permutation."""

    def forward(self, a, axes=None):
        self.axes = tuple(range(a.ndim))[::-1] if axes is None else tuple(a_ % a.ndim for a_ in axes)
        if sorted(self.axes) != list(range(a.ndim)):
            raise ValueError(f"transpose: axes {axes} are not a permutation of {a.ndim} axes")
        return a.transpose(self.axes)

    def backward(self, g):
        return g.transpose(np.argsort(self.axes))


class GetItem(Function):
    """x[index] for basic and advanced indices; the backward scatters-adds into zeros so that
    repeated indices accumulate."""

    def forward(self, a, index=None):
        self.shape, self.dtype, self.index = a.shape, a.dtype, index
        return np.array(a[index], copy=True)

    def backward(self, g):
        out = np.zeros(self.shape, dtype=g.dtype)
        np.add.at(out, self.index, g)
        return out


class Concatenate(Function):
    def forward(self, *arrays, axis=0):
        self.axis = axis
        self.bounds = np.cumsum([a.shape[axis] for a in arrays])[:-1]
        return np.concatenate(arrays, axis=axis)

    def backward(self, g):
        return tuple(np.split(g, self.bounds, axis=self.axis))


class Pad(Function):
    """Constant padding of the trailing axes: widths ((before, after), ...) for the last
    len(widths) axes; the backward slices the gradient of the interior back out."""

    def forward(self, a, widths=(), value=0.0):
        full = ((0, 0),) * (a.ndim - len(widths)) + tuple(widths)
        self.inner = tuple(slice(lo, n + lo) for (lo, _), n in zip(full, a.shape))
        return np.pad(a, full, mode="constant", constant_values=value)

    def backward(self, g):
        return np.ascontiguousarray(g[self.inner])


def pad(a, widths, value=0.0):
    """Pad the last ``len(widths)`` axes of ``a`` with the constant ``value``; ``widths`` is a
    sequence of (before, after) pairs of non-negative ints, one per padded axis."""
    widths = tuple((int(lo), int(hi)) for lo, hi in widths)
    if len(widths) > a.ndim or any(lo < 0 or hi < 0 for lo, hi in widths):
        raise ValueError(f"pad: widths {widths} must be non-negative (before, after) pairs for at most "
                         f"{a.ndim} axes")
    return Pad.apply(a, widths=widths, value=value)


def reshape(a, *shape):
    if len(shape) == 1 and not np.isscalar(shape[0]):
        shape = tuple(shape[0])
    return Reshape.apply(a, shape=shape)


def transpose(a, axes=None):
    return Transpose.apply(a, axes=axes)


def flatten(a, start_dim=1):
    """Collapse the axes from ``start_dim`` on into one (default: keep the batch axis)."""
    start = start_dim % a.ndim if a.ndim else 0
    return Reshape.apply(a, shape=tuple(a.shape[:start]) + (-1,))


def _unwrap_index(index):
    if isinstance(index, Tensor):
        return index.data
    if isinstance(index, tuple):
        return tuple(i.data if isinstance(i, Tensor) else i for i in index)
    return index


def getitem(a, index):
    return GetItem.apply(a, index=_unwrap_index(index))


def concatenate(tensors, axis=0):
    tensors = list(tensors)
    if not tensors:
        raise ValueError("concatenate: needs at least one tensor")
    ref = tensors[0].shape
    ax = axis % len(ref)
    for i, t in enumerate(tensors):
        if t.ndim != len(ref) or any(t.shape[d] != ref[d] for d in range(len(ref)) if d != ax):
            raise ValueError(f"concatenate along axis {axis}: tensor {i} has shape {t.shape}, "
                             f"incompatible with tensor 0's shape {ref}")
    return Concatenate.apply(*tensors, axis=ax)


def stack(tensors, axis=0):
    tensors = list(tensors)
    if not tensors:
        raise ValueError("stack: needs at least one tensor")
    nd = tensors[0].ndim + 1
    ax = axis % nd
    return concatenate([reshape(t, t.shape[:ax] + (1,) + t.shape[ax:]) for t in tensors], axis=ax)
