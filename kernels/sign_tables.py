"""R^T @ G for a +-1 matrix R held as sign bits, by table lookup ("four Russians"), for the
backward pass of binary layers (Numba; ``bitnet.ops.sign_backward``, ``bitnet.ops.binary``).

A binary convolution's lowered input R (M, K) (``im2col_rows`` of a +-1 map: M = N*OH*OW rows,
K = KH*KW*C columns in (i, j, c) order) holds only +-1, so its weight gradient

    dW^T[k, o] = (R^T G)[k, o] = sum_m R[m, k] G[m, o]           (G: the output gradient, (M, O))

needs no multiplications (nor does the input gradient dR^T = W^T G^T: the +-1 weight W (O, K) in
R's place, G^T in G's). Cut the rows into groups of four, g = 0 .. ceil(M/4) - 1. The four signs of
R[4g .. 4g+3, k] are a 4-bit number ``idx[g, k]`` (bit r set where R[4g + r, k] = -1), and

    (R^T G)[k, :] = sum_g T_g[idx[g, k], :],   T_g[b, :] = sum_{r<4} (-1)^(bit r of b) G[4g + r, :]

where the table T_g (16 rows of O) is built once per group and serves all K columns. One table row
(O additions) then does the work of four multiply-adds per output: 16 + K rows of additions per
group against 4K multiply-adds. Since T_g[b ^ 15] = -T_g[b], only the 8 rows with bit 0 clear are
stored. Building the tables and summing eight picked rows run in ``kernels.table_rows`` (LLVM IR
vectors: no runtime overlap checks). Measured on one core (AMD EPYC, AVX-512), against OpenBLAS's
single-threaded SGEMM on the same shapes: 2.8x for O = 64, 2.5-2.6x for O = 128 to 512, 2.1x for
O = 1000; see docs/performance.md.

``lower_signs`` makes idx straight from a map's packed sign bits (``bitnet.kernels.bitpack``), the
border reading as +1 or -1, so the float matrix R is never built; ``row_signs`` makes it from a +-1
matrix. Rows past M (the last group's missing rows) read as +1 and meet zero rows of G: they add
nothing.

Rounding: each table row is ((+-G0 +- G1) +- G2) +- G3 (products with +-1 are exact; a stored row's
negation gives the same value up to the sign of a zero), each output
adds eight table rows as a tree, then the sums of successive blocks of 8 groups in order: every
output element is a sum of the same M terms as a GEMM's, in another order (for float32 G, relative
to sum_m |G[m, o]|, an error below (M/32 + 6) * 2^-24). The order depends on the shapes only, not
on the thread count: threads split the output, never a sum.
"""
from __future__ import annotations

import numba as nb
import numpy as np

from bitnet.kernels.atomics import claimed
from bitnet.kernels.bit_bytes import or_bit_bytes
from bitnet.kernels.table_rows import GROUPS, add_table_rows, build_table
from bitnet.kernels.threads import parallel

_JIT = dict(nogil=True, cache=True, boundscheck=False, fastmath=False)

GROUP_BLOCK = GROUPS  # 8: groups whose tables are built together (8 x 8 rows of 64 / 128 floats: 16 / 32 KB)
K_BLOCK = 512     # rows of the result per task (tables are rebuilt per task: 8 rows against K_BLOCK)


def groups_of(m: int) -> int:
    """Groups of four rows for M rows: ceil(M / 4)."""
    return (m + 3) // 4


