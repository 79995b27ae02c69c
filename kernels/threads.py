"""bitnet's own worker threads, and BLAS kept single-threaded while they run.

Training alternates BLAS GEMMs with Numba kernels. OpenBLAS's idle workers spin for a long time
after each call (unless ``OPENBLAS_THREAD_TIMEOUT`` was set before NumPy loaded) and take the
cores from everything else; on 2 cores that made LeNet training 1.5x slower. So bitnet runs BLAS
with one thread inside ``single_threaded_blas()`` and parallelizes itself, with ``run_parallel``:
the calling thread and ``T - 1`` pool threads that sleep on a queue when idle (NumPy and
``nogil`` Numba kernels release the GIL, so the threads really run in parallel).

``T`` follows ``numba.get_num_threads()``: one setting (``NUMBA_NUM_THREADS`` or
``numba.set_num_threads``) controls all of bitnet's threads. Where NumPy's BLAS is not an OpenBLAS
we can find, ``single_threaded_blas`` is a no-op and BLAS threads as it likes.
"""
from __future__ import annotations

import contextlib
import ctypes
import os
import threading
from concurrent.futures import ThreadPoolExecutor

import numba
import numpy as np


def _find_openblas():
    """(set_num_threads, get_num_threads) of the OpenBLAS that NumPy loaded, or None."""
    if os.name != "posix":
        return None
    try:
        with open("/proc/self/maps") as f:
            paths = {line.split()[-1] for line in f if "openblas" in line.lower() and ".so" in line}
    except OSError:
        return None
    for path in sorted(paths, key=lambda p: "numpy" not in p):  # NumPy's own copy first
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


_BLAS = _find_openblas()
_blas_lock = threading.RLock()  # the OpenBLAS thread count is process-wide
_pool_lock = threading.Lock()
_executor = None
_executor_size = 0


def num_threads() -> int:
    return numba.get_num_threads()


_inside = threading.local()


@contextlib.contextmanager
def single_threaded_blas():
    """Run BLAS with one thread inside the block; the previous count is restored after it.
    Inside a ``run_parallel`` task it does nothing: the caller's block already holds the setting
    (and its lock, which the task must not wait for)."""
    if _BLAS is None or getattr(_inside, "active", False):
        yield
        return
    set_threads, get_threads = _BLAS
    with _blas_lock:
        previous = get_threads()
        set_threads(1)
        try:
            yield
        finally:
            set_threads(previous)


def _get_executor(workers):
    global _executor, _executor_size
    with _pool_lock:
        if _executor is None or _executor_size < workers:
            if _executor is not None:
                _executor.shutdown(wait=False)
            _executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="bitnet")
            _executor_size = workers
        return _executor


def _as_worker(fn, task):
    _inside.active = True
    try:
        return fn(*task)
    finally:
        _inside.active = False


def run_parallel(fn, tasks):
    """Call ``fn(*task)`` for every task, the first on this thread and the others on the pool;
    returns the results in task order. Exceptions propagate. A call made from inside a task runs
    its tasks inline (a nested wait on the same pool could otherwise deadlock)."""
    if len(tasks) <= 1 or getattr(_inside, "active", False):
        return [fn(*t) for t in tasks]
    executor = _get_executor(len(tasks) - 1)
    futures = [executor.submit(_as_worker, fn, t) for t in tasks[1:]]
    first = _as_worker(fn, tasks[0])
    return [first] + [f.result() for f in futures]


_MIN_ELEMENTS = 1 << 18  # below this one thread is faster than the hand-off


def parallel_ufunc(ufunc, a):
    """``ufunc(a)`` for a NumPy unary ufunc (e.g. ``np.tanh``), its flat range split across
    bitnet's threads for large arrays (NumPy's ufuncs run on one core and release the GIL)."""
    parts = num_threads()
    if a.size < _MIN_ELEMENTS or parts < 2:
        return ufunc(a)
    a = np.ascontiguousarray(a)
    out = np.empty_like(a)
    flat_a, flat_out = a.reshape(-1), out.reshape(-1)
    step = -(-a.size // parts)
    run_parallel(lambda s: ufunc(flat_a[s], out=flat_out[s]),
                 [(slice(i, i + step),) for i in range(0, a.size, step)])
    return out
