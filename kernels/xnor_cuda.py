"""The packed binary kernels on NVIDIA GPUs (numba.cuda): fused binarize-and-pack, bit im2col, and
the tiled XNOR-popcount GEMM with the CPU path's epilogue. Same bit convention as every CPU kernel
(``bitnet.kernels.bits``; the scalar helpers are the ones of ``bitnet.kernels.bit_scalar``, compiled
for the GPU). Importing this module imports ``numba.cuda``: only the CUDA backend does
(``bitnet.backend``). All arrays are numba device arrays; every wrapper takes a caller-allocated
``out`` and returns it.

- ``pack_rows(x, out)``: float32 ``(R, K)`` -> uint64 ``(R, words_for(K))``, bit = ``x < 0``;
- ``pack_nchw(x, groups, out)``: float32 ``(N, C, H, W)`` -> ``(N, H, W, G, words_for(C / G))``;
- ``im2col_bits(x, g, ...)``: packed ``(N, H, W, G, CWg)`` -> rows ``(N * OH * OW, KH * KW * CWg)``
  of group ``g`` (word ``(i * KW + j) * CWg + cw`` of a row: tap (i, j), channel word cw; taps in
  the padding read ``padword[cw]``);
- ``xnor_gemm(a, b, k, out, ...)``: for rows ``a`` ``(M, KW)`` and filter rows ``b`` ``(N, KW)``::

      dot[m, n] = k - 2 * sum_w popcount(a[m, w] XOR b[n, w])      (- corr[m % period, col0 + n])
      DOTS:     out[m, col0 + n] = dot                                      int32
      AFFINE:   out[m, col0 + n] = scale[c] * float32(dot) + shift[c]  (+ res[m, c])   float32, c = col0 + n
      BITS:     bits[m, c // 64] bit c % 64 = (out[m, c] < 0)          the next binary layer's input

  with the product rounded to float32 before the addition (``fmul_rn``: no fused multiply-add), so
  the result is bit-identical to the CPU epilogue (``bitnet.kernels.xnor_epilogue``).

The GEMM: a block of 16 x 16 threads computes a tile of ``16 * RT`` rows x ``16 * CT`` filters; each
thread a ``RT x CT`` register tile (rows ``ty + 16 i``, filters ``tx + 16 j``). The K axis is walked
``TILE_K`` words at a time through shared memory (both operands, zero words beyond the matrix:
0 XOR 0 adds nothing). Per word pair: one XOR and one ``popc.b64``. With BITS a block covers 64
filters (or all of them, when 32 or fewer): each row's signs are OR-ed into one shared-memory word
(shared atomics), then stored whole.
"""
from __future__ import annotations

import numba as nb
import numpy as np
from numba import config, cuda, float32, int32, uint64

from bitnet.kernels.bit_scalar import sign_bit, tap_word_index, xnor_dot
from bitnet.kernels.cuda_float import mul_rn as _mul_rn
from bitnet.kernels.cuda_launch import stream
from bitnet.kernels.xnor_epilogue import AFFINE, BITS, CORR, RESIDUAL

TILE_K = 8          # words of K per shared-memory step
THREADS = 16        # a block is THREADS x THREADS threads
BLOCK_1D = 256      # threads per block of the element-wise kernels



# -- binarize and pack --------------------------------------------------------------------------

@cuda.jit
def _pack_rows_kernel(x, out):
    """One thread per output word: ``out[r, w] = sum_b sign_bit(x[r, 64 w + b]) << b``."""
    rows, k = x.shape
    nw = out.shape[1]
    start, step = cuda.grid(1), cuda.gridsize(1)
    for idx in range(start, rows * nw, step):
        r = idx // nw
        w = idx - r * nw
        base = w * 64
        bits = k - base if k - base < 64 else 64  # (builtin min would compile a device function)
        v = uint64(0)
        for b in range(bits):
            v |= sign_bit(x[r, base + b]) << uint64(b)
        out[r, w] = v


@cuda.jit
def _pack_nchw_kernel(x, groups, out):
    """One thread per output word ``out[n, h, w, g, cw]``: the signs of channels
    ``g * C / G + 64 cw + b``; neighbouring threads read neighbouring pixels (coalesced)."""
    n_img, c, h, w = x.shape
    cg = c // groups
    cwg = out.shape[4]
    hw = h * w
    total = n_img * hw * groups * cwg
    start, step = cuda.grid(1), cuda.gridsize(1)
    for idx in range(start, total, step):
        # idx = ((gc * N + n) * HW + pix): pixels fastest, so a warp reads 32 consecutive floats
        pix = idx % hw
        rest = idx // hw
        n = rest % n_img
        gc = rest // n_img
        g = gc // cwg
        cw = gc - g * cwg
        y = pix // w
        xx = pix - y * w
        c0 = g * cg + cw * 64
        bits = cg - cw * 64 if cg - cw * 64 < 64 else 64
        v = uint64(0)
        for b in range(bits):
            v |= sign_bit(x[n, c0 + b, y, xx]) << uint64(b)
        out[n, y, xx, g, cw] = v


