"""The binary GEMM and the implicit-GEMM binary convolution on the 1-bit tensor cores (compute
capability 8.0 and newer; ``bitnet.kernels.bmma`` holds the MMA and its fragment layout). Same
inputs, outputs and epilogue as ``bitnet.kernels.xnor_cuda.xnor_gemm`` (dots, or
``scale * dot + shift (+ residual)`` with the packed signs), bit-identical to it and to the CPU.

For rows ``a`` and filter rows ``b`` (packed, bit 1 = -1) of ``K`` bits::

    and[m, n] = sum over 256-bit chunks of popc(a[m] AND b[n])          (the MMAs)
    pc[m, n]  = popc(a[m]) + popc(b[n]) - 2 and[m, n]                  (= popc(a[m] XOR b[n]))
    dot[m, n] = K - 2 pc[m, n]

The row popcounts ``popc(a[m])`` and ``popc(b[n])`` are summed by the threads that load the words
into shared memory (one popcount per 64 loaded bits), so neither operand needs a pass of its own.

A block of 4 warps (2 x 2) computes a 64 x 64 output tile; each warp 32 rows x 32 filters as 2 x 4
MMA tiles of 16 x 8 (32 int32 accumulators per lane, in registers). K is walked ``BKW`` words
(512 bits, two MMA steps) at a time through shared memory, stored as 32-bit words with rows
``STRIDE`` words apart: the 8 rows x 4 words one fragment load touches then fall in 32 different
banks. Rows and filters past the matrix, and words past K, load as 0 (AND with 0 adds nothing).

``xnor_conv`` is the implicit GEMM: the A tile loader reads the packed channels-last input
``(N, H, W, G, CWg)`` through ``tap_word_index`` (the bit im2col's own index map, with the pad
word for taps in the padding), so a binary convolution is one launch with no im2col buffer.

``emulate=True`` swaps the MMA for ``bmma.mma_and_popc_emulated`` (shared memory, any GPU and
Numba's simulator): the tests run every other line of these kernels that way without a GPU.
"""
from __future__ import annotations

import numpy as np
from numba import config, cuda, int32, uint32, uint64

from bitnet.kernels.bit_scalar import tap_word_index, xnor_dot
from bitnet.kernels.bmma import a_slot, b_slot, c_slot, mma_and_popc, mma_and_popc_emulated
from bitnet.kernels.xnor_cuda import _check, epilogue_operands, store_output
from bitnet.kernels.xnor_epilogue import BITS

WARPS_M, WARPS_N = 2, 2     # warps of a block along rows / filters
FM, FN = 2, 4               # MMA tiles (16 x 8) per warp along rows / filters
BM, BN = WARPS_M * FM * 16, WARPS_N * FN * 8    # the block's output tile: 64 x 64
THREADS = 32 * WARPS_M * WARPS_N
BKW = 8                     # uint64 words of K per shared-memory stage (2 MMA steps of 256 bits)
STRIDE = 2 * BKW + 4        # 32-bit words per shared row (+4: conflict-free fragment loads)
A_LOADS, B_LOADS = BM * BKW // THREADS, BN * BKW // THREADS   # words each thread loads per stage
MAX_GRID_Y = 65535
assert BN == 64 and THREADS % BKW == 0 and A_LOADS * THREADS == BM * BKW and B_LOADS * THREADS == BN * BKW

_KERNELS = {}


