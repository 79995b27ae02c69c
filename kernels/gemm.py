"""Float GEMM on NumPy's BLAS, split across threads that block instead of spinning.

``matmul(a, b, out=None)`` computes ``out = a @ b`` for 2-D float arrays with NumPy's BLAS. Every
output element comes from one single-threaded BLAS call over the full K. Results are
deterministic for a given thread count; across thread counts, and against ``np.matmul``, they may
differ in the last bits because OpenBLAS picks its code path by block shape. (Products of +-1
values, as in binary layers, are exact whatever the order while sums stay below 2^24.)

Why not ``np.matmul`` directly: training alternates BLAS calls with Numba's parallel kernels.
OpenBLAS's idle worker threads spin for a long time after each call (unless
``OPENBLAS_THREAD_TIMEOUT`` was set before NumPy loaded) and take the cores away from Numba's
threads; on the 2-core machine that made LeNet training 1.5x slower. Here OpenBLAS runs
single-threaded for the duration of the call and the output is split into ``T`` column (or row)
blocks computed by the caller and ``T - 1`` pool threads, which sleep on a queue when idle. The
previous OpenBLAS thread count is restored afterwards. ``T`` follows ``numba.get_num_threads()``,
so one setting (``NUMBA_NUM_THREADS`` / ``numba.set_num_threads``) controls all of bitnet's
threads. Where NumPy's BLAS is not an OpenBLAS we can find, ``matmul`` is ``np.matmul``.
"""
from __future__ import annotations

import ctypes
import os
import threading
from concurrent.futures import ThreadPoolExecutor

import numba
import numpy as np

_MIN_WORK = 1 << 22  # m*n*k below which one thread is faster than the hand-off (~20 us)


def _find_openblas():
    """(set_num_threads, get_num_threads) of the OpenBLAS that NumPy loaded, or None."""
    try:
        with open("/proc/self/maps") as f:
            paths = {line.split()[-1] for line in f if "openblas" in line.lower() and ".so" in line}
    except OSError:
        return None
    # NumPy's own copy first (its wheels ship it under numpy.libs), then any other.
    for path in sorted(paths, key=lambda p: "numpy" not in p):
        try:
            lib = ctypes.CDLL(path)
        except OSError:
            continue
        for prefix in ("scipy_openblas", "openblas"):
            for suffix in ("64_", ""):
                setter = getattr(lib, f"{prefix}_set_num_threads{suffix}", None)
                getter = getattr(lib, f"{prefix}_get_num_threads{suffix}", None)
                if setter is not None and getter is not None:
                    setter.argtypes, setter.restype, getter.restype = [ctypes.c_int], None, ctypes.c_int
                    return setter, getter
    return None


class _Pool:
    """Created on first use; its threads are daemon threads that sleep when idle."""

    def __init__(self):
        self.lock = threading.Lock()
        self.executor = None
        self.size = 0
        self.blas = _find_openblas() if os.name == "posix" else None

    def get(self, workers):
        with self.lock:
            if self.executor is None or self.size < workers:
                if self.executor is not None:
                    self.executor.shutdown(wait=False)
                self.executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="bitnet-gemm")
                self.size = workers
            return self.executor


_pool = _Pool()
_blas_lock = threading.Lock()  # the OpenBLAS thread count is process-wide


def _blocks(n, parts):
    step = -(-n // parts)
    return [slice(i, min(n, i + step)) for i in range(0, n, step)]


def matmul(a: np.ndarray, b: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """out = a @ b for 2-D arrays; see the module docstring."""
    m, k = a.shape
    n = b.shape[1]
    if out is None:
        out = np.empty((m, n), dtype=np.result_type(a, b))
    threads = numba.get_num_threads()
    if _pool.blas is None or not _blas_lock.acquire(blocking=False):
        return np.matmul(a, b, out=out)
    set_threads, get_threads = _pool.blas
    previous = get_threads()
    try:
        set_threads(1)  # also for small products: a multi-threaded call would wake the spinning pool
        parts = threads if m * n * k >= _MIN_WORK else 1
        if n >= m:  # column blocks: out[:, j] = a @ b[:, j]
            jobs = [(a, b[:, s], out[:, s]) for s in _blocks(n, parts)]
        else:       # row blocks: out[i] = a[i] @ b
            jobs = [(a[s], b, out[s]) for s in _blocks(m, parts)]
        futures = []
        if len(jobs) > 1:
            executor = _pool.get(len(jobs) - 1)
            futures = [executor.submit(np.matmul, x, y, out=o) for x, y, o in jobs[1:]]
        np.matmul(*jobs[0][:2], out=jobs[0][2])
        for f in futures:
            f.result()
    finally:
        set_threads(previous)
        _blas_lock.release()
    return out
