"""Shape primitives: reshape, transpose / permute, flatten, indexing/slicing, concatenation, stacking.

``transpose(x, dim0, dim1)`` swaps two axes and ``permute(x, dims)`` applies a full permutation
(PyTorch's meanings; NumPy's ``transpose(axes)`` is ``permute``); ``x.T`` reverses all axes.
Axis arguments accept ``axis=`` or ``dim=``.
"""
from __future__ import annotations

import numpy as np

from bitnet.tensor import Function, Tensor


class Reshape(Function):
    devices = ("cpu", "cuda")  # plain array methods

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


def _axis_index(name, d, ndim):
    if not isinstance(d, (int, np.integer)) or isinstance(d, bool):
        raise TypeError(f"{name}: dimensions must be ints, got {d!r}")
    if not -ndim <= d < max(ndim, 1):
        raise ValueError(f"{name}: dimension {d} is out of range for a tensor with {ndim} dimensions "
                         f"(valid: {-ndim} .. {ndim - 1})")
    return int(d) % max(ndim, 1)


def transpose(a, dim0, dim1):
    """Swap axes ``dim0`` and ``dim1`` (PyTorch's ``transpose``): y[..i..j..] = x[..j..i..]; the
    backward swaps them back. For a full permutation use ``permute``; ``x.T`` reverses all axes."""
    for d in (dim0, dim1):
        if not isinstance(d, (int, np.integer)):
            raise TypeError(f"transpose(x, dim0, dim1) swaps two axes (PyTorch), got {d!r}; for a full "
                            "permutation of the axes (NumPy's transpose(axes)) use permute(x, dims)")
    perm = list(range(a.ndim))
    i, j = _axis_index("transpose", dim0, a.ndim), _axis_index("transpose", dim1, a.ndim)
    perm[i], perm[j] = perm[j], perm[i]
    return Transpose.apply(a, axes=tuple(perm))


def permute(a, *dims):
    """y = x with its axes reordered: y.shape[k] = x.shape[dims[k]] (``permute(x, (2, 0, 1))`` or
    ``permute(x, 2, 0, 1)``); the backward applies the inverse permutation."""
    if len(dims) == 1 and not isinstance(dims[0], (int, np.integer)):
        dims = tuple(dims[0])
    axes = tuple(_axis_index("permute", d, a.ndim) for d in dims)
    if sorted(axes) != list(range(a.ndim)):
        raise ValueError(f"permute: dims {tuple(dims)} are not a permutation of the {a.ndim} axes of a tensor "
                         f"of shape {a.shape}")
    return Transpose.apply(a, axes=axes)


def reverse_axes(a):
    """``x.T``: all axes in reverse order (a matrix transpose for 2-D tensors)."""
    return Transpose.apply(a, axes=None)


def flatten(a, start_dim=0, end_dim=-1):
    """Collapse the axes ``start_dim .. end_dim`` (inclusive) into one, as ``torch.flatten``:
    shape (d0, .., d_s, .., d_e, ..) -> (d0, .., d_s * .. * d_e, ..); a 0-d tensor becomes shape (1,).
    The defaults flatten everything (``nn.Flatten`` keeps the batch axis: start_dim=1)."""
    if a.ndim == 0:
        return Reshape.apply(a, shape=(1,))
    s, e = _axis_index("flatten", start_dim, a.ndim), _axis_index("flatten", end_dim, a.ndim)
    if s > e:
        raise ValueError(f"flatten: start_dim {start_dim} comes after end_dim {end_dim} for a tensor of shape "
                         f"{a.shape}")
    shape = tuple(a.shape[:s]) + (int(np.prod(a.shape[s:e + 1])),) + tuple(a.shape[e + 1:])
    return Reshape.apply(a, shape=shape)


def _unwrap_index(index):
    if isinstance(index, Tensor):
        return index.data
    if isinstance(index, tuple):
        return tuple(i.data if isinstance(i, Tensor) else i for i in index)
    return index


def getitem(a, index):
    return GetItem.apply(a, index=_unwrap_index(index))


def concatenate(tensors, axis=None, *, dim=None):
    """Join tensors along an existing axis ``axis`` (``dim``; default 0); all other axes must match.
    The backward splits the gradient back into the pieces."""
    from bitnet.ops.dims import resolve
    axis, _ = resolve("concatenate", axis, dim, default_axis=0)
    tensors = list(tensors)
    if not tensors:
        raise ValueError("concatenate: needs at least one tensor")
    ref = tensors[0].shape
    ax = _axis_index("concatenate", axis, len(ref))
    for i, t in enumerate(tensors):
        if t.ndim != len(ref) or any(t.shape[d] != ref[d] for d in range(len(ref)) if d != ax):
            raise ValueError(f"concatenate along axis {axis}: tensor {i} has shape {t.shape}, "
                             f"incompatible with tensor 0's shape {ref}")
    return Concatenate.apply(*tensors, axis=ax)


def cat(tensors, dim=None, *, axis=None):
    """PyTorch's name for ``concatenate`` (``dim`` defaults to 0)."""
    return concatenate(tensors, axis, dim=dim)


def stack(tensors, axis=None, *, dim=None):
    """Join same-shape tensors along a new axis ``axis`` (``dim``; default 0)."""
    from bitnet.ops.dims import resolve
    axis, _ = resolve("stack", axis, dim, default_axis=0)
    tensors = list(tensors)
    if not tensors:
        raise ValueError("stack: needs at least one tensor")
    nd = tensors[0].ndim + 1
    ax = _axis_index("stack", axis, nd)
    for i, t in enumerate(tensors):
        if t.shape != tensors[0].shape:
            raise ValueError(f"stack: tensor {i} has shape {t.shape}, tensor 0 has {tensors[0].shape}; "
                             "stack needs equal shapes")
    return concatenate([reshape(t, t.shape[:ax] + (1,) + t.shape[ax:]) for t in tensors], axis=ax)
