"""Operators and methods of ``Tensor`` (``a + b``, ``a @ b``, ``a.sum()``, ``a[i]``, ...).

They are thin calls into the functional primitives of ``bitnet.ops``; installing them here keeps
``bitnet.tensor`` free of the primitive definitions.
"""
from __future__ import annotations


def install(cls):
    from bitnet.ops import elementwise as E, reduce as R, shape as S

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

    cls.exp = lambda self: E.exp(self)
    cls.log = lambda self: E.log(self)
    cls.tanh = lambda self: E.tanh(self)
    cls.sigmoid = lambda self: E.sigmoid(self)
    cls.relu = lambda self: E.relu(self)
    cls.clip = lambda self, min_val=None, max_val=None: E.clip(self, min_val, max_val)
    cls.matmul = lambda self, other: E.matmul(self, other)

    cls.sum = lambda self, axis=None, keepdims=False: R.sum(self, axis, keepdims)
    cls.mean = lambda self, axis=None, keepdims=False: R.mean(self, axis, keepdims)
    cls.max = lambda self, axis=None, keepdims=False: R.max(self, axis, keepdims)
    cls.min = lambda self, axis=None, keepdims=False: R.min(self, axis, keepdims)

    cls.reshape = lambda self, *shape: S.reshape(self, *shape)
    cls.transpose = lambda self, *axes: S.transpose(
        self, (axes[0] if len(axes) == 1 and not isinstance(axes[0], int) else axes) or None)
    cls.T = property(lambda self: S.transpose(self))
    cls.flatten = lambda self, start_dim=0: S.flatten(self, start_dim)
