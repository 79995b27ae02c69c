"""bitnet's parallel runtime: the calling thread does the work, awake helpers join in.

Every parallel kernel of bitnet is a *worker*: a function that claims pieces of work from a shared
counter until none are left (``fetch_add`` of ``bitnet.kernels.atomics`` inside Numba kernels,
``itertools.count`` in Python). ``run(worker, n)`` calls it on the calling thread and hands it to up
to ``n - 1`` helper threads, then returns as soon as the caller's call has returned and every
helper that *started* on it has finished: a helper that is not running (descheduled on a machine
shared with other work, or still waking up) never makes the caller wait; it either joins in while
work is left or finds none and returns. So a forward pass on a busy machine degrades to the speed
of the threads that actually run, instead of waiting a scheduler time slice for a sleeping thread
at the end of every kernel (the OpenMP barrier bitnet used before did: on a machine at a load of
about 4.5, resnet18-binary at 2 threads ran 4-6x slower than at 1 thread, issue 13).

Helpers are Python threads that block (never spin) on a queue when idle; the kernels they run are
``nogil`` Numba functions or NumPy / BLAS calls, which release the GIL, so the threads really run
in parallel. A helper runs a job under its caller's NumPy error state (``np.errstate``: an
overflow raises, warns or passes in a helper as it would on the calling thread). BLAS runs
single-threaded inside ``single_threaded_blas()``: bitnet splits GEMMs itself
(``bitnet.kernels.gemm``), and OpenBLAS's own pool, whose idle workers spin, would take the cores
from everything else (on 2 cores that made LeNet training 1.5x slower).

The thread count follows ``numba.get_num_threads()``: one setting (``NUMBA_NUM_THREADS`` or
``numba.set_num_threads``) controls all of bitnet's threads. Where NumPy's BLAS is not an OpenBLAS
we can find, ``single_threaded_blas`` is a no-op and BLAS threads as it likes.
"""
from __future__ import annotations

import ctypes
import itertools
import os
import queue
import threading

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


def num_threads() -> int:
    """The threads a parallel kernel may use: ``numba.get_num_threads()``."""
    return numba.get_num_threads()


_local = threading.local()  # .active: this thread is inside a worker (a nested run() runs inline)


class single_threaded_blas:
    """``with single_threaded_blas():`` runs BLAS with one thread inside the block; the previous count
    is restored after it. Inside a worker, or inside another such block on this thread, it does
    nothing: the outer block already holds the setting (and its lock, which a worker must not wait
    for). (A class, not a generator: it is entered around every GEMM.)"""
    __slots__ = ("previous",)

    def __enter__(self):
        self.previous = None
        if _BLAS is None or getattr(_local, "active", False) or getattr(_local, "single_blas", False):
            return self  # nested: the outer block holds the setting
        set_threads, get_threads = _BLAS
        _blas_lock.acquire()
        self.previous = get_threads()
        set_threads(1)
        _local.single_blas = True
        return self

    def __exit__(self, *exc):
        if self.previous is not None:
            _local.single_blas = False
            _BLAS[0](self.previous)
            _blas_lock.release()
        return False


class _Job:
    """One ``run``: the worker, how many helpers are inside it, and whether it still admits helpers;
    also the caller's NumPy error state (``np.errstate``), under which helpers run the worker."""
    __slots__ = ("worker", "cond", "active", "closed", "error", "errstate", "errcall")

    def __init__(self, worker):
        self.worker, self.cond = worker, threading.Condition()
        self.active, self.closed, self.error = 0, False, None
        self.errstate, self.errcall = np.geterr(), np.geterrcall()

    def join(self) -> bool:
        """A helper enters the job; False when the caller has finished it already."""
        with self.cond:
            if self.closed:
                return False
            self.active += 1
            return True

    def leave(self, error=None):
        with self.cond:
            self.active -= 1
            if error is not None and self.error is None:
                self.error = error
            if self.active == 0 and self.closed:
                self.cond.notify_all()

    def close_and_wait(self):
        """No helper may enter any more; wait for those inside (each holds work it claimed)."""
        with self.cond:
            self.closed = True
            while self.active:
                self.cond.wait()


def _helper(inbox):
    _local.active = True
    while True:
        job = inbox.get()
        if job is None:
            return
        if not job.join():
            continue  # woke too late: the caller did the work
        error = None
        try:
            with np.errstate(call=job.errcall, **job.errstate):  # the caller's, not NumPy's defaults
                job.worker()
        except BaseException as e:  # re-raised by the caller
            error = e
        job.leave(error)


class _Helpers:
    """The helper threads of this process (made again after a fork, whose child has none)."""

    def __init__(self):
        self.lock, self.inboxes, self.pid = threading.Lock(), [], None

    def inboxes_for(self, n):
        with self.lock:
            if self.pid != os.getpid():
                self.inboxes, self.pid = [], os.getpid()
            while len(self.inboxes) < n:
                inbox = queue.SimpleQueue()
                threading.Thread(target=_helper, args=(inbox,), daemon=True,
                                 name=f"bitnet-helper-{len(self.inboxes) + 1}").start()
                self.inboxes.append(inbox)
            return self.inboxes[:n]


_helpers = _Helpers()


