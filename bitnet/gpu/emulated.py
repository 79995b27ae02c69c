"""A NumPy stand-in for CuPy: device arrays that live in host memory but behave like GPU arrays.

The GPU training engine runs on CuPy arrays (docs/gpu-training.md). CuPy needs a GPU to create one,
so CI, which has none, runs the same engine code on this module instead: the namespace ``xp``
answers the subset of CuPy's API the engine uses (the NumPy API, ``asnumpy``, ``ndarray``), and its
arrays, ``EmulatedArray``, keep CuPy's rules about the host:

- a device array never meets a host (NumPy) array in one operation: ``device + host``,
  ``xp.add(device, host)``, ``device[...] = host`` raise as CuPy does (TypeError / ValueError);
- a device array is never turned into a host array implicitly: ``np.asarray(device)`` raises
  ``TypeError`` (CuPy: "Implicit conversion to a NumPy array is not allowed"), so code that writes a
  GPU model's weights to a file or packs them must copy them to the host first (``.get()``,
  ``bitnet.gpu.arrays.to_host``);
- every result is a device array, also a reduction to one element (CuPy returns 0-d arrays, not
  scalars); ``float()``, ``int()``, ``bool()``, ``.item()`` read one value back, as on CuPy.

Every such read back to the host (``get``, ``asnumpy``, ``float`` / ``int`` / ``bool`` / ``index``,
``item``, ``tolist``, formatting) waits on a real GPU for all the work queued before it: inside
``with count_host_reads() as reads:`` each one is recorded (``reads``: a list of ``(what, shape)``),
so tests can pin down how many times a training step stops the GPU's queue.

Inside ``with count_device_calls() as calls:`` every device operation is recorded too, ``(name,
where)`` with ``where`` the innermost caller outside this module (``file:function``), except those
that launch no kernel on CuPy (views such as ``reshape`` / ``transpose``, basic slicing, ``empty``:
``NO_LAUNCH``): a count of a training step's kernel launches, each of which costs host time on a GPU
(``python -m bitnet.bench.gpu_launches``). It is an estimate: a reshape that must copy, or a CuPy
function that launches two kernels, counts as one or none (``concatenate`` counts as CuPy 14 runs it:
one kernel for many small arrays, else a copy each).

An ``EmulatedArray`` wraps a NumPy array (``host_view``); its numbers are NumPy's. The emulation
checks where arrays live and the math of the GPU implementations, not CuPy's kernels.
"""
from __future__ import annotations

import contextlib
import contextvars
import os
import sys
import types

import numpy as np
from numpy.lib.mixins import NDArrayOperatorsMixin

from bitnet.gpu.cupy_names import CUPY_NAMES, CUPY_NDARRAY_NAMES, CUPY_SUBMODULE_NAMES, CUPY_SUBMODULES

_HOST_REFUSED = ("a host (NumPy) array of shape {shape} met a device array in {what}; move it first "
                 "(xp.asarray(host) / bitnet.gpu.arrays.to_device)")


_reads = contextvars.ContextVar("bitnet_emulated_host_reads", default=None)


@contextlib.contextmanager
def _recording(var):
    """A block in which ``var`` (a context variable) holds the list this yields."""
    items = []
    token = var.set(items)
    try:
        yield items
    finally:
        var.reset(token)


def count_host_reads():
    """Record, in the list this yields, every read of a device array back to the host made in the
    block (in this thread or context): ``(what, shape)`` each, e.g. ``("float", ())``."""
    return _recording(_reads)


def _read(what, a):
    reads = _reads.get()
    if reads is not None:
        reads.append((what, tuple(a.shape)))


_calls = contextvars.ContextVar("bitnet_emulated_device_calls", default=None)
_NUMPY = os.path.dirname(np.__file__)

# device operations that launch no kernel on CuPy: views, metadata, allocations without a fill
NO_LAUNCH = frozenset({"reshape", "transpose", "swapaxes", "view", "ravel", "squeeze", "expand_dims", "moveaxis",
                       "broadcast_to", "empty", "empty_like", "result_type", "can_cast", "shape", "ndim",
                       "as_strided", "sliding_window_view"})


