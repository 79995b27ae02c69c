"""Where a tensor's array lives, and moving arrays between the CPU and the GPU.

A tensor on the CPU holds a NumPy array; a tensor on "cuda" holds a device array of the array module
that ``xp()`` returns:

- CuPy on a machine with an NVIDIA GPU (``pip install "bitnet-bnn[cuda]"``): its memory pool, cuBLAS
  GEMMs, reductions and elementwise kernels; numba.cuda kernels (the bit kernels) read and write the
  same memory without a copy (``numba_view``);
- ``bitnet.gpu.emulated.xp`` (NumPy arrays of a type of their own, with CuPy's rules) inside
  ``with emulate():`` or when ``NUMBA_ENABLE_CUDASIM=1`` runs numba.cuda in its simulator: how the
  GPU engine is tested on machines without a GPU.

CuPy is imported only when a "cuda" array is first asked for, so ``import bitnet`` and every CPU path
need no GPU package; where CuPy or a GPU is missing, ``xp()`` raises ``CudaUnavailableError`` with
the reason and the fix.
"""
from __future__ import annotations

import contextlib
import contextvars
import functools
import os

import numpy as np

from bitnet.backend import CudaUnavailableError, check_device
from bitnet.gpu import emulated

_override = contextvars.ContextVar("bitnet_gpu_array_module", default=None)


@contextlib.contextmanager
def emulate():
    """Within the block, "cuda" arrays are ``bitnet.gpu.emulated`` arrays (host memory, CuPy's rules),
    whatever the machine has; the previous choice comes back on exit."""
    token = _override.set(emulated.xp)
    try:
        yield emulated.xp
    finally:
        _override.reset(token)


def xp():
    """The array module of "cuda" tensors: the emulation inside ``emulate()`` or under
    ``NUMBA_ENABLE_CUDASIM=1``, else CuPy (checked to find a GPU)."""
    module = _override.get()
    if module is not None:
        return module
    if os.environ.get("NUMBA_ENABLE_CUDASIM") == "1":
        return emulated.xp
    return cupy_module()


def cupy_module():
    """``cupy``, after checking that it imports and sees a GPU; else ``CudaUnavailableError``."""
    try:
        import cupy
    except ImportError as e:
        raise CudaUnavailableError(
            f"training on the GPU needs CuPy, which failed to import ({e}); install it with "
            'pip install "bitnet-bnn[cuda]" (CuPy for CUDA 12: cupy-cuda12x; for CUDA 13: cupy-cuda13x), or '
            'train on device="cpu"') from None
    try:
        count = cupy.cuda.runtime.getDeviceCount()
    except Exception as e:  # noqa: BLE001 - CUDARuntimeError, missing driver library ...
        raise CudaUnavailableError(
            f"CuPy finds no usable NVIDIA GPU here ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}); "
            'run on a machine with an NVIDIA GPU and its driver, or use device="cpu"') from None
    if count < 1:
        raise CudaUnavailableError('CuPy finds no NVIDIA GPU here (0 devices); use device="cpu"')
    return cupy


def is_device_array(a) -> bool:
    """True for a GPU array (CuPy's, or the emulation's), False for NumPy arrays and anything else."""
    if type(a) is np.ndarray:
        return False
    return isinstance(a, emulated.EmulatedArray) or type(a).__module__.split(".")[0] == "cupy"


def device_of(a) -> str:
    """"cuda" for a device array, else "cpu"."""
    return "cuda" if is_device_array(a) else "cpu"


def array_module(a):
    """NumPy for host arrays, ``xp()`` for device arrays: the namespace to compute on ``a`` with."""
    return xp() if is_device_array(a) else np


def to_device(a, device: str):
    """``a`` on ``device`` ("cpu" or "cuda"): the same array when it is there already, else a copy."""
    if check_device(device, "to_device") == "cpu":
        return to_host(a)
    if is_device_array(a):
        module = xp()
        return a if isinstance(a, module.ndarray) else module.asarray(to_host(a))
    return xp().asarray(np.asarray(a))


def to_host(a) -> np.ndarray:
    """``a`` as a NumPy array (a copy from the GPU; host arrays are returned as they are)."""
    if isinstance(a, emulated.EmulatedArray):
        return emulated.asnumpy(a)
    if is_device_array(a):
        return a.get()
    return a


def numba_view(a):
    """A numba.cuda view of a device array, sharing its memory, to launch bitnet's numba.cuda kernels
    on: CuPy arrays through ``__cuda_array_interface__``; emulated ones as the host arrays that the
    numba.cuda simulator's kernels take, wrapped (without a copy) as the simulator's device arrays
    when it runs, so that the kernel wrappers' device-array checks accept them.

    No stream synchronization (``sync=False``): the kernels launch on the default stream, after the
    work CuPy queued there, so waiting for it on the host would only cost time."""
    if isinstance(a, emulated.EmulatedArray):
        host = emulated.host_view(a)
        if os.environ.get("NUMBA_ENABLE_CUDASIM") == "1":
            from numba.cuda.simulator.cudadrv.devicearray import FakeCUDAArray
            return FakeCUDAArray(host)
        return host
    return _numba_cuda().as_cuda_array(a, sync=False)


@functools.lru_cache(maxsize=1)
def _numba_cuda():
    """``numba.cuda``, checked once (``bitnet.backend.cuda_module``: its checks read package metadata,
    too slow for every view of every binary layer); a failed check is not cached and raises again."""
    from bitnet.backend import cuda_module
    return cuda_module()


def synchronize() -> None:
    """Wait for the GPU work queued so far (a no-op on the emulation)."""
    module = xp()
    if module is not emulated.xp:
        module.cuda.get_current_stream().synchronize()


def scatter_add(target, index, values) -> None:
    """``target[index] += values`` with repeated indices adding up (``np.add.at``), on a device array:
    ``cupyx.scatter_add`` on CuPy, ``np.add.at`` on the emulation."""
    if isinstance(target, emulated.EmulatedArray):
        np.add.at(emulated.host_view(target), emulated._unwrap(index), emulated._unwrap(values))
        return
    import cupyx
    cupyx.scatter_add(target, index, values)
