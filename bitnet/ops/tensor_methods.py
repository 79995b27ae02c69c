"""Operators and methods of ``Tensor`` (``a + b``, ``a @ b``, ``a.sum()``, ``a[i]``, ``a == b``, ...).

They are thin calls into the functional primitives of ``bitnet.ops``; installing them here keeps
``bitnet.tensor`` free of the primitive definitions. Axis arguments take ``axis=`` / ``keepdims=``
(NumPy) or ``dim=`` / ``keepdim=`` (PyTorch). Comparisons: ``bitnet.ops.compare``; in-place
arithmetic (``p -= lr * p.grad``): ``bitnet.ops.inplace``.
"""
from __future__ import annotations


def install(cls):
    from bitnet.ops import compare, elementwise as E, inplace, loss as L, reduce as R, shape as S

    def _r(fn):
        return lambda self, other: fn(other, self)

    cls.__add__ = lambda self, other: E.add(self, other)
    cls.__radd__ = _r(E.add)
    cls.__sub__ = lambda self, other: E.sub(self, other)
    cls.__rsub__ = _r(E.sub)
    cls.__mul__ = lambda self, other: E.mul(self, other)
    cls.__rmul__ = _r(E.mul)
    cls.__truediv__ = lambda self, other: E.div(self, other)
    cls.__rtruediv__ = _r(E.div)
    cls.__neg__ = lambda self: E.neg(self)
    cls.__pow__ = lambda self, p: E.pow(self, p)
    cls.__matmul__ = lambda self, other: E.matmul(self, E.lift(other, self))
    cls.__rmatmul__ = lambda self, other: E.matmul(E.lift(other, self), self)
    cls.__getitem__ = lambda self, index: S.getitem(self, index)
    compare.install(cls)
    inplace.install(cls)

    cls.exp = lambda self: E.exp(self)
    cls.log = lambda self: E.log(self)
    cls.tanh = lambda self: E.tanh(self)
    cls.sigmoid = lambda self: E.sigmoid(self)
    cls.relu = lambda self: E.relu(self)
    cls.clip = lambda self, min_val=None, max_val=None: E.clip(self, min_val, max_val)
    cls.matmul = lambda self, other: E.matmul(self, other)

    def _reduction(fn):
        def method(self, axis=None, keepdims=None, *, dim=None, keepdim=None, dtype=None, out=None):
            # dtype= / out= only for NumPy, whose np.sum(t) / np.mean(t) / np.max(t) call t.sum(axis=..,
            # dtype=None, out=None): the result is a Tensor, as for PyTorch's tensors
            if dtype is not None or out is not None:
                raise TypeError(f"Tensor.{fn.__name__}: dtype= and out= are not supported (a tensor keeps its dtype "
                                f"and every result is a new Tensor); convert first with t.astype(...), or reduce "
                                f"the array with np.{fn.__name__}(t.data, ...)")
            return fn(self, axis, keepdims, dim=dim, keepdim=keepdim)
        return method

    cls.sum = _reduction(R.sum)
    cls.mean = _reduction(R.mean)
    cls.max = _reduction(R.max)
    cls.min = _reduction(R.min)
    cls.argmax = _reduction(R.argmax)
    cls.argmin = _reduction(R.argmin)
    cls.softmax = lambda self, axis=None, *, dim=None: L.softmax(self, axis, dim=dim)
    cls.log_softmax = lambda self, axis=None, *, dim=None: L.log_softmax(self, axis, dim=dim)

    cls.reshape = lambda self, *shape: S.reshape(self, *shape)
    cls.view = lambda self, *shape: S.reshape(self, *shape)  # PyTorch's name; always a new tensor here

    def transpose(self, *dims):
        """Swap two axes: ``t.transpose(dim0, dim1)`` (PyTorch); ``.T`` reverses all axes and
        ``.permute(*dims)`` reorders them."""
        if len(dims) != 2:
            raise TypeError(f"Tensor.transpose(dim0, dim1) swaps two axes (PyTorch's meaning), got {len(dims)} "
                            f"argument(s) {dims}; use .T to reverse all axes or .permute(*dims) for a "
                            "permutation (NumPy's transpose(axes))")
        return S.transpose(self, *dims)

    cls.transpose = transpose
    cls.permute = lambda self, *dims: S.permute(self, *dims)
    cls.T = property(lambda self: S.reverse_axes(self))
    cls.flatten = lambda self, start_dim=0, end_dim=-1: S.flatten(self, start_dim, end_dim)