def count_device_calls():
    """Record, in the list this yields, every device operation made in the block (in this thread or
    context) that would launch a kernel on CuPy: ``(name, where)`` each (module docstring)."""
    return _recording(_calls)


def _call(name, launches=True, launcher=None):
    """Record ``launches`` (True: one; or a count) kernel launches of operation ``name``, attributed to
    the innermost caller outside this module, NumPy and the file ``launcher``."""
    calls = _calls.get()
    if calls is not None and launches and name not in NO_LAUNCH:
        frame = sys._getframe(1)
        while frame is not None and (frame.f_code.co_filename in (__file__, launcher)
                                     or _NUMPY in frame.f_code.co_filename):
            frame = frame.f_back  # past this module, NumPy's operator mixin and the launcher
        where = "?" if frame is None else f"{_short(frame.f_code.co_filename)}:{frame.f_code.co_name}"
        calls.extend([(name, where)] * int(launches))


def record_launch(name):
    """Record one kernel launch of ``name`` made outside this module's operations (a CUDA C kernel
    that the emulation runs as a NumPy function), attributed to the caller of the function that
    calls this (``bitnet.gpu.raw_kernels.launch``'s caller)."""
    _call(name, launcher=sys._getframe(1).f_code.co_filename)


def _concatenate_launches(arrays):
    """Kernels CuPy 14's ``concatenate`` launches: one for more than 8 arrays of one dtype averaging
    under 2 MiB, else one copy per array."""
    arrays = list(arrays) if isinstance(arrays, (list, tuple)) else [arrays]
    dtypes = {getattr(a, "dtype", None) for a in arrays}
    nbytes = sum(getattr(a, "nbytes", 0) for a in arrays)
    return 1 if len(arrays) > 8 and len(dtypes) == 1 and nbytes < (2 << 20) * len(arrays) else len(arrays)


def _short(path):
    """A source file's path from its package folder on (bitnet/..., kernels/...), else its name."""
    parts = path.replace(os.sep, "/").split("/")
    for i in range(len(parts) - 2, -1, -1):
        if parts[i] in ("bitnet", "kernels", "models", "data", "tests"):
            return "/".join(parts[i:])
    return parts[-1]


