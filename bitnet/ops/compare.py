"""Elementwise comparisons ``==, !=, <, <=, >, >=`` of tensors (PyTorch's semantics).

``a OP b`` is the bool tensor ``c[i] = (a[i] OP b[i])`` with NumPy broadcasting (b: a tensor, an
array, a Python number or a list); it has no gradient and records no graph. NaN compares unequal to
everything, itself included. Comparing with anything else (``None``, a string, a module) returns
``NotImplemented``, so ``t == None`` is ``False`` as for any object. Tensors still hash by identity,
so they work as dict keys and in sets (lookups compare identities first); but ``t in list_of_tensors``,
``list.index`` and ``list.remove`` compare elementwise, like PyTorch: use ``any(t is u for u in ...)``.
``bool(t)`` of a one-element tensor is its value; of a larger tensor it is an error (ambiguous).
On "cuda" the result stays on the device; the operand may be a number, a 0-d host array or tensor
(a constant), a list (copied to the device) or an array on the device; an array on the other device
is a RuntimeError naming both, as for every op.
"""
from __future__ import annotations

import numpy as np

from bitnet.gpu.arrays import array_module, device_of, is_device_array
from bitnet.tensor import Tensor

_OPS = {"__eq__": np.equal, "__ne__": np.not_equal, "__lt__": np.less, "__le__": np.less_equal,
        "__gt__": np.greater, "__ge__": np.greater_equal}


def _operand(other):
    if isinstance(other, Tensor):
        return other.data
    if isinstance(other, (bool, int, float, np.ndarray, np.generic)):
        return other
    if isinstance(other, (list, tuple)):
        return np.asarray(other)
    return NotImplemented


def on_one_device(what, data, other):
    """``other`` (an operand of ``data``, which is on "cuda" or meets a device array) on ``data``'s
    device: numbers stay numbers, 0-d host arrays become numbers, host lists / tuples (constants) are
    copied to the device; an array on the other device is a RuntimeError naming both devices."""
    if not isinstance(other, (np.ndarray, list, tuple)) and not is_device_array(other):
        return other
    here, there = device_of(data), device_of(other)
    if here == there:
        return other
    if here == "cuda" and isinstance(other, (list, tuple)):
        return array_module(data).asarray(np.asarray(other))
    if here == "cuda" and np.ndim(other) == 0:
        return other[()]
    raise RuntimeError(f"{what}: the tensor (shape {data.shape}) is on {here}, the operand (shape "
                       f"{np.shape(other) if there == 'cpu' else other.shape}) on {there}; move them to one "
                       f"device first, e.g. x.to('{here}')")


def _make(ufunc):
    def compare(self, other):
        o = _operand(other)
        if o is NotImplemented:
            return NotImplemented
        if not is_device_array(self.data) and not is_device_array(o):  # both on the CPU
            return Tensor(np.asarray(ufunc(self.data, o)))
        if isinstance(other, (list, tuple)):
            o = other
        o = on_one_device(f"comparison '{ufunc.__name__}'", self.data, o)
        return Tensor(getattr(array_module(self.data), ufunc.__name__)(self.data, o))
    compare.__doc__ = f"Elementwise ``{ufunc.__name__}`` as a bool tensor (no gradient)."
    return compare


def install(cls) -> None:
    for name, ufunc in _OPS.items():
        setattr(cls, name, _make(ufunc))
    cls.any = lambda self, axis=None, keepdims=None, *, dim=None, keepdim=None: _reduce_bool(
        np.any, self, "any", axis, dim, keepdims, keepdim)
    cls.all = lambda self, axis=None, keepdims=None, *, dim=None, keepdim=None: _reduce_bool(
        np.all, self, "all", axis, dim, keepdims, keepdim)


def _reduce_bool(fn, t, name, axis, dim, keepdims, keepdim):
    """``any`` / ``all`` over ``axis`` (``dim``) as a bool tensor (no gradient)."""
    from bitnet.ops.dims import resolve
    axis, keep = resolve(name, axis, dim, keepdims, keepdim)
    if is_device_array(t.data):
        return Tensor(getattr(array_module(t.data), fn.__name__)(t.data, axis=axis, keepdims=keep))
    return Tensor(np.asarray(fn(t.data, axis=axis, keepdims=keep)))
