"""The naive XNOR-popcount GEMM: one scalar popcount per word pair, no blocking (what BMXNet ran).
A baseline for ``bitnet bench gemm`` and a second, independent kernel for the tests.

    out[m, n] = k - 2 * sum_w popcount(a[m, w] XOR b[n, w])
"""
from __future__ import annotations

import numba as nb
import numpy as np
from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

from bitnet.kernels.atomics import claimed
from bitnet.kernels.bit_scalar import xnor_dot
from bitnet.kernels.threads import parallel


@intrinsic
def popcount64(typingctx, x):
    """Hardware popcount of a uint64 (LLVM ``ctpop``)."""
    sig = types.int64(types.uint64)

    def codegen(context, builder, signature, args):
        i64 = ir.IntType(64)
        fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(i64, [i64]), "llvm.ctpop.i64")
        return builder.call(fn, [args[0]])

    return sig, codegen


@nb.njit(boundscheck=False, nogil=True, cache=True)
def _naive(a, b, k, out, counter, chunk):
    m_rows, nw = a.shape
    for n in claimed(counter, chunk, b.shape[0]):
        for m in range(m_rows):
            s = 0
            for w in range(nw):
                s += popcount64(a[m, w] ^ b[n, w])
            out[m, n] = xnor_dot(k, s)


def xnor_gemm_naive(a_words: np.ndarray, b_words: np.ndarray, k: int) -> np.ndarray:
    """``(M, W) x (N, W) -> (M, N)`` int32 dot products, one popcount at a time."""
    a, b = np.ascontiguousarray(a_words, np.uint64), np.ascontiguousarray(b_words, np.uint64)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1]:
        raise ValueError(f"xnor_gemm_naive: operands (M, W) and (N, W) needed, got {a.shape} and {b.shape}")
    out = np.empty((a.shape[0], b.shape[0]), np.int32)
    parallel(_naive, b.shape[0], a, b, k, out, cost=a.shape[0] * a.shape[1])
    return out
