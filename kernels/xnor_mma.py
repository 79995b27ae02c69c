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

A block (``Tile``) of ``warps_m x warps_n`` warps computes a ``bm x bn`` output tile; each warp
``fm x fn`` MMA tiles of 16 x 8 (``4 fm fn`` int32 accumulators per lane, in registers). The
default ``TILES["64x64"]``: 4 warps of 32 rows x 32 filters; ``"128x128"`` (8 warps of 64 x 32) is
chosen where the problem has at least ``BLOCKS_PER_SM`` such tiles per SM, and ``tile=`` picks any (the
benchmark's sweep, ``bitnet.bench.mma_tiles``). K is walked ``bkw`` words (512 bits: two MMA
steps) at a time through shared memory, software pipelined: the words of the next stage are
fetched into registers before the MMAs of the current one, and stored after them. Shared memory
holds a stage as 32-bit words in fragment order (``bmma.a_home`` / ``b_home``): a lane's four A
registers of an MMA step are adjacent (one 128-bit load), its two B registers too (one 64-bit
load). Rows and filters past the matrix, and words past K, load as 0 (AND with 0 adds nothing).
After the K loop the accumulators pass through shared memory to one
thread per output (consecutive threads on consecutive filters), where the epilogue runs.

``xnor_conv`` is the implicit GEMM: the A tile loader reads the packed channels-last input
``(N, H, W, G, CWg)`` at the words the bit im2col would copy (``bit_scalar.tap_word_index``'s map,
with the pad word for taps in the padding), so a binary convolution is one launch with no im2col
buffer. Each loading thread decodes its rows' pixels once and carries its K position's tap and
channel word from stage to stage, so the K loop has no integer division.

