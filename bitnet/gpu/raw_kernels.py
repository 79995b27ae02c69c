"""CUDA C kernels of bitnet's own on CuPy arrays, with the same kernels on the host for the emulation.

A kernel source module (``bitnet.kernels.cuda_batchnorm``) gives ``SOURCE`` (CUDA C with
``extern "C"`` kernels, its element types left as macros), ``SIGNATURES`` (each kernel's parameters:
"ptr" (an array), "table" (a ``PointerTable``: the addresses of several arrays), "i32", "i64",
"f64") and ``NUMPY`` (each kernel as a host function of the same arguments, writing its outputs in
place: NumPy, or the CPU's Numba kernel where it computes the same thing).
``launch(module, name, blocks, threads, args, macros)``:

- on CuPy, compiles ``SOURCE`` once per process and set of macros (``cupy.RawModule`` with
  ``--fmad=false``: no multiply-add contraction, every operation rounded as NumPy rounds it) and
  launches ``name`` on ``blocks`` x ``threads`` with the arguments converted to the C types;
- on the emulation (``bitnet.gpu.emulated``), runs ``NUMPY[name]`` on the host arrays behind the device
  arrays and records one kernel launch (``count_device_calls``).

The compiled modules, and the kernel objects taken from them, are kept in a dict keyed by source,
macros (and kernel name), like Numba's compiled kernels: a cache, the same results with or without it.
"""
from __future__ import annotations

import numpy as np

from bitnet.gpu import emulated

_compiled: dict = {}
_C_TYPES = {"i32": np.int32, "i64": np.int64, "f64": np.float64}
C_NAMES = {np.dtype(np.float32): "float", np.dtype(np.float64): "double"}


def takes(dtype) -> bool:
    """Whether the kernels here take arrays of ``dtype`` (float32, float64)."""
    return np.dtype(dtype) in C_NAMES


def c_type(dtype) -> str:
    """The C name of a float dtype (float32 -> "float", float64 -> "double")."""
    try:
        return C_NAMES[np.dtype(dtype)]
    except KeyError:
        raise TypeError(f"CUDA C kernels here take float32 or float64 arrays, got {np.dtype(dtype)}") from None


class PointerTable:
    """The device addresses of some arrays, for a kernel parameter of kind "table" (a
    ``const unsigned long long*``): copied to the device once, at the first launch that needs them;
    the table keeps the arrays alive. On the emulation the kernel's NumPy version gets the arrays."""

    def __init__(self, arrays):
        self.arrays = list(arrays)
        self._device = None

    def on_device(self):
        if self._device is None:
            import cupy
            self._device = cupy.asarray(np.array([a.data.ptr for a in self.arrays], dtype=np.uint64))
        return self._device


def _host(a, kind):
    if kind == "table":
        return [emulated.host_view(x) for x in a.arrays]
    return emulated.host_view(a) if kind == "ptr" else a


_signatures: dict = {}


def _signature(module, name):
    """``(kinds, arrays, converters)`` of kernel ``name``: its parameter kinds, the positions of its
    array parameters ("ptr", "table"), and what turns each argument into what CuPy passes (kept: a
    launch's Python time is host time on every step)."""
    key = (module.__name__, name)
    sig = _signatures.get(key)
    if sig is None:
        kinds = module.SIGNATURES[name]
        converters = tuple(None if k == "ptr" else PointerTable.on_device if k == "table" else _C_TYPES[k]
                           for k in kinds)
        sig = _signatures[key] = (kinds, tuple(i for i, k in enumerate(kinds) if k in ("ptr", "table")), converters)
    return sig


def launch(module, name: str, blocks: int, threads: int, args, macros: dict) -> None:
    """Run kernel ``name`` of ``module`` (module docstring) on ``blocks`` x ``threads``."""
    kinds, array_positions, converters = _signature(module, name)
    if len(args) != len(kinds):
        raise TypeError(f"{name} takes {len(kinds)} arguments, got {len(args)}")
    on_emulation = False
    for i in array_positions:
        arrays = args[i].arrays if kinds[i] == "table" else (args[i],)
        for x in arrays:
            if not x.flags.c_contiguous:  # the kernels index flat memory
                raise ValueError(f"{name}: argument {i} must be C-contiguous arrays (xp.ascontiguousarray), got "
                                 f"strides {[x.strides for x in arrays]} for shapes {[x.shape for x in arrays]}")
            on_emulation = on_emulation or isinstance(x, emulated.EmulatedArray)
    if on_emulation:
        emulated.record_launch(name)
        module.NUMPY[name](*(_host(a, k) for a, k in zip(args, kinds)))
        return
    if blocks == 0:
        return
    key = (module.__name__, tuple(sorted(macros.items())), name)
    kernel = _compiled.get(key)
    if kernel is None:  # CuPy's get_function makes a new kernel object (a driver lookup at its first call)
        kernel = _compiled[key] = _module(module, key[1]).get_function(name)
    kernel((int(blocks),), (int(threads),), tuple(a if f is None else f(a) for a, f in zip(args, converters)))


def _module(module, macros):
    """``module.SOURCE`` compiled with these macros (one ``cupy.RawModule`` per set, kept)."""
    key = (module.__name__, macros)
    if key not in _compiled:
        import cupy
        options = ("--fmad=false",) + tuple(f"-D{k}={v}" for k, v in macros)
        _compiled[key] = cupy.RawModule(code=module.SOURCE, options=options)
    return _compiled[key]


def blocks_for(count: int, threads: int) -> int:
    """Blocks of ``threads`` that cover ``count`` threads."""
    return -(-int(count) // threads)