def _kernel(emulate: bool):
    """The kernel, with the MMA (``emulate=False``) or its shared-memory emulation."""
    if emulate in _KERNELS:
        return _KERNELS[emulate]
    mma = mma_and_popc_emulated if emulate else mma_and_popc
    scratch_shape = (WARPS_M * WARPS_N, 32, 6) if emulate else (1, 1, 1)

    def kernel(a, m_rows, conv, g, H, W, G, CWg, KW, sh, sw, ph, pw, dh, dw, OH, OW, padword,
               b, k_true, flags, corr, period, scale, shift, res, out_i, out_f, col0, bits):
        """``a``: flat rows ``(m_rows * kw,)`` (``conv`` 0) or the flat packed input (``conv`` 1)."""
        sa = cuda.shared.array((BM, STRIDE), dtype=uint32)
        sb = cuda.shared.array((BN, STRIDE), dtype=uint32)
        pop_a = cuda.shared.array(BM, dtype=int32)
        pop_b = cuda.shared.array(BN, dtype=int32)
        sbits = cuda.shared.array(BM, dtype=uint64)
        scratch = cuda.shared.array(scratch_shape, dtype=uint32)
        sacc = cuda.shared.array((BM, BN), dtype=int32)
        n_cols, kw = b.shape
        tid = cuda.threadIdx.x
        warp, lane = tid // 32, tid % 32
        wr, wc = (warp // WARPS_N) * (FM * 16), (warp % WARPS_N) * (FN * 8)  # the warp's tile in the block's
        row0, col_0 = cuda.blockIdx.y * BM, cuda.blockIdx.x * BN
        for e in range(tid, BM, THREADS):
            pop_a[e] = 0
            sbits[e] = uint64(0)
        for e in range(tid, BN, THREADS):
            pop_b[e] = 0
        acc = cuda.local.array((FM, FN, 4), dtype=int32)
        for i in range(FM):
            for j in range(FN):
                for r in range(4):
                    acc[i, j, r] = 0
        pa = cuda.local.array(A_LOADS, dtype=int32)
        pb = cuda.local.array(B_LOADS, dtype=int32)
        for i in range(A_LOADS):
            pa[i] = 0
        for i in range(B_LOADS):
            pb[i] = 0
        af = cuda.local.array((FM, 4), dtype=uint32)
        bf = cuda.local.array((FN, 2), dtype=uint32)
        for k0 in range(0, kw, BKW):
            # stage: thread tid always loads word tid % BKW of rows tid // BKW + (THREADS // BKW) i
            for i in range(A_LOADS):
                e = tid + THREADS * i
                r = e // BKW
                kk = e - r * BKW
                gr, gk = row0 + r, k0 + kk
                w = uint64(0)
                if gr < m_rows and gk < kw:
                    if conv:
                        src = tap_word_index(gr, gk, g, H, W, G, CWg, KW, sh, sw, ph, pw, dh, dw, OH, OW)
                        w = padword[gk % CWg] if src < 0 else a[src]
                    else:
                        w = a[gr * kw + gk]
                pa[i] += cuda.popc(w)
                sa[r, 2 * kk] = uint32(w & uint64(0xFFFFFFFF))
                sa[r, 2 * kk + 1] = uint32(w >> uint64(32))
            for i in range(B_LOADS):
                e = tid + THREADS * i
                r = e // BKW
                kk = e - r * BKW
                gr, gk = col_0 + r, k0 + kk
                w = b[gr, gk] if gr < n_cols and gk < kw else uint64(0)
                pb[i] += cuda.popc(w)
                sb[r, 2 * kk] = uint32(w & uint64(0xFFFFFFFF))
                sb[r, 2 * kk + 1] = uint32(w >> uint64(32))
            cuda.syncthreads()
            for step in range(BKW // 4):  # 4 uint64 words = one 256-bit MMA step
                base = 8 * step
                for i in range(FM):
                    for reg in range(4):
                        r, wd = a_slot(lane, reg)
                        af[i, reg] = sa[wr + 16 * i + r, base + wd]
                for j in range(FN):
                    for reg in range(2):
                        c, wd = b_slot(lane, reg)
                        bf[j, reg] = sb[wc + 8 * j + c, base + wd]
                for i in range(FM):
                    for j in range(FN):
                        d0, d1, d2, d3 = mma(scratch, warp, lane, acc[i, j, 0], acc[i, j, 1], acc[i, j, 2],
                                             acc[i, j, 3], af[i, 0], af[i, 1], af[i, 2], af[i, 3], bf[j, 0], bf[j, 1])
                        acc[i, j, 0] = d0
                        acc[i, j, 1] = d1
                        acc[i, j, 2] = d2
                        acc[i, j, 3] = d3
            cuda.syncthreads()
        for i in range(A_LOADS):
            cuda.atomic.add(pop_a, (tid + THREADS * i) // BKW, pa[i])
        for i in range(B_LOADS):
            cuda.atomic.add(pop_b, (tid + THREADS * i) // BKW, pb[i])
        # the accumulators through shared memory (a short loop over constant indices, so they stay
        # in registers), then one thread per output with consecutive threads on consecutive filters
        for i in range(FM):
            for j in range(FN):
                for reg in range(4):
                    r, c = c_slot(lane, reg)
                    sacc[wr + 16 * i + r, wc + 8 * j + c] = acc[i, j, reg]
        cuda.syncthreads()
        for e in range(tid, BM * BN, THREADS):
            rl = e // BN
            cl = e - rl * BN
            m, n = row0 + rl, col_0 + cl
            if m < m_rows and n < n_cols:
                pc = pop_a[rl] + pop_b[cl] - 2 * sacc[rl, cl]
                store_output(m, col0 + n, xnor_dot(int32(k_true), pc), flags, corr, period, scale, shift,
                             res, out_i, out_f, sbits, rl, cl)
        if flags & BITS:  # the block's 64 filters are one whole word of signs (col0 + col_0 is a multiple of 64)
            cuda.syncthreads()
            word = (col0 + col_0) // 64
            for e in range(tid, BM, THREADS):
                if row0 + e < m_rows:
                    bits[row0 + e, word] = sbits[e]

    _KERNELS[emulate] = (kernel, cuda.jit(kernel))
    return _KERNELS[emulate]


def default_emulate() -> bool:
    """Emulate the MMA where it cannot run: in Numba's CUDA simulator."""
    return bool(config.ENABLE_CUDASIM)


def xnor_gemm(a, b, k, out, corr=None, scale=None, shift=None, residual=None, col0=0, bits=None, emulate=None):
    """``bitnet.kernels.xnor_cuda.xnor_gemm`` (same arguments and results) on the 1-bit MMA."""
    _check(a, np.uint64, 2, "xnor_mma.xnor_gemm: a")
    _check(b, np.uint64, 2, "xnor_mma.xnor_gemm: b")
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"xnor_mma.xnor_gemm: a {a.shape} and b {b.shape} need the same number of words per row")
    m = a.shape[0]
    flags, operands = epilogue_operands("xnor_mma.xnor_gemm", a, m, b, k, out, corr, scale, shift, residual, col0,
                                        bits)
    flat = a.reshape(a.size)
    _launch(flat, m, (0,) + (1,) * 14, flat, b, k, flags, operands, emulate)  # (no convolution: its geometry unused)
    return out


def xnor_conv(x, g, kernel_size, stride, padding, dilation, padword, b, k, out, corr=None, scale=None, shift=None,
              residual=None, col0=0, bits=None, emulate=None):
    """Group ``g`` of a binary convolution in one launch: the packed input ``x`` ``(N, H, W, G,
    CWg)``, filter rows ``b`` ``(Mg, KH * KW * CWg)`` (``bitnet.kernels.xnor_conv.unpanel_words``),
    ``padword`` ``(CWg,)`` for taps in the padding; ``out`` ``(N * OH * OW, >= col0 + Mg)`` as
    ``xnor_gemm``'s, for the rows ``im2col_bits`` would have built."""
    _check(x, np.uint64, 5, "xnor_conv: x")
    _check(b, np.uint64, 2, "xnor_conv: b")
    n, h, w, groups, cwg = x.shape
    (kh, kw), (sh, sw), (ph, pw), (dh, dw) = kernel_size, stride, padding, dilation
    if not 0 <= g < groups:
        raise ValueError(f"xnor_conv: group {g} out of range for an input of {groups} groups")
    if b.shape[1] != kh * kw * cwg:
        raise ValueError(f"xnor_conv: filter rows must have {kh * kw * cwg} words ({kh}x{kw} taps x {cwg}), "
                         f"got {b.shape}")
    oh = (h + 2 * ph - dh * (kh - 1) - 1) // sh + 1
    ow = (w + 2 * pw - dw * (kw - 1) - 1) // sw + 1
    if oh < 1 or ow < 1:
        raise ValueError(f"xnor_conv: a {h}x{w} input is smaller than the {kh}x{kw} kernel (dilation {dilation}, "
                         f"padding {padding})")
    m = n * oh * ow
    flags, operands = epilogue_operands("xnor_conv", x, m, b, k, out, corr, scale, shift, residual, col0, bits)
    geometry = (1, g, h, w, groups, cwg, kw, sh, sw, ph, pw, dh, dw, oh, ow)
    _launch(x.reshape(x.size), m, geometry, padword, b, k, flags, operands, emulate)
    return out


def _launch(a_flat, m, geometry, padword, b, k, flags, operands, emulate):
    if emulate is None:
        emulate = default_emulate()
    grid = (-(-b.shape[0] // BN), -(-m // BM))
    if grid[1] > MAX_GRID_Y:
        raise ValueError(f"xnor_mma: {m} rows need {grid[1]} row blocks, more than the grid's {MAX_GRID_Y}; "
                         "split the batch")
    _kernel(bool(emulate))[1][grid, THREADS](a_flat, m, *geometry, padword, b, k, flags, *operands)