``emulate=True`` swaps the MMA for ``bmma.mma_and_popc_emulated`` (shared memory, any GPU and
Numba's simulator): the tests run every other line of these kernels that way without a GPU.
"""
from __future__ import annotations

import functools
from typing import NamedTuple

import numpy as np
from numba import config, cuda, int32, int64, uint32, uint64

from bitnet.kernels.bit_scalar import xnor_dot
from bitnet.kernels.bmma import a_home, b_home, c_slot, mma_and_popc, mma_and_popc_emulated
from bitnet.kernels.cuda_launch import stream
from bitnet.kernels.xnor_cuda import _check, epilogue_operands, store_output
from bitnet.kernels.xnor_epilogue import BITS


class Tile(NamedTuple):
    """A block's shape: ``warps_m x warps_n`` warps, each ``fm x fn`` MMA tiles of 16 x 8, K staged
    ``bkw`` uint64 words at a time (a multiple of 4: whole 256-bit MMA steps)."""
    warps_m: int
    warps_n: int
    fm: int
    fn: int
    bkw: int

    @property
    def bm(self):
        return self.warps_m * self.fm * 16

    @property
    def bn(self):
        return self.warps_n * self.fn * 8

    @property
    def threads(self):
        return 32 * self.warps_m * self.warps_n

    def check(self):
        t = self.threads
        if (self.bkw % 4 or self.bn % 64 or t % self.bkw or (self.bm * self.bkw) % t or (self.bn * self.bkw) % t
                or min(self) < 1 or t > 1024):
            raise ValueError(f"xnor_mma: unusable tile {self}: needs bkw a multiple of 4, 64 | bn ({self.bn}), "
                             f"bkw | threads ({t}) and threads | bm * bkw, bn * bkw")
        return self


TILES = {  # name: shape; "64x64" for small problems, "128x128" where there are enough blocks to fill the GPU
    "64x64": Tile(2, 2, 2, 4, 8),
    "128x64": Tile(2, 2, 4, 4, 8),
    "128x128": Tile(2, 4, 4, 4, 8),
}
BLOCKS_PER_SM = 4        # 128 x 128 blocks per SM from which the big tile is chosen
MAX_GRID_Y = 65535

_KERNELS = {}


def _kernel(emulate: bool, tile: Tile = TILES["64x64"], conv: bool = False):
    """The kernel for ``tile``, with the MMA (``emulate=False``) or its shared-memory emulation, for
    rows (``conv`` False) or a convolution's packed input (True)."""
    key = (bool(emulate), tile.check(), bool(conv))
    if key in _KERNELS:
        return _KERNELS[key]
    mma = mma_and_popc_emulated if emulate else mma_and_popc
    WARPS_M, WARPS_N, FM, FN, BKW = tile
    BM, BN, THREADS = tile.bm, tile.bn, tile.threads
    STEPS = BKW // 4            # 256-bit MMA steps per stage
    A_LOADS, B_LOADS = BM * BKW // THREADS, BN * BKW // THREADS   # words each thread loads per stage
    ROW_STEP = THREADS // BKW
    CONV = bool(conv)
    SIGN_WORDS = BN // 64       # words of output signs per row of the block
    SIGNS = BM * SIGN_WORDS
    SLAB_ROWS = FM * 16         # rows of one row of warps
    SLAB = SLAB_ROWS * BN       # their accumulators
    B_OFF = BM * BKW * 2        # where the B stage starts in shared memory (32-bit words)
    SMEM = max((BM + BN) * BKW * 2, SLAB)
    scratch_shape = (WARPS_M * WARPS_N, 32, 6) if emulate else (1, 1, 1)

    def kernel(a, m_rows, g, H, W, G, CWg, KW, sh, sw, ph, pw, dh, dw, OH, OW, padword,
               b, k_true, flags, corr, period, scale, shift, res, out_i, out_f, col0, bits):
        """``a``: flat rows ``(m_rows * kw,)``, or the flat packed input (``CONV``)."""
        smem = cuda.shared.array(SMEM, dtype=uint32)   # the A and B stages, then the accumulators
        pop_a = cuda.shared.array(BM, dtype=int32)
        pop_b = cuda.shared.array(BN, dtype=int32)
        sbits = cuda.shared.array(SIGNS, dtype=uint64)
        scratch = cuda.shared.array(scratch_shape, dtype=uint32)
        n_cols, kw = b.shape
        tid = cuda.threadIdx.x
        warp, lane = tid // 32, tid % 32
        wr, wc = (warp // WARPS_N) * (FM * 16), (warp % WARPS_N) * (FN * 8)  # the warp's tile in the block's
        row0, col_0 = cuda.blockIdx.y * BM, cuda.blockIdx.x * BN
        for e in range(tid, BM, THREADS):
            pop_a[e] = 0
        for e in range(tid, SIGNS, THREADS):
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
        # thread tid loads word kk of rows rbase + ROW_STEP i at every stage (THREADS % BKW == 0);
        # for a convolution, each row's pixel is decoded once here, and the tap and channel word of
        # K position k0 + kk are carried from stage to stage (no division in the K loop): the
        # index is tap_word_index's, written incrementally
        kk, rbase = tid % BKW, tid // BKW
        rorg = cuda.local.array(A_LOADS, dtype=int64)   # word index of the row's tap (0, 0), channel word 0
        rih = cuda.local.array(A_LOADS, dtype=int64)
        riw = cuda.local.array(A_LOADS, dtype=int64)
        ti = tj = cw = int64(0)
        GC = G * CWg
        if CONV:
            for i in range(A_LOADS):
                p = row0 + rbase + ROW_STEP * i
                n = p // (OH * OW)
                rem = p - n * (OH * OW)
                oh = rem // OW
                rih[i] = oh * sh - ph
                riw[i] = (rem - oh * OW) * sw - pw
                rorg[i] = ((n * H + rih[i]) * W + riw[i]) * GC + g * CWg
            tap = kk // CWg
            cw = kk - tap * CWg
            ti = tap // KW
            tj = tap - ti * KW
        # where this thread's words go in shared memory, in fragment order (a_home / b_home): the low
        # and high 32 bits of word kk are the chunk's 32-bit words 2 kk % 8 and 2 kk % 8 + 1
        ahome = cuda.local.array((A_LOADS, 2), dtype=uint32)
        bhome = cuda.local.array((B_LOADS, 2), dtype=uint32)
        for h in range(2):
            step, word = (2 * kk + h) // 8, (2 * kk + h) % 8
            for i in range(A_LOADS):
                r = rbase + ROW_STEP * i
                hl, hr = a_home(r % 16, word)
                ahome[i, h] = uint32((((r // 16) * STEPS + step) * 32 + hl) * 4 + hr)
            for i in range(B_LOADS):
                r = rbase + ROW_STEP * i
                hl, hr = b_home(r % 8, word)
                bhome[i, h] = uint32(B_OFF + (((r // 8) * STEPS + step) * 32 + hl) * 2 + hr)
        # software pipelined: each iteration fetches the next stage into registers (wa, wb), runs
        # the MMAs of the stage in shared memory while those loads are in flight, then stores them
        wa = cuda.local.array(A_LOADS, dtype=uint64)
        wb = cuda.local.array(B_LOADS, dtype=uint64)
        for k0 in range(-BKW, kw, BKW):
            nk = k0 + BKW                # the stage fetched now (computed by the next iteration)
            gk = nk + kk
            dih, diw = ti * dh, tj * dw
            toff = (dih * W + diw) * GC + cw   # the tap's offset from a row's origin
            for i in range(A_LOADS):
                gr = row0 + rbase + ROW_STEP * i
                w = uint64(0)
                if gr < m_rows and gk < kw:
                    if CONV:
                        ih, iw = rih[i] + dih, riw[i] + diw
                        if uint64(ih) < uint64(H) and uint64(iw) < uint64(W):   # (negative: huge unsigned)
                            w = a[uint64(rorg[i] + toff)]   # (unsigned indices: no wraparound code)
                        else:
                            w = padword[uint64(cw)]
                    else:
                        w = a[uint64(gr * kw + gk)]
                wa[i] = w
            for i in range(B_LOADS):
                gr = col_0 + rbase + ROW_STEP * i
                wb[i] = b[uint64(gr), uint64(gk)] if gr < n_cols and gk < kw else uint64(0)
            if CONV:  # the next stage's K position: BKW words further
                cw += BKW
                while cw >= CWg:
                    cw -= CWg
                    tj += 1
                    if tj == KW:
                        tj = 0
                        ti += 1
            if k0 >= 0:
                for step in range(STEPS):  # 4 uint64 words = one 256-bit MMA step
                    for i in range(FM):    # a lane's 4 A registers are adjacent (fragment order): one load
                        at = uint64((((wr // 16 + i) * STEPS + step) * 32 + lane) * 4)
                        for reg in range(4):
                            af[i, reg] = smem[at + uint64(reg)]
                    for j in range(FN):
                        at = uint64(B_OFF + (((wc // 8 + j) * STEPS + step) * 32 + lane) * 2)
                        for reg in range(2):
                            bf[j, reg] = smem[at + uint64(reg)]
                    for i in range(FM):
                        for j in range(FN):
                            d0, d1, d2, d3 = mma(scratch, warp, lane, acc[i, j, 0], acc[i, j, 1],
                                                 acc[i, j, 2], acc[i, j, 3], af[i, 0], af[i, 1], af[i, 2],
                                                 af[i, 3], bf[j, 0], bf[j, 1])
                            acc[i, j, 0] = d0
                            acc[i, j, 1] = d1
                            acc[i, j, 2] = d2
                            acc[i, j, 3] = d3
            cuda.syncthreads()
            if nk < kw:
                for i in range(A_LOADS):
                    pa[i] += cuda.popc(wa[i])
                    smem[ahome[i, 0]] = uint32(wa[i] & uint64(0xFFFFFFFF))
                    smem[ahome[i, 1]] = uint32(wa[i] >> uint64(32))
                for i in range(B_LOADS):
                    pb[i] += cuda.popc(wb[i])
                    smem[bhome[i, 0]] = uint32(wb[i] & uint64(0xFFFFFFFF))
                    smem[bhome[i, 1]] = uint32(wb[i] >> uint64(32))
            cuda.syncthreads()
        for i in range(A_LOADS):
            cuda.atomic.add(pop_a, rbase + ROW_STEP * i, pa[i])
        for i in range(B_LOADS):
            cuda.atomic.add(pop_b, rbase + ROW_STEP * i, pb[i])
        # the accumulators through shared memory (a short loop over constant indices, so they stay in
        # registers), one row of warps at a time, then one thread per output with consecutive threads
        # on consecutive filters (the K loop's last barrier has freed the stages' shared memory)
        for p in range(WARPS_M):
            if warp // WARPS_N == p:
                for i in range(FM):
                    for j in range(FN):
                        for reg in range(4):
                            r, c = c_slot(lane, reg)
                            smem[(16 * i + r) * BN + wc + 8 * j + c] = uint32(acc[i, j, reg])
            cuda.syncthreads()
            for e in range(tid, SLAB, THREADS):
                rh = e // BN
                cl = e - rh * BN
                rl = p * SLAB_ROWS + rh
                m, n = row0 + rl, col_0 + cl
                if m < m_rows and n < n_cols:
                    pc = pop_a[rl] + pop_b[cl] - 2 * int32(smem[e])
                    store_output(m, col0 + n, xnor_dot(int32(k_true), pc), flags, corr, period, scale, shift,
                                 res, out_i, out_f, sbits, rl * SIGN_WORDS + cl // 64, cl % 64)
            cuda.syncthreads()
        if flags & BITS:  # the block's filters are whole words of signs (col0 + col_0 is a multiple of 64)
            word0 = (col0 + col_0) // 64
            for e in range(tid, SIGNS, THREADS):
                rl = e // SIGN_WORDS
                word = word0 + e - rl * SIGN_WORDS
                if row0 + rl < m_rows and word < bits.shape[1]:
                    bits[row0 + rl, word] = sbits[e]

    _KERNELS[key] = (kernel, cuda.jit(kernel))
    return _KERNELS[key]


def default_emulate() -> bool:
    """Emulate the MMA where it cannot run: in Numba's CUDA simulator."""
    return bool(config.ENABLE_CUDASIM)


def xnor_gemm(a, b, k, out, corr=None, scale=None, shift=None, residual=None, col0=0, bits=None, emulate=None,
              tile=None):
    """``bitnet.kernels.xnor_cuda.xnor_gemm`` (same arguments and results) on the 1-bit MMA;
    ``tile``: a name of ``TILES`` or a ``Tile`` (default: ``choose_tile``)."""
    _check(a, np.uint64, 2, "xnor_mma.xnor_gemm: a")
    _check(b, np.uint64, 2, "xnor_mma.xnor_gemm: b")
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"xnor_mma.xnor_gemm: a {a.shape} and b {b.shape} need the same number of words per row")
    m = a.shape[0]
    flags, operands = epilogue_operands("xnor_mma.xnor_gemm", a, m, b, k, out, corr, scale, shift, residual, col0,
                                        bits)
    flat = a.reshape(a.size)
    no_geometry = (1,) * 14   # (a convolution's geometry: unused)
    _launch(flat, m, False, no_geometry, flat, b, k, flags, operands, emulate, tile)
    return out


def xnor_conv(x, g, kernel_size, stride, padding, dilation, padword, b, k, out, corr=None, scale=None, shift=None,
              residual=None, col0=0, bits=None, emulate=None, tile=None):
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
    geometry = (g, h, w, groups, cwg, kw, sh, sw, ph, pw, dh, dw, oh, ow)
    _launch(x.reshape(x.size), m, True, geometry, padword, b, k, flags, operands, emulate, tile)
    return out


def choose_tile(m: int, n: int, sm_count: int = 132) -> Tile:
    """``"128x128"`` where ``m x n`` outputs make at least ``BLOCKS_PER_SM`` such blocks per SM of
    the GPU (the larger tile reuses each loaded word for twice the MMAs and issues fewer
    instructions per MMA), else ``"64x64"`` (more blocks for small problems: a batch-1
    convolution has as few rows as pixels)."""
    big = TILES["128x128"]
    return big if (-(-m // big.bm)) * (-(-n // big.bn)) >= BLOCKS_PER_SM * sm_count else TILES["64x64"]


@functools.lru_cache(maxsize=None)
def _sm_count() -> int:
    """The current GPU's multiprocessors (132 in the simulator: an H100 / H200's)."""
    return 132 if config.ENABLE_CUDASIM else int(cuda.get_current_device().MULTIPROCESSOR_COUNT)


def _launch(a_flat, m, conv, geometry, padword, b, k, flags, operands, emulate, tile):
    if emulate is None:
        emulate = default_emulate()
    if tile is None:
        tile = choose_tile(m, b.shape[0], _sm_count())
    elif not isinstance(tile, Tile):
        if tile not in TILES:
            raise ValueError(f"xnor_mma: tile must be a Tile or one of {sorted(TILES)}, got {tile!r}")
        tile = TILES[tile]
    grid = (-(-b.shape[0] // tile.bn), -(-m // tile.bm))
    if grid[1] > MAX_GRID_Y:
        raise ValueError(f"xnor_mma: {m} rows need {grid[1]} row blocks, more than the grid's {MAX_GRID_Y}; "
                         "split the batch")
    kernel = _kernel(bool(emulate), tile, conv)[1]
    kernel[grid, tile.threads, stream()](a_flat, m, *geometry, padword, b, k, flags, *operands)