class EmulatedArray(NDArrayOperatorsMixin):
    """An array "on the emulated GPU": NumPy storage behind CuPy's rules (module docstring)."""

    __slots__ = ("_host",)
    __hash__ = None

    def __init__(self, host: np.ndarray):
        self._host = host

    # -- NumPy protocols ------------------------------------------------------------------------------
    def __array__(self, dtype=None, copy=None):
        raise TypeError(f"implicit conversion of a device array (shape {self.shape}) to a NumPy array is not "
                        "allowed (CuPy refuses it too); copy it to the host with .get() or "
                        "bitnet.gpu.arrays.to_host")

    def __array_ufunc__(self, ufunc, method, *inputs, out=None, **kwargs):
        if any(not _operand(i) for i in inputs):
            return NotImplemented  # e.g. a Tensor: its reflected operator takes over
        _refuse_host(f"{ufunc.__name__}", inputs + (out or ()))
        _call(ufunc.__name__ if method == "__call__" else f"{ufunc.__name__}.{method}")
        if out is not None:
            kwargs["out"] = tuple(_unwrap(o) for o in out)
        result = getattr(ufunc, method)(*(_unwrap(i) for i in inputs), **kwargs)
        if out is not None:
            return out[0] if len(out) == 1 else out
        return wrap(result)

    def __array_function__(self, func, types_, args, kwargs):
        _refuse_host(func.__name__, _leaves(args) + _leaves(tuple(kwargs.values())))
        _call(func.__name__)
        return wrap(func(*_unwrap(args), **_unwrap(kwargs)))

    # -- the ndarray surface ---------------------------------------------------------------------------
    shape = property(lambda self: self._host.shape)
    dtype = property(lambda self: self._host.dtype)
    ndim = property(lambda self: self._host.ndim)
    size = property(lambda self: self._host.size)
    nbytes = property(lambda self: self._host.nbytes)
    itemsize = property(lambda self: self._host.itemsize)
    strides = property(lambda self: self._host.strides)
    flags = property(lambda self: self._host.flags)
    T = property(lambda self: wrap(self._host.T))

    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        if name not in CUPY_NDARRAY_NAMES:
            raise AttributeError(f"cupy.ndarray has no {name!r} (numpy.ndarray.{name} has no GPU counterpart): the "
                                 "GPU engine can use only what CuPy provides (bitnet.gpu.cupy_names)")
        value = getattr(self._host, name)
        if name in ("item", "tolist"):
            _read(name, self)
        if not callable(value):
            return wrap(value)

        def method(*args, **kwargs):
            _refuse_host(f"ndarray.{name}", _leaves(args) + _leaves(tuple(kwargs.values())))
            _call(name)
            return wrap(value(*_unwrap(args), **_unwrap(kwargs)))
        method.__name__ = name
        return method

    def __getitem__(self, index):
        _call("take", launches=_advanced(index))  # basic slicing is a view; an index array gathers
        return wrap(self._host[_unwrap(index)])

    def __setitem__(self, index, value):
        if isinstance(value, np.ndarray) and value.ndim > 0:
            raise ValueError(f"non-scalar numpy.ndarray (shape {value.shape}) cannot be assigned into a device "
                             "array (CuPy refuses it too); move it first (xp.asarray(host))")
        _call("setitem")
        self._host[_unwrap(index)] = _unwrap(value)

    def __len__(self):
        return len(self._host)

    def __iter__(self):
        return (wrap(row) for row in self._host)

    def __bool__(self):
        _read("bool", self)
        return bool(self._host)

    def __float__(self):
        _read("float", self)
        return float(self._host)

    def __int__(self):
        _read("int", self)
        return int(self._host)

    def __index__(self):
        _read("index", self)
        return self._host.__index__()

    def __format__(self, spec):
        _read("format", self)
        return format(self._host, spec) if self.ndim else format(self._host[()], spec)

    def __repr__(self):
        return "emulated_device_" + repr(self._host)

    def __copy__(self):
        return EmulatedArray(self._host.copy())

    def __deepcopy__(self, memo):
        return EmulatedArray(self._host.copy())

    def get(self) -> np.ndarray:
        """A host copy (``cupy.ndarray.get``)."""
        _read("get", self)
        return np.array(self._host)


def host_view(a: EmulatedArray) -> np.ndarray:
    """The NumPy array an ``EmulatedArray`` wraps (no copy): what numba.cuda's simulator kernels take."""
    return a._host


def _operand(x) -> bool:
    """Whether a ufunc operand is something this emulation handles (else the other operand's type may)."""
    return isinstance(x, (EmulatedArray, np.ndarray, np.generic, int, float, complex, bool)) or x is None


def _leaves(items):
    out = []
    for item in items:
        if isinstance(item, (list, tuple)):
            out.extend(_leaves(item))
        else:
            out.append(item)
    return tuple(out)


def _advanced(index) -> bool:
    """Whether an index holds an array or a list (advanced indexing: a gather kernel, not a view)."""
    items = index if isinstance(index, tuple) else (index,)
    return any(isinstance(i, (EmulatedArray, np.ndarray, list)) for i in items)


def _refuse_host(what, operands):
    for op in operands:
        if isinstance(op, np.ndarray):
            raise TypeError(_HOST_REFUSED.format(shape=op.shape, what=what))


def _unwrap(x):
    if isinstance(x, EmulatedArray):
        return x._host
    if isinstance(x, (list, tuple)):
        return type(x)(_unwrap(i) for i in x)
    if isinstance(x, dict):
        return {k: _unwrap(v) for k, v in x.items()}
    return x