def lower_signs(bits, channels, kh, kw, sh, sw, ph, pw, dh, dw, oh, ow, pad_value, idx):
    """idx (ceil(M/4), KH*KW*C) uint8, M = N*OH*OW: the sign nibbles (module docstring) of the
    ``im2col_rows`` lowering of the +-1 map whose sign bits ``bits`` holds ((N, H, W, G, CWg) uint64
    as ``bitnet.kernels.bitpack.pack_nchw`` writes them; ``channels`` the true C), its border
    reading as ``pad_value`` (+1 or -1: a 0 has no sign bit; callers use a GEMM for it)."""
    if pad_value not in (1.0, -1.0) and (ph or pw):
        raise ValueError(f"lower_signs: the border must read as +1 or -1, got pad_value={pad_value!r}")
    if not (bits.flags.c_contiguous and idx.flags.c_contiguous):
        raise ValueError(f"lower_signs: bits and idx must be C-contiguous, got C-contiguous={bits.flags.c_contiguous}, "
                         f"{idx.flags.c_contiguous}")
    groups = bits.shape[3]
    parallel(_lower_signs, idx.shape[0], bits, groups, channels // groups, kh, kw, sh, sw, ph, pw, dh, dw,
             oh, ow, pad_value < 0, idx, cost=4 * kh * kw * channels)


@nb.njit(**_JIT)
def _lower_signs(bits, groups, cg, kh, kw, sh, sw, ph, pw, dh, dw, oh, ow, pad_negative, idx, counter, chunk):
    """One thread's share of ``lower_signs``: the groups of rows it claims, on flat views (a view per
    tap cost more than its few vector operations). A word's 64 bits go to 64 bytes at once
    (``kernels.bit_bytes``), a last partial word's too where the row has room past it."""
    n_img, height, width = bits.shape[0], bits.shape[1], bits.shape[2]
    n_words = bits.shape[4]
    rows = n_img * oh * ow
    k_size = idx.shape[1]
    full = cg // 64
    words = bits.reshape(-1)
    flat = idx.reshape(-1)
    for grp in claimed(counter, chunk, idx.shape[0]):
        row0 = grp * k_size
        row_end = row0 + k_size
        flat[row0:row0 + k_size] = 0
        for r in range(4):
            m = 4 * grp + r
            if m >= rows:
                break
            n, oy, ox = m // (oh * ow), (m // ow) % oh, m % ow
            bit = np.uint8(1 << r)
            for g in range(groups):
                for i in range(kh):
                    iy = oy * sh - ph + i * dh
                    for j in range(kw):
                        ix = ox * sw - pw + j * dw
                        base = row0 + ((g * kh + i) * kw + j) * cg
                        if not (0 <= iy < height and 0 <= ix < width):
                            if pad_negative:
                                for c in range(cg):
                                    flat[base + c] |= bit
                        else:
                            w0 = (((n * height + iy) * width + ix) * groups + g) * n_words
                            for wi in range(full):
                                or_bit_bytes(flat, base + wi * 64, words[w0 + wi], r)
                            if full < n_words:  # a last partial word
                                at = base + full * 64
                                if at + 64 <= row_end:  # bits past cg are 0 (docs/design.md): the next tap's bytes stay
                                    or_bit_bytes(flat, at, words[w0 + full], r)
                                else:
                                    word = words[w0 + full]
                                    for b in range(cg - full * 64):
                                        flat[np.uint64(at + b)] |= np.uint8(((word >> np.uint64(b)) & np.uint64(1))
                                                                            << np.uint64(r))


def row_signs(a, idx):
    """idx (ceil(N/4), K) uint8: the sign nibbles of a +-1 matrix a (N, K) itself (a dense layer's
    input; bit r of idx[g, k] set where a[4g + r, k] < 0)."""
    if idx.shape != (groups_of(a.shape[0]), a.shape[1]):
        raise ValueError(f"row_signs: idx {idx.shape} does not fit a {a.shape}")
    parallel(_row_signs, idx.shape[0], a, idx, cost=4 * a.shape[1])


@nb.njit(**_JIT)
def _row_signs(a, idx, counter, chunk):
    for grp in claimed(counter, chunk, idx.shape[0]):
        dst = idx[grp]
        dst[:] = 0
        for r in range(min(4, a.shape[0] - 4 * grp)):
            src = a[4 * grp + r]
            bit = np.uint8(1 << r)
            for k in range(dst.size):
                if src[k] < 0:
                    dst[k] |= bit


