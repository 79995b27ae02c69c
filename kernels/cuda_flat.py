"""Many arrays to one flat array and back, in one kernel launch each: CUDA C (launched by CuPy:
``bitnet.gpu.raw_kernels``) and the same two in NumPy (the emulation's), for the optimizers' update
over their parameters concatenated (``bitnet.optim.flat``).

For arrays a_0 .. a_(n-1), C-contiguous, of one type T (macro FL_T), with offsets o_0 = 0,
o_(k+1) = o_k + size(a_k) and total = o_n, given as a table of their device addresses::

    flat_gather    flat[e] = a_k[e - o_k]      for o_k <= e < o_(k+1)   (one thread per element e)
    flat_scatter   a_k[e - o_k] = flat[e]

Each thread finds its k by a binary search in the offsets. No shared memory, no barriers:
tests/gpu_training/test_cuda_c_sources.py runs the source on the CPU, thread by thread (with host
addresses in the table), against the NumPy versions below.
"""
from __future__ import annotations

import numpy as np

SOURCE = r"""
__device__ int flat_owner(const long long* offsets, int count, long long e) {
    int lo = 0, hi = count - 1;            /* the last k with offsets[k] <= e */
    while (lo < hi) {
        int mid = (lo + hi + 1) / 2;
        if (offsets[mid] <= e) lo = mid; else hi = mid - 1;
    }
    return lo;
}

extern "C" __global__ void flat_gather(const unsigned long long* table, const long long* offsets, int count,
                                       long long total, FL_T* flat) {
    long long e = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (e >= total) return;
    int k = flat_owner(offsets, count, e);
    flat[e] = ((const FL_T*)table[k])[e - offsets[k]];
}

extern "C" __global__ void flat_scatter(const FL_T* flat, const unsigned long long* table, const long long* offsets,
                                        int count, long long total) {
    long long e = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (e >= total) return;
    int k = flat_owner(offsets, count, e);
    ((FL_T*)table[k])[e - offsets[k]] = flat[e];
}
"""

SIGNATURES = {
    "flat_gather": ("table", "ptr", "i32", "i64", "ptr"),
    "flat_scatter": ("ptr", "table", "ptr", "i32", "i64"),
}

THREADS = 256


def flat_gather(arrays, offsets, count, total, flat):
    for k, a in enumerate(arrays):
        flat[offsets[k]:offsets[k] + a.size] = a.reshape(-1)


def flat_scatter(flat, arrays, offsets, count, total):
    for k, a in enumerate(arrays):
        a.reshape(-1)[...] = flat[offsets[k]:offsets[k] + a.size]


NUMPY = {"flat_gather": flat_gather, "flat_scatter": flat_scatter}


def offsets_of(sizes) -> np.ndarray:
    """o_0 .. o_(n-1) (int64) for arrays of these sizes."""
    return np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64) if len(sizes) else np.zeros(0, np.int64)
