"""A NumPy stand-in for CuPy: device arrays that live in host memory but behave like GPU arrays.

The GPU training engine runs on CuPy arrays (docs/gpu.md, "Training on the GPU"). CuPy needs a GPU
to create one, so CI, which has none, runs the same engine code on this module instead: the
namespace ``xp`` answers the subset of CuPy's API the engine uses (the NumPy API, ``asnumpy``,
``ndarray``), and its arrays are an ``ndarray`` subclass, ``EmulatedArray``, with CuPy's rule that a
device array never meets a host array in one operation: ``xp.add(device, host)`` raises
``TypeError`` as CuPy does, so an op that forgets to move an operand fails here as it would on a GPU.

Every result is an ``EmulatedArray``, also a reduction to one element (CuPy returns 0-d arrays, not
scalars). The numbers are NumPy's: the emulation checks where arrays live and the math of the GPU
implementations, not CuPy's kernels.
"""
from __future__ import annotations

import types

import numpy as np


class EmulatedArray(np.ndarray):
    """An array "on the emulated GPU": NumPy storage, CuPy's refusal to mix with host arrays."""

    def __array_ufunc__(self, ufunc, method, *inputs, out=None, **kwargs):
        _refuse_host(ufunc.__name__, inputs + (out or ()))
        if out is not None:
            kwargs["out"] = tuple(_unwrap(o) for o in out)
        result = getattr(ufunc, method)(*(_unwrap(i) for i in inputs), **kwargs)
        if out is not None:
            return out[0] if len(out) == 1 else out
        return wrap(result)

    def __array_function__(self, func, types_, args, kwargs):
        _refuse_host(func.__name__, _leaves(args) + _leaves(tuple(kwargs.values())))
        return wrap(func(*_unwrap(args), **_unwrap(kwargs)))

    def get(self) -> np.ndarray:
        """A host copy (``cupy.ndarray.get``)."""
        return np.array(self.view(np.ndarray))


def _leaves(items):
    out = []
    for item in items:
        if isinstance(item, (list, tuple)):
            out.extend(_leaves(item))
        else:
            out.append(item)
    return tuple(out)


def _refuse_host(what, operands):
    for op in operands:
        if isinstance(op, np.ndarray) and not isinstance(op, EmulatedArray):
            raise TypeError(f"{what}: a host (NumPy) array of shape {op.shape} met a device array; "
                            "move it first (xp.asarray(host) / bitnet.gpu.arrays.to_device)")


def _unwrap(x):
    if isinstance(x, EmulatedArray):
        return x.view(np.ndarray)
    if isinstance(x, (list, tuple)):
        return type(x)(_unwrap(i) for i in x)
    if isinstance(x, dict):
        return {k: _unwrap(v) for k, v in x.items()}
    return x


def wrap(x):
    """NumPy results as device arrays: arrays and NumPy scalars become ``EmulatedArray`` (0-d for
    scalars, as CuPy returns), tuples and lists are wrapped item by item, anything else is returned as is."""
    if isinstance(x, np.ndarray):
        return x if isinstance(x, EmulatedArray) else x.view(EmulatedArray)
    if isinstance(x, np.generic):
        return np.asarray(x).view(EmulatedArray)
    if isinstance(x, (tuple, list)):  # (lists: np.split and the like; CuPy's give lists of device arrays)
        return type(x)(wrap(i) for i in x)
    return x


def asarray(a, dtype=None, order=None):
    """A device array from ``a``: a host array is copied (as CuPy copies it to the GPU)."""
    if isinstance(a, EmulatedArray):
        return a if dtype is None or a.dtype == dtype else a.astype(dtype)
    return np.array(a, dtype=dtype, order=order or "K", copy=True).view(EmulatedArray)


def array(a, dtype=None, copy=True, order="K"):
    """A device array from ``a``, always a copy unless ``copy=False`` and nothing changes (``cupy.array``)."""
    if isinstance(a, EmulatedArray) and not copy and (dtype is None or a.dtype == dtype):
        return a
    return np.array(_unwrap(a), dtype=dtype, order=order, copy=True).view(EmulatedArray)


def asnumpy(a) -> np.ndarray:
    """A host copy of ``a`` (``cupy.asnumpy``)."""
    return np.array(_unwrap(a))


class _Namespace(types.SimpleNamespace):
    """``numpy`` (or one of its submodules) with every function's result wrapped by ``wrap``."""

    def __init__(self, module, **overrides):
        super().__init__(**overrides)
        object.__setattr__(self, "_module", module)

    def __getattr__(self, name):
        value = getattr(self._module, name)
        if isinstance(value, (np.ufunc, type)) or not callable(value):
            if isinstance(value, types.ModuleType):
                return _Namespace(value)
            return value

        def call(*args, **kwargs):
            _refuse_host(name, _leaves(args) + _leaves(tuple(kwargs.values())))  # CuPy takes no host arrays
            return wrap(value(*_unwrap(args), **_unwrap(kwargs)))
        call.__name__ = name
        return call


xp = _Namespace(np, asarray=asarray, array=array, asnumpy=asnumpy, ndarray=EmulatedArray,
                __name__="bitnet.gpu.emulated.xp")