def wrap(x):
    """NumPy results as device arrays: arrays and NumPy scalars become ``EmulatedArray`` (0-d for
    scalars, as CuPy returns), tuples and lists are wrapped item by item, anything else is returned
    as is."""
    if isinstance(x, np.ndarray):
        return EmulatedArray(x)
    if isinstance(x, np.generic):
        return EmulatedArray(np.asarray(x))
    if isinstance(x, (tuple, list)):
        return type(x)(wrap(i) for i in x)
    return x


def asarray(a, dtype=None, order=None):
    """A device array from ``a``: a host array is copied (as CuPy copies it to the GPU)."""
    if isinstance(a, EmulatedArray):
        return a if dtype is None or a.dtype == dtype else a.astype(dtype)
    _call("asarray")  # a copy from the host
    return EmulatedArray(np.array(a, dtype=dtype, order=order or "K", copy=True))


def array(a, dtype=None, copy=True, order="K"):
    """A device array from ``a``, always a copy unless ``copy=False`` and nothing changes (``cupy.array``)."""
    if isinstance(a, EmulatedArray) and not copy and (dtype is None or a.dtype == dtype):
        return a
    _call("array")
    return EmulatedArray(np.array(_unwrap(a), dtype=dtype, order=order, copy=True))


def ascontiguousarray(a, dtype=None):
    """``a`` C-contiguous (a copy only where needed), on the device."""
    _refuse_host("ascontiguousarray", (a,))
    host = _unwrap(a)
    out = np.ascontiguousarray(host, dtype=dtype)
    _call("ascontiguousarray", launches=out is not host)
    return wrap(out)


def asnumpy(a) -> np.ndarray:
    """A host copy of ``a`` (``cupy.asnumpy``)."""
    if isinstance(a, EmulatedArray):
        _read("asnumpy", a)
    return np.array(_unwrap(a))


class _Namespace(types.SimpleNamespace):
    """``numpy`` (or one of its submodules, ``path`` its name below numpy, e.g. "linalg.") with every
    function's result wrapped by ``wrap``, host arrays refused as arguments (CuPy's functions take
    device arrays only), and the names CuPy lacks refused (``bitnet.gpu.cupy_names``)."""

    def __init__(self, module, path="", **overrides):
        super().__init__(**overrides)
        object.__setattr__(self, "_module", module)
        object.__setattr__(self, "_path", path)

    def __getattr__(self, name):
        path = object.__getattribute__(self, "_path")
        if path == "random.":
            raise AttributeError(f"xp().random.{name}: bitnet draws random numbers on the host and moves them, so that "
                                 "a seed gives the same numbers on both devices (bitnet.gpu.cupy_names)")
        if name.startswith("__") or not _in_cupy(path + name):
            raise AttributeError(f"CuPy has no {path + name!r} (numpy.{path + name} has no GPU counterpart): the GPU "
                                 "engine can use only what CuPy provides (bitnet.gpu.cupy_names)")
        value = getattr(self._module, name)
        if isinstance(value, types.ModuleType):
            return _Namespace(value, f"{path}{name}.")
        if isinstance(value, (np.ufunc, type)) or not callable(value):
            return value

        def call(*args, **kwargs):
            _refuse_host(name, _leaves(args) + _leaves(tuple(kwargs.values())))
            _call(name, _concatenate_launches(args[0]) if name == "concatenate" and args else True)
            return wrap(value(*_unwrap(args), **_unwrap(kwargs)))
        call.__name__ = name
        return call


def _in_cupy(path: str) -> bool:
    """Whether CuPy has ``cupy.<path>`` (a name, a submodule, or a name in a listed submodule)."""
    if "." not in path:
        return path in CUPY_NAMES
    return path in CUPY_SUBMODULE_NAMES or path in CUPY_SUBMODULES


xp = _Namespace(np, asarray=asarray, array=array, ascontiguousarray=ascontiguousarray, asnumpy=asnumpy,
                ndarray=EmulatedArray, __name__="bitnet.gpu.emulated.xp")