def signs_t_matmul(idx, rows, g, out):
    """out (K, O) = R^T @ g, R (rows, K) the +-1 matrix of sign nibbles ``idx`` (ceil(rows/4), K)
    (module docstring), g (rows, O) float; out C-contiguous of g's dtype. Parallel over blocks of
    the output."""
    k_size, o_size = out.shape
    if idx.shape != (groups_of(rows), k_size) or g.shape != (rows, o_size):
        raise ValueError(f"signs_t_matmul: idx {idx.shape}, g {g.shape} and out {out.shape} do not fit "
                         f"{rows} rows")
    if not out.flags.c_contiguous or out.dtype != g.dtype:
        raise ValueError(f"signs_t_matmul: out must be a C-contiguous {g.dtype} array, got {out.dtype}, "
                         f"C-contiguous={out.flags.c_contiguous}")
    ob = _o_block(o_size)
    tasks = -(-o_size // ob) * -(-k_size // K_BLOCK)
    parallel(_signs_t_matmul, tasks, idx, rows, g, out, cost=K_BLOCK * ob * (rows // 4 + 1))


@nb.njit(**_JIT)
def _signs_t_matmul(idx, rows, g, out, counter, chunk):
    """One thread's share of ``signs_t_matmul``: the (column block, row block) tasks it claims."""
    k_size, o_size = out.shape
    n_groups = idx.shape[0]
    ob = _o_block(o_size)
    o_blocks, k_blocks = -(-o_size // ob), -(-k_size // K_BLOCK)
    tables = np.empty(GROUP_BLOCK * 8 * ob, g.dtype)
    zero = np.zeros(ob, g.dtype)
    flat = out.reshape(-1)
    row_vectors = g.strides[1] == g.itemsize  # G's rows contiguous: build_table loads them as vectors
    for task in claimed(counter, chunk, o_blocks * k_blocks):
        o0 = (task // k_blocks) * ob
        k0 = (task % k_blocks) * K_BLOCK
        width = min(ob, o_size - o0)
        k1 = min(k_size, k0 + K_BLOCK)
        # full blocks of 8 groups and 64 or 128 columns: the vector loop of kernels.table_rows, whose
        # first block stores (so the output needs no zeroing); else the loop below, from zero
        vectors = (width == 128 or width == 64) and n_groups >= GROUP_BLOCK
        if not vectors:
            for k in range(k0, k1):
                flat[k * o_size + o0:k * o_size + o0 + width] = 0
        for g0 in range(0, n_groups, GROUP_BLOCK):
            nq = min(GROUP_BLOCK, n_groups - g0)
            if vectors and row_vectors and width == 128:
                for q in range(nq):
                    build_table(g, 4 * (g0 + q), rows, o0, tables, q * 8 * ob, ob, 128)
            elif vectors and row_vectors:
                for q in range(nq):
                    build_table(g, 4 * (g0 + q), rows, o0, tables, q * 8 * ob, ob, 64)
            else:
                for q in range(nq):
                    _build_table(g, rows, 4 * (g0 + q), o0, width, zero, tables[q * 8 * ob:(q + 1) * 8 * ob], ob)
            if vectors and nq == GROUP_BLOCK:
                if width == 128:
                    if g0 == 0:
                        add_table_rows(idx, g0, k0, k1, tables, ob, flat, o_size, o0, 128, True)
                    else:
                        add_table_rows(idx, g0, k0, k1, tables, ob, flat, o_size, o0, 128, False)
                elif g0 == 0:
                    add_table_rows(idx, g0, k0, k1, tables, ob, flat, o_size, o0, 64, True)
                else:
                    add_table_rows(idx, g0, k0, k1, tables, ob, flat, o_size, o0, 64, False)
            else:  # a last, partial block of groups, or other widths
                for k in range(k0, k1):
                    _accumulate(idx, g0, nq, k, tables, flat, k * o_size + o0, width, ob)


@nb.njit(inline="always")
def _o_block(o_size):
    """Output columns per table row: 128 from 128 columns on (fewer rows of additions per output),
    else 64 (less of a block left empty). Either way 8 groups' tables fit in the L1 cache."""
    return 128 if o_size >= 128 else 64


@nb.njit(**_JIT)
def _build_table(g, rows, r0, o0, width, zero, table, stride):
    """The loop version of ``table_rows.build_table`` (any width and strides): table[j * stride + o]
    = ((G[r0] + s1 G[r0+1]) + s2 G[r0+2]) + s3 G[r0+3] at column o0 + o, s_r = -1 where bit r - 1
    of j is set (the 16-row table's row 2 j); rows at or past ``rows`` are zero."""
    g_0 = g[r0, o0:o0 + width] if r0 < rows else zero[:width]
    g_1 = g[r0 + 1, o0:o0 + width] if r0 + 1 < rows else zero[:width]
    g_2 = g[r0 + 2, o0:o0 + width] if r0 + 2 < rows else zero[:width]
    g_3 = g[r0 + 3, o0:o0 + width] if r0 + 3 < rows else zero[:width]
    for j in range(8):
        s1 = np.float32(-1.0) if j & 1 else np.float32(1.0)  # float32: keeps float32 terms float32
        s2 = np.float32(-1.0) if j & 2 else np.float32(1.0)
        s3 = np.float32(-1.0) if j & 4 else np.float32(1.0)
        t = table[j * stride:j * stride + width]
        for o in range(width):
            t[o] = ((g_0[o] + s1 * g_1[o]) + s2 * g_2[o]) + s3 * g_3[o]


@nb.njit(inline="always")
def _row(idx, g0, q, k, stride):
    """(offset, sign) of the row of group g0 + q's table that nibble idx[g0 + q, k] picks: T[b] is
    row b / 2 for an even b, minus row (b ^ 15) / 2 for an odd one."""
    b = np.int64(idx[g0 + q, k])
    odd = b & 1
    return np.uint64((q * 8 + ((b ^ (15 * odd)) >> 1)) * stride), np.float32(-1.0) if odd else np.float32(1.0)


@nb.njit(inline="always")
def _accumulate(idx, g0, nq, k, tables, flat, at, width, stride):
    """The loop version of ``table_rows.add_table_rows`` (any width, any number of groups):
    flat[at:at + width] += the table rows picked by idx[g0 .. g0+nq-1, k], eight at a time added as
    a tree, then one by one (multiplying by +-1 is exact). Offsets are unsigned: a loop over
    ``base + o`` then compiles to vector code (signed offsets keep Numba's negative-index
    wraparound, which stays scalar)."""
    w = np.uint64(width)
    dst = np.uint64(at)
    q = 0
    while q + 8 <= nq:
        a0, s0 = _row(idx, g0, q, k, stride)
        a1, s1 = _row(idx, g0, q + 1, k, stride)
        a2, s2 = _row(idx, g0, q + 2, k, stride)
        a3, s3 = _row(idx, g0, q + 3, k, stride)
        a4, s4 = _row(idx, g0, q + 4, k, stride)
        a5, s5 = _row(idx, g0, q + 5, k, stride)
        a6, s6 = _row(idx, g0, q + 6, k, stride)
        a7, s7 = _row(idx, g0, q + 7, k, stride)
        for o in range(w):
            flat[dst + o] += (((s0 * tables[a0 + o] + s1 * tables[a1 + o])
                               + (s2 * tables[a2 + o] + s3 * tables[a3 + o]))
                              + ((s4 * tables[a4 + o] + s5 * tables[a5 + o])
                                 + (s6 * tables[a6 + o] + s7 * tables[a7 + o])))
        q += 8
    while q < nq:
        a0, s0 = _row(idx, g0, q, k, stride)
        for o in range(w):
            flat[dst + o] += s0 * tables[a0 + o]
        q += 1