def pack_rows(x, out):
    """Binarize-and-pack the rows of a float32 device array ``(R, K)`` into ``out`` ``(R, ceil(K / 64))``."""
    _check(x, np.float32, 2, "pack_rows: x")
    _check(out, np.uint64, 2, "pack_rows: out")
    if out.shape != (x.shape[0], -(-x.shape[1] // 64)):
        raise ValueError(f"pack_rows: out must be ({x.shape[0]}, {-(-x.shape[1] // 64)}) for x {x.shape}, got {out.shape}")
    _pack_rows_kernel[_grid1(out.size), BLOCK_1D, stream()](x, out)
    return out


def pack_nchw(x, groups, out):
    """Binarize-and-pack an NCHW float32 device array into channels-last words ``out`` ``(N, H, W, G, CWg)``."""
    _check(x, np.float32, 4, "pack_nchw: x")
    n, c, h, w = x.shape
    if groups < 1 or c % groups:
        raise ValueError(f"pack_nchw: {c} channels do not split into {groups} groups")
    want = (n, h, w, groups, -(-(c // groups) // 64))
    _check(out, np.uint64, 5, "pack_nchw: out")
    if out.shape != want:
        raise ValueError(f"pack_nchw: out must be {want}, got {out.shape}")
    _pack_nchw_kernel[_grid1(out.size), BLOCK_1D, stream()](x, groups, out)
    return out


# -- bit im2col ---------------------------------------------------------------------------------

@cuda.jit
def _im2col_bits_kernel(x, g, H, W, G, CWg, KW, sh, sw, ph, pw, dh, dw, OH, OW, padword, out):
    """One thread per row word: ``out[p, t]`` = the input word ``tap_word_index`` names, or the
    pad word. ``x`` is the flat packed input."""
    rows, kwords = out.shape
    start, step = cuda.grid(1), cuda.gridsize(1)
    for idx in range(start, rows * kwords, step):
        p = idx // kwords
        t = idx - p * kwords
        src = tap_word_index(p, t, g, H, W, G, CWg, KW, sh, sw, ph, pw, dh, dw, OH, OW)
        out[p, t] = padword[t % CWg] if src < 0 else x[src]


def im2col_bits(x, g, kernel_size, stride, padding, dilation, padword, out):
    """Rows of group ``g`` of the packed input ``x`` ``(N, H, W, G, CWg)``; ``out``
    ``(N * OH * OW, KH * KW * CWg)`` uint64; ``padword`` ``(CWg,)`` uint64 (device)."""
    _check(x, np.uint64, 5, "im2col_bits: x")
    n, h, w, groups, cwg = x.shape
    (kh, kw), (sh, sw), (ph, pw), (dh, dw) = kernel_size, stride, padding, dilation
    oh = (h + 2 * ph - dh * (kh - 1) - 1) // sh + 1
    ow = (w + 2 * pw - dw * (kw - 1) - 1) // sw + 1
    if out.shape != (n * oh * ow, kh * kw * cwg) or out.dtype != np.uint64:
        raise ValueError(f"im2col_bits: out must be uint64 ({n * oh * ow}, {kh * kw * cwg}), got {out.dtype} {out.shape}")
    _im2col_bits_kernel[_grid1(out.size), BLOCK_1D, stream()](x.reshape(x.size), g, h, w, groups, cwg, kw, sh, sw, ph, pw,
                                                    dh, dw, oh, ow, padword, out)
    return out


# -- the epilogue of one output (both GEMM kernels: this one and bitnet.kernels.xnor_mma) ---------

def _store_output(r, c, dot, flags, corr, period, scale, shift, res, out_i, out_f, sbits, srow, bit):
    """Output ``(r, c)`` from its dot product (the module docstring's DOTS / AFFINE / BITS lines):
    with BITS, a negative output sets bit ``bit`` of the block's shared sign word ``sbits[srow]``."""
    if flags & CORR:
        dot -= corr[r % period, c]
    if flags & AFFINE:
        v = _mul_rn(scale[c], float32(dot)) + shift[c]
        if flags & RESIDUAL:
            v += res[r, c]
        out_f[r, c] = v
        if flags & BITS and v < 0:
            cuda.atomic.or_(sbits, srow, uint64(1) << uint64(bit))
    else:
        out_i[r, c] = dot


# inlined into the kernels (njit(inline="always") compiles to PTX without a GPU, which a
# cuda.jit(device=True) function would not); in the simulator a device function, so that its
# ``cuda`` is the simulator's while a kernel of another module calls it
store_output = (cuda.jit(device=True) if config.ENABLE_CUDASIM else nb.njit(inline="always"))(_store_output)


# -- XNOR-popcount GEMM with the epilogue ---------------------------------------------------------

_GEMMS = {}


def _gemm_kernel(rt: int, ct: int):
    """The GEMM kernel with ``rt x ct`` outputs per thread (compile-time constants)."""
    if (rt, ct) in _GEMMS:
        return _GEMMS[(rt, ct)]
    tm, tn = THREADS * rt, THREADS * ct

    @cuda.jit
    def gemm(a, b, k_true, flags, corr, period, scale, shift, res, out_i, out_f, col0, bits):
        sa = cuda.shared.array((TILE_K, tm), dtype=uint64)
        sb = cuda.shared.array((TILE_K, tn), dtype=uint64)
        sbits = cuda.shared.array(tm, dtype=uint64)  # BITS: the sign word of each row of the tile
        m_rows, kw = a.shape
        n_cols = b.shape[0]
        tx, ty = cuda.threadIdx.x, cuda.threadIdx.y
        tid = ty * THREADS + tx
        row0, col_0 = cuda.blockIdx.y * tm, cuda.blockIdx.x * tn
        acc = cuda.local.array((rt, ct), dtype=int32)
        for i in range(rt):
            for j in range(ct):
                acc[i, j] = 0
        av = cuda.local.array(rt, dtype=uint64)
        bv = cuda.local.array(ct, dtype=uint64)
        for k0 in range(0, kw, TILE_K):
            # stage the tiles: consecutive threads read consecutive words of a row
            for e in range(tid, tm * TILE_K, THREADS * THREADS):
                r, kk = e // TILE_K, e % TILE_K
                gr, gk = row0 + r, k0 + kk
                sa[kk, r] = a[gr, gk] if gr < m_rows and gk < kw else uint64(0)
            for e in range(tid, tn * TILE_K, THREADS * THREADS):
                r, kk = e // TILE_K, e % TILE_K
                gr, gk = col_0 + r, k0 + kk
                sb[kk, r] = b[gr, gk] if gr < n_cols and gk < kw else uint64(0)
            cuda.syncthreads()
            for kk in range(TILE_K):
                for i in range(rt):
                    av[i] = sa[kk, ty + THREADS * i]
                for j in range(ct):
                    bv[j] = sb[kk, tx + THREADS * j]
                for i in range(rt):
                    for j in range(ct):
                        acc[i, j] += int32(cuda.popc(av[i] ^ bv[j]))
            cuda.syncthreads()
        emit = flags & BITS
        if emit:
            for e in range(tid, tm, THREADS * THREADS):
                sbits[e] = uint64(0)
            cuda.syncthreads()
        for i in range(rt):
            r = row0 + ty + THREADS * i
            if r >= m_rows:
                continue
            for j in range(ct):
                n = col_0 + tx + THREADS * j
                if n < n_cols:
                    store_output(r, col0 + n, xnor_dot(int32(k_true), acc[i, j]), flags, corr, period, scale, shift,
                                 res, out_i, out_f, sbits, ty + THREADS * i, n - col_0)
        if emit:  # the block's filters are one whole word of signs (col0 + col_0 is a multiple of 64)
            cuda.syncthreads()
            word = (col0 + col_0) // 64
            for e in range(tid, tm, THREADS * THREADS):
                if row0 + e < m_rows:
                    bits[row0 + e, word] = sbits[e]

    _GEMMS[(rt, ct)] = gemm
    return gemm


def xnor_gemm(a, b, k, out, corr=None, scale=None, shift=None, residual=None, col0=0, tile=None, bits=None):
    """``out[:, col0:col0 + N]`` from rows ``a`` ``(M, KW)`` and filter rows ``b`` ``(N, KW)`` (uint64
    device arrays); see the module docstring. ``out`` int32 gives the dots; float32 (with ``scale``
    and ``shift``, float32 ``(out columns,)``) the affine outputs, plus ``residual`` (like ``out``)
    when given; ``corr`` int32 ``(period, out columns)`` is subtracted from the dots of row m at
    ``m % period``. ``tile``: ``(rows, filters)`` outputs per thread, each 2 or 4 (default: by
    the problem's size). ``bits`` (uint64 ``(M, words_for(out columns))``, affine only): also the
    signs of the outputs, packed (bit = value < 0, the next binary layer's input), written by the
    epilogue for words ``col0 // 64 ..``; needs ``col0`` a multiple of 64, and bits of columns
    beyond this call's N are 0."""
    _check(a, np.uint64, 2, "xnor_gemm: a")
    _check(b, np.uint64, 2, "xnor_gemm: b")
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"xnor_gemm: a {a.shape} and b {b.shape} need the same number of words per row")
    m, n = a.shape[0], b.shape[0]
    flags, operands = epilogue_operands("xnor_gemm", a, m, b, k, out, corr, scale, shift, residual, col0, bits)
    rt, ct = (_tile(m), _tile(n)) if tile is None else tile
    if bits is not None and n > 32:
        ct = 4  # one block's filters = one word of signs
    if rt not in (2, 4) or ct not in (2, 4):
        raise ValueError(f"xnor_gemm: tile must be two of 2, 4, got {tile!r}")
    kernel = _gemm_kernel(rt, ct)
    grid = (-(-n // (THREADS * ct)), -(-m // (THREADS * rt)))
    kernel[grid, (THREADS, THREADS), stream()](a, b, k, flags, *operands)
    return out


def epilogue_operands(what, a, m, b, k, out, corr, scale, shift, residual, col0, bits):
    """The epilogue's flags and kernel operands ``(corr, period, scale, shift, res, out_i, out_f,
    col0, bits)`` for ``m`` rows against the filter rows ``b`` (the argument checks of
    ``xnor_gemm``, shared with ``bitnet.kernels.xnor_mma``): unused operands are stand-ins, views of
    ``a`` that the flags keep the kernel from reading (no allocation)."""
    n = b.shape[0]
    if out.ndim != 2 or out.shape[0] != m or out.shape[1] < col0 + n:
        raise ValueError(f"{what}: out must have {m} rows and at least {col0 + n} columns, got {out.shape}")
    if not 0 < k <= 64 * b.shape[1]:
        raise ValueError(f"{what}: k={k} must lie in 1..{64 * b.shape[1]} (64 x words per row)")
    affine = out.dtype == np.float32
    if not affine and out.dtype != np.int32:
        raise ValueError(f"{what}: out must be int32 (dots) or float32 (affine), got {out.dtype}")
    if affine and (scale is None or shift is None):
        raise ValueError(f"{what}: a float32 out needs scale and shift")
    flags = (AFFINE if affine else 0) | (CORR if corr is not None else 0) | (RESIDUAL if residual is not None else 0)
    if bits is not None:
        words = -(-out.shape[1] // 64)
        if not affine or col0 % 64 or bits.dtype != np.uint64 or bits.shape != (m, words):
            raise ValueError(f"{what}: bits need the affine epilogue, col0 a multiple of 64 (got {col0}) and a "
                             f"uint64 array ({m}, {words}); got {bits.dtype} {bits.shape}")
        flags |= BITS
    flat = a.reshape(a.size)
    fi, ff = flat.view(np.int32), flat.view(np.float32)
    none_u, none_i, none_f, none_v = flat.reshape(1, flat.size), fi.reshape(1, fi.size), ff.reshape(1, ff.size), ff[:1]
    return flags, (none_i if corr is None else corr, corr.shape[0] if corr is not None else 1,
                   none_v if scale is None else scale, none_v if shift is None else shift,
                   none_f if residual is None else residual, out if not affine else none_i,
                   out if affine else none_f, col0, none_u if bits is None else bits)


# -- helpers ------------------------------------------------------------------------------------

def _tile(size: int) -> int:
    """Outputs per thread along one axis: 4 (64-wide block tiles), 2 for small axes. (8 x 8 register
    tiles are not unrolled by Numba/NVVM: their accumulators land in local memory; 4 x 4 already
    issues one 64-bit shared load per two popcounts, below the popcount units' rate.)"""
    return 4 if size >= 64 else 2


def _grid1(total: int) -> int:
    return max(1, min(-(-total // BLOCK_1D), 65535))


def _check(arr, dtype, ndim, what):
    if not hasattr(arr, "copy_to_host"):  # numba device arrays (also the simulator's)
        raise TypeError(f"{what}: expected a CUDA device array, got {type(arr).__name__}; copy it with "
                        "numba.cuda.to_device")
    if arr.dtype != dtype or arr.ndim != ndim:
        raise ValueError(f"{what}: expected {np.dtype(dtype)} with {ndim} dimensions, got {arr.dtype} {arr.shape}")