def run(worker, n: int | None = None) -> None:
    """Call ``worker()`` on this thread and on up to ``n - 1`` helpers (default: all of bitnet's
    threads); return when this thread's call and every helper call that started have returned.
    ``worker`` must claim its work from a shared counter (see the module docstring), so that the
    work gets done whoever runs. A helper's exception is raised here. Inside a worker, or with
    ``n <= 1``, the worker runs on this thread only. BLAS runs single-threaded while the workers
    run (``single_threaded_blas``): every worker's GEMMs stay on its own thread."""
    n = num_threads() if n is None else int(n)
    if n <= 1 or getattr(_local, "active", False):
        worker()
        return
    job = _Job(worker)
    with single_threaded_blas():  # BLAS inside any worker runs on that worker's thread only
        for inbox in _helpers.inboxes_for(n - 1):
            inbox.put(job)
        _local.active = True
        try:
            worker()
        finally:
            _local.active = False
            job.close_and_wait()
    if job.error is not None:
        raise job.error


def run_parallel(fn, tasks):
    """Call ``fn(*task)`` for every task, on this thread and awake helpers (``run``); returns the
    results in task order. Exceptions propagate."""
    if len(tasks) <= 1 or getattr(_local, "active", False):
        return [fn(*t) for t in tasks]
    results = [None] * len(tasks)
    claim = itertools.count()

    def worker():
        while (i := next(claim)) < len(tasks):
            results[i] = fn(*tasks[i])
    run(worker, min(len(tasks), num_threads()))
    return results


# work (items x cost) below which one thread beats waking a helper: a helper's wake-up and a
# kernel's dispatch cost a few tens of microseconds, a few hundred thousand simple operations
MIN_PARALLEL_WORK = 1 << 18


def parallel(kernel, n_items: int, *args, cost: int = 1) -> None:
    """Run the worker kernel ``kernel(*args, counter, chunk)`` over ``n_items`` items: each thread
    claims ``chunk`` items at a time (``bitnet.kernels.atomics.claim``); several threads (``run``)
    only when ``n_items * cost`` (the work, in simple operations) is worth waking them."""
    counter = np.zeros(1, np.int64)
    if n_items * cost < MIN_PARALLEL_WORK or n_items < 2:  # this thread alone, claiming everything at once
        kernel(*args, counter, max(1, n_items))
        return
    threads = min(num_threads(), n_items)
    chunk = max(1, -(-n_items // (8 * threads)))  # several chunks a thread: the awake ones take more
    run(lambda: kernel(*args, counter, chunk), threads)


def prepared_parallel(kernel, n_items: int, cost: int = 1):
    """``parallel(kernel, n_items, *args, cost=cost)`` with its choice made once: ``call(*args)``.
    Work that one thread does runs the kernel directly with a task counter kept here (for callers
    that run one call at a time, such as a packed model's plan); larger work goes through
    ``parallel`` (a counter per call, the threads counted at the call)."""
    if n_items * cost >= MIN_PARALLEL_WORK and n_items >= 2:
        return lambda *args: parallel(kernel, n_items, *args, cost=cost)
    counter = np.zeros(1, np.int64)
    chunk = max(1, n_items)

    def call(*args):
        counter[0] = 0
        kernel(*args, counter, chunk)
    return call


def parallel_flat(fn, size: int) -> None:
    """Call ``fn(s)`` for slices ``s`` that cover ``range(size)``: one slice per thread for large
    sizes (at least ``MIN_PARALLEL_WORK``), else one slice on this thread. For elementwise NumPy
    calls on flat views (ufuncs and copies run on one core and release the GIL)."""
    parts = 1 if size < MIN_PARALLEL_WORK else num_threads()
    if parts < 2:
        fn(slice(0, size))
        return
    step = -(-size // parts)
    run_parallel(fn, [(slice(i, i + step),) for i in range(0, size, step)])


def parallel_ufunc(ufunc, a, out=None):
    """``ufunc(a)`` for a NumPy unary ufunc (e.g. ``np.tanh``), its flat range split across
    bitnet's threads for large arrays (``parallel_flat``).
    ``out``, if given, is a C-contiguous array of ``a``'s shape and dtype that receives the result."""
    a = np.asarray(a, order="C")  # (np.ascontiguousarray would make 0-d arrays 1-d)
    if out is None:
        out = np.empty(a.shape, np.result_type(ufunc(np.zeros((), a.dtype))))
    flat_a, flat_out = a.reshape(-1), out.reshape(-1)
    parallel_flat(lambda s: ufunc(flat_a[s], out=flat_out[s]), a.size)
    return out


def parallel_binary(ufunc, a, b, out):
    """``ufunc(a, b, out=out)`` for a NumPy binary ufunc (``np.add``), split across bitnet's threads
    (``parallel_flat``) when a, b and out are C-contiguous arrays of one shape; else one call."""
    if a.shape != b.shape or a.shape != out.shape or not (
            a.flags.c_contiguous and b.flags.c_contiguous and out.flags.c_contiguous):
        return ufunc(a, b, out=out)
    fa, fb, fo = a.reshape(-1), b.reshape(-1), out.reshape(-1)
    parallel_flat(lambda s: ufunc(fa[s], fb[s], out=fo[s]), a.size)
    return out


def parallel_copy(out, a):
    """``np.copyto(out, a)`` split across bitnet's threads (``parallel_flat``) when both are
    C-contiguous arrays of one shape and dtype; else one call."""
    if a.shape != out.shape or a.dtype != out.dtype or not (a.flags.c_contiguous and out.flags.c_contiguous):
        np.copyto(out, a)
        return out
    fa, fo = a.reshape(-1), out.reshape(-1)
    parallel_flat(lambda s: np.copyto(fo[s], fa[s]), a.size)
    return out
