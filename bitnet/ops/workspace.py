"""Recycled arrays for the ops' large outputs and temporaries: no fresh pages every training step.

A training step allocates the same large arrays every step (lowered convolution inputs, layer
outputs, gradients: tens of MB each). glibc hands blocks above its mmap threshold (at most 32 MB)
straight back to the OS on ``free``, and blocks below it often sit at the top of the heap and are
trimmed; either way the next step's ``np.empty`` gets fresh pages, and the kernel zero-fills each
one on first touch: about 3,200 page faults and 17% of a LeNet step on one thread went there, and
more on two (munmap then also stops the other thread to flush its TLB).

``empty(shape, dtype)`` returns an uninitialized C-contiguous array like ``np.empty``, but reuses a
*dead* array of the same shape and dtype that it handed out before. The pool keeps one reference
to every array it made; an array is dead when that is the only reference left (Python's reference
count; every view, Tensor or saved autograd state that still uses it holds a reference, directly or
through ``.base``), so an array in use is never handed out twice. Contents are unspecified, as
with ``np.empty``: every caller overwrites what it asks for, so results are unchanged.

Bounds: arrays below ``MIN_BYTES`` come from ``np.empty`` (malloc serves those from its free lists
without faulting); the pool holds at most ``LIMIT_BYTES`` per thread (arrays in use included), and
when a new array does not fit it first drops dead arrays, least recently used first, else the new
array is not pooled (a plain ``np.empty``). Pools are per thread (``threading.local``): each thread
recycles only its own arrays. ``clear()`` drops this thread's pool; ``limit(nbytes)`` sets the
bound (0 turns recycling off), as a ``with`` block that restores the previous one.
"""
from __future__ import annotations

import contextlib
import sys
import threading
from collections import OrderedDict

import numpy as np

MIN_BYTES = 1 << 18     # 256 KiB: smaller arrays come from malloc's free lists anyway
LIMIT_BYTES = 2 << 30   # per thread, arrays in use included (resnet18-binary, batch 64: 1.5 GB)

_local = threading.local()


def _baseline() -> int:
    """The reference count ``_free`` sees for an array only the pool's list holds (calibrated, as it
    depends on the interpreter version)."""
    return _count([np.empty(1)])


def _count(items):
    for i, a in enumerate(items):
        return sys.getrefcount(a)


def _free(items, base):
    """The index of the first dead array of ``items`` (see the module docstring), or -1."""
    for i, a in enumerate(items):
        if sys.getrefcount(a) == base:
            return i
    return -1


_BASE = _baseline()


class _Pool:
    def __init__(self, limit):
        self.arrays = OrderedDict()  # (shape, dtype) -> [arrays], least recently used key first
        self.nbytes = 0
        self.limit = limit

    def get(self, shape, dtype):
        key = (shape, dtype)
        items = self.arrays.get(key)
        if items is not None:
            self.arrays.move_to_end(key)
            i = _free(items, _BASE)
            if i >= 0:
                return items[i]
        a = np.empty(shape, dtype)
        if self.nbytes + a.nbytes > self.limit:
            self._evict(self.nbytes + a.nbytes - self.limit)
        if self.nbytes + a.nbytes <= self.limit:
            self.arrays.setdefault(key, []).append(a)
            self.nbytes += a.nbytes
        return a

    def _evict(self, need):
        """Drop dead arrays, least recently used keys first, until ``need`` bytes are freed."""
        for key in list(self.arrays):
            items = self.arrays[key]
            while need > 0:
                i = _free(items, _BASE)
                if i < 0:
                    break
                nbytes = items.pop(i).nbytes
                self.nbytes -= nbytes
                need -= nbytes
            if not items:
                del self.arrays[key]
            if need <= 0:
                return


def _pool() -> _Pool:
    pool = getattr(_local, "pool", None)
    if pool is None:
        pool = _local.pool = _Pool(LIMIT_BYTES)
    return pool


def empty(shape, dtype=np.float32) -> np.ndarray:
    """An uninitialized C-contiguous array of ``shape`` and ``dtype``, recycled when possible."""
    shape = (int(shape),) if isinstance(shape, (int, np.integer)) else tuple(map(int, shape))
    dtype = np.dtype(dtype)
    nbytes = dtype.itemsize
    for s in shape:  # (np.prod costs microseconds: this runs for every op, small ones too)
        nbytes *= s
    if nbytes < MIN_BYTES:  # small, or a negative size that np.empty refuses
        return np.empty(shape, dtype)
    return _pool().get(shape, dtype)


def empty_like(a: np.ndarray, dtype=None) -> np.ndarray:
    """``empty(a.shape, dtype or a.dtype)`` (always C-contiguous, whatever ``a``'s layout)."""
    return empty(a.shape, a.dtype if dtype is None else dtype)


def pooled_bytes() -> int:
    """The bytes this thread's pool holds (arrays in use included)."""
    return _pool().nbytes


def clear() -> None:
    """Drop this thread's pool (arrays still in use stay valid; they are just no longer recycled)."""
    _local.pool = _Pool(_pool().limit)


@contextlib.contextmanager
def limit(nbytes: int):
    """Bound this thread's pool to ``nbytes`` inside the block (0: no recycling); restored after."""
    pool = _pool()
    previous = pool.limit
    pool.limit = int(nbytes)
    if pool.nbytes > pool.limit:
        pool._evict(pool.nbytes - pool.limit)
    try:
        yield
    finally:
        pool.limit = previous
