"""Flat index to coordinates for bitnet's CUDA C kernels, in 32-bit arithmetic where it fits.

A kernel with one thread per element of a row-major (A, B, C) array recovers (a, b, c) from its flat
index i by two divisions: q = i / C, c = i - q C, a = q / B, b = q - a B. A GPU divides 32-bit
unsigned integers several times faster than 64-bit ones (those are a long software routine), so
``split3`` divides in ``unsigned int`` when the array's size ``total`` is at most ``IDX32_LIMIT``
(2^32 - 1 unless the includer defines it: the C-source tests define -1 to run the 64-bit path),
else in ``long long``; the results are the same. B and C must be >= 1. ``split2`` is the same for
(A, C) arrays. Prepended to the source of
the kernel modules that use it (``SOURCE = cuda_index.SOURCE + ...``).
"""
from __future__ import annotations

SOURCE = r"""
#ifndef IDX32_LIMIT
#define IDX32_LIMIT 4294967295LL
#endif

__device__ inline void split3(long long i, long long total, long long nb, long long nc, long long* a, long long* b,
                              long long* c) {
    if (total <= IDX32_LIMIT) {
        unsigned int u = (unsigned int)i, ub = (unsigned int)nb, uc = (unsigned int)nc;
        unsigned int q = u / uc, qa = q / ub;
        *c = (long long)(u - q * uc);
        *a = (long long)qa;
        *b = (long long)(q - qa * ub);
    } else {
        long long q = i / nc, qa = q / nb;
        *c = i - q * nc;
        *a = qa;
        *b = q - qa * nb;
    }
}

__device__ inline void split2(long long i, long long total, long long nc, long long* a, long long* c) {
    if (total <= IDX32_LIMIT) {                     /* i = a C + c, as split3 */
        unsigned int u = (unsigned int)i, uc = (unsigned int)nc, q = u / uc;
        *a = (long long)q;
        *c = (long long)(u - q * uc);
    } else {
        long long q = i / nc;
        *a = q;
        *c = i - q * nc;
    }
}
"""
