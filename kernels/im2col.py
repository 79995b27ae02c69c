"""Float im2col / col2im for NCHW convolutions (Numba; the work split across bitnet's threads).

For an input ``x`` of shape (N, C, H, W), kernel (KH, KW), stride (SH, SW), zero padding (PH, PW)
and dilation (DH, DW), the output size is

    OH = (H + 2 PH - DH (KH - 1) - 1) // SH + 1       (likewise OW)

and ``im2col`` writes the matrix ``cols`` of shape (C*KH*KW, N*OH*OW) with

    cols[(c*KH + i)*KW + j, (n*OH + oy)*OW + ox] = x[n, c, oy*SH - PH + i*DH, ox*SW - PW + j*DW]

(0 where the index falls in the padding, or the ``pad_value`` given: a binary convolution's
border). The row order (c, i, j) matches a weight tensor
(O, C, KH, KW) reshaped to (O, C*KH*KW), so a convolution is ``w.reshape(O, -1) @ cols``, an
(O, N*OH*OW) matrix that ``swap_leading_axes`` turns into NCHW (adding the bias). Inner loops run along ``ox``,
contiguous in both arrays for stride 1, with the padded border handled outside the loop.
``col2im`` is the adjoint: it scatter-adds ``cols`` back into an (N, C, H, W) array (the padding
takes no gradient, whatever value it held).

Kernels take plain arrays and a caller-allocated ``out``; ``boundscheck`` is off (the callers
validate shapes) and ``fastmath`` is off so results are bit-reproducible.
"""
from __future__ import annotations

import numba as nb
import numpy as np

from bitnet.kernels.atomics import claimed
from bitnet.kernels.threads import parallel, prepared_parallel
from bitnet.kernels.tile_transpose import transpose_tile

_JIT = dict(nogil=True, cache=True, boundscheck=False, fastmath=False)


def conv_output_size(size: int, kernel: int, stride: int, padding: int, dilation: int) -> int:
    """Output length along one axis (floor mode); raises if the kernel does not fit."""
    span = dilation * (kernel - 1) + 1
    out = (size + 2 * padding - span) // stride + 1
    if out <= 0:
        raise ValueError(
            f"kernel of size {kernel} (dilation {dilation}, effective span {span}) does not fit an "
            f"input of size {size} with padding {padding}; use a larger input or more padding")
    return out


@nb.njit(inline="always")
def _valid_range(off, stride, size, n_out):
    """[lo, hi): the outputs o with 0 <= o*stride + off < size."""
    lo = max(0, -(off // stride))
    hi = min(n_out, -((off - size) // stride))
    return lo, max(lo, hi)


def prepared_im2col(x_shape, kh, kw, sh, sw, ph, pw, dh, dw, oh, ow, pad_value=0.0):
    """``call(x, out)``: ``im2col`` for inputs of ``x_shape`` (float32), its thread split chosen once
    (``kernels.threads.prepared_parallel``: one call at a time)."""
    n, c = x_shape[0], x_shape[1]
    lower = prepared_parallel(_im2col, c * kh * kw, cost=n * oh * ow)
    pad = np.float32(pad_value)
    return lambda x, out: lower(x, kh, kw, sh, sw, ph, pw, dh, dw, oh, ow, out, pad)


def im2col(x, kh, kw, sh, sw, ph, pw, dh, dw, oh, ow, out, pad_value=0.0):
    """Parallel over the rows k = (c, i, j) of ``out``: each thread writes whole rows in order,
    and its reads (channel c of every image) stay in cache across the KH*KW rows of c. The padding
    reads as ``pad_value`` (0; +-1 for a binary convolution's border)."""
    parallel(_im2col, x.shape[1] * kh * kw, x, kh, kw, sh, sw, ph, pw, dh, dw, oh, ow, out,
             x.dtype.type(pad_value), cost=x.shape[0] * oh * ow)


@nb.njit(**_JIT)
def _im2col(x, kh, kw, sh, sw, ph, pw, dh, dw, oh, ow, out, pad_value, counter, chunk):
    """One thread's share of ``im2col``: the items it claims. Output runs are 1-D views (a unit-stride
    copy between them vectorizes: 2x faster than on 2-D and 4-D indices)."""
    n_img, channels, height, width = x.shape
    for k in claimed(counter, chunk, channels * kh * kw):
        c = k // (kh * kw)
        i = (k // kw) % kh
        j = k % kw
        off = j * dw - pw
        lo, hi = _valid_range(off, sw, width, ow)
        row = out[k]
        for n in range(n_img):
            plane = x[n, c]
            for oy in range(oh):
                iy = oy * sh - ph + i * dh
                run = row[(n * oh + oy) * ow:(n * oh + oy + 1) * ow]
                if iy < 0 or iy >= height:
                    run[:] = pad_value
                    continue
                run[:lo] = pad_value
                line = plane[iy]
                if sw == 1:
                    _copy_into(run[lo:hi], line[lo + off:hi + off])
                else:
                    for ox in range(lo, hi):
                        run[ox] = line[ox * sw + off]
                run[hi:] = pad_value


def col2im(cols, kh, kw, sh, sw, ph, pw, dh, dw, oh, ow, out):
    """out[n, c, y, x] = sum of the cols entries that im2col read from (n, c, y, x); ``out`` is
    overwritten (C-contiguous). Parallel over channels: a thread owns out[:, c] and reads rows (c, i, j)
    in order. A stride-1 convolution whose output has its input's size (a "same" border) adds each
    tap's entries for an image as one run (``_add_shifted``), any other one run per output row."""
    if not out.flags.c_contiguous:
        raise ValueError(f"col2im: out must be C-contiguous, got strides {out.strides} for shape {out.shape}")
    n_img, channels, height, width = out.shape
    masks = np.zeros((0, 0), cols.dtype)  # none: one run per output row
    if sh == 1 and sw == 1 and (oh, ow) == (height, width):
        masks = np.zeros((kw, oh, ow), cols.dtype)
        for j in range(kw):
            lo, hi = _valid_range(j * dw - pw, 1, width, ow)
            masks[j, :, lo:hi] = 1
        masks = masks.reshape(kw, oh * ow)
    parallel(_col2im, channels, cols, kh, kw, sh, sw, ph, pw, dh, dw, oh, ow, masks, out,
             cost=n_img * oh * ow * kh * kw)


@nb.njit(**_JIT)
def _col2im(cols, kh, kw, sh, sw, ph, pw, dh, dw, oh, ow, masks, out, counter, chunk):
    """One thread's share of ``col2im``: the channels it claims, tap by tap. Runs are added on one
    flat view at unsigned offsets (on 4-D indices the loop stayed scalar, and a view made per run
    cost more than a 4-wide run: 3x slower on LeNet's 8-wide output rows, 2.4x on ResNet's 4-wide)."""
    n_img, channels = out.shape[0], out.shape[1]
    flat = out.reshape(-1)
    for c in claimed(counter, chunk, channels):
        for n in range(n_img):
            out[n, c] = 0
        for i in range(kh):
            for j in range(kw):
                src = cols[(c * kh + i) * kw + j]
                if masks.shape[0]:
                    _add_shifted(src, masks[j], flat, out.shape, c, (i * dh - ph) * out.shape[3] + (j * dw - pw))
                else:
                    _add_rows(src, flat, out.shape, c, i * dh - ph, j * dw - pw, sh, sw, oh, ow)


@nb.njit(inline="always")
def _add_shifted(src, mask, flat, shape, c, shift):
    """A same-size stride-1 tap: its entries for image n land at d = s + shift in plane (n, c), so
    they are added as one run of the plane's length, each times the tap column's mask (1 where the
    column stays inside the row, else 0: an entry that would wrap to the next row adds 0): 1.25x on
    32 x 32 planes, 2x on 8 x 8 and 4 x 4 against a run per row. The same sums in the same order, up
    to the sign of a zero."""
    u = np.uint64
    n_img, channels = shape[0], shape[1]
    plane = shape[2] * shape[3]
    lo, hi = max(0, -shift), min(plane, plane - shift)  # d inside the plane
    if hi <= lo:
        return
    run = u(hi - lo)
    for n in range(n_img):
        d0 = u((n * channels + c) * plane + lo + shift)
        s0, m0 = u(n * plane + lo), u(lo)
        for t in range(run):
            flat[d0 + t] += src[s0 + t] * mask[m0 + t]


@nb.njit(inline="always")
def _add_rows(src, flat, shape, c, row_off, col_off, sh, sw, oh, ow):
    """Any other tap: its entries for output row oy of image n, one run along ``ox``."""
    u = np.uint64
    n_img, channels, height, width = shape
    lo, hi = _valid_range(col_off, sw, width, ow)
    if hi <= lo:
        return
    run = u(hi - lo)
    for n in range(n_img):
        plane = (n * channels + c) * height * width
        for oy in range(oh):
            iy = oy * sh + row_off
            if iy < 0 or iy >= height:
                continue
            d0 = u(plane + iy * width + lo * sw + col_off)
            s0 = u((n * oh + oy) * ow + lo)
            if sw == 1:
                for t in range(run):
                    flat[d0 + t] += src[s0 + t]
            else:
                for t in range(run):
                    flat[d0 + t * u(sw)] += src[s0 + t]


def swap_leading_axes(a, bias, out):
    """out[j, i, :] = a[i, j, :] + bias[i] for a of shape (A, B, P): the (O, N, P) <-> (N, O, P)
    block moves between GEMM results and NCHW, with the conv bias added on the way (pass zeros
    for none)."""
    parallel(_swap_leading_axes, a.shape[1], a, bias, out,
             cost=a.shape[0] * a.shape[2])


@nb.njit(**_JIT)
def _swap_leading_axes(a, bias, out, counter, chunk):
    """One thread's share of ``swap_leading_axes``: the items it claims."""
    n_a, n_b, length = a.shape
    for j in claimed(counter, chunk, n_b):
        for i in range(n_a):
            b = bias[i]
            for p in range(length):
                out[j, i, p] = a[i, j, p] + b


# -- channels-last ("rows") layout, for layers with many channels per group -------------------------
#
# With x in NHWC, im2col_rows writes the matrix rows (N*OH*OW, G*KH*KW*Cg) with
#
#     rows[(n*OH + oy)*OW + ox, ((g*KH + i)*KW + j)*Cg + c] = x[n, iy, ix, g*Cg + c]
#
# (iy, ix as above, 0 in the padding): every (i, j) contributes a contiguous run of Cg channels,
# read from one image that stays in cache and written in order. With 64 channels this is about
# 1.5x faster for forward + backward than the column layout (runs of OW values); with one
# channel it is 2x slower, hence the choice per layer in bitnet.ops.conv.

def im2col_rows(x, groups, kh, kw, sh, sw, ph, pw, dh, dw, oh, ow, out, pad_value=0.0):
    """See the comment above; the padding reads as ``pad_value`` (as for ``im2col``)."""
    parallel(_im2col_rows, x.shape[0] * oh * ow, x, _NO_BITS, False, groups, x.shape[3] // groups, kh, kw, sh, sw,
             ph, pw, dh, dw, oh, ow, out, x.dtype.type(pad_value), cost=kh * kw * x.shape[3])


_NO_BITS = np.zeros((0, 0, 0, 0, 0), np.uint64)


def im2col_rows_bits(bits, channels, kh, kw, sh, sw, ph, pw, dh, dw, oh, ow, out, pad_value=0.0):
    """``im2col_rows`` of the +-1 map whose sign bits ``bits`` holds: (N, H, W, G, CWg) uint64 as
    ``bitnet.kernels.bitpack.pack_nchw`` writes them (bit c of a group's words set where channel c is
    -1), ``channels`` the true C. Reads 1 bit per value instead of 4 bytes, and needs no NHWC copy:
    the packed map is channels-last already."""
    groups = bits.shape[3]
    no_x = np.zeros((0, 0, 0, 0), out.dtype)
    parallel(_im2col_rows, bits.shape[0] * oh * ow, no_x, bits, True, groups, channels // groups, kh, kw, sh, sw,
             ph, pw, dh, dw, oh, ow, out, out.dtype.type(pad_value), cost=kh * kw * channels)


@nb.njit(**_JIT)
def _im2col_rows(x, bits, from_bits, groups, cg, kh, kw, sh, sw, ph, pw, dh, dw, oh, ow, out, pad_value,
                 counter, chunk):
    """One thread's share of ``im2col_rows`` (from the NHWC map x) or, ``from_bits``, of
    ``im2col_rows_bits`` (from its packed signs; x is then empty): the items it claims. Each tap's
    channels are copied between 1-D views (3-4x faster than the same loops on 4-D indices)."""
    if from_bits:
        n_img, height, width = bits.shape[0], bits.shape[1], bits.shape[2]
    else:
        n_img, height, width = x.shape[0], x.shape[1], x.shape[2]
    one, two = out.dtype.type(1), out.dtype.type(2)
    for r in claimed(counter, chunk, n_img * oh * ow):
        n = r // (oh * ow)
        oy = (r // ow) % oh
        ox = r % ow
        row = out[r]
        for g in range(groups):
            for i in range(kh):
                iy = oy * sh - ph + i * dh
                for j in range(kw):
                    ix = ox * sw - pw + j * dw
                    base = ((g * kh + i) * kw + j) * cg
                    tap = row[base:base + cg]
                    if not (0 <= iy < height and 0 <= ix < width):
                        tap[:] = pad_value
                    elif from_bits:
                        _unpack_signs(bits[n, iy, ix, g], one, two, tap)
                    else:
                        _copy_into(tap, x[n, iy, ix, g * cg:(g + 1) * cg])


@nb.njit(inline="always")
def _unpack_signs(words, one, two, dst):
    """dst[c] = -1 where bit c of ``words`` is set, else +1 (c < dst.size)."""
    for wi in range(words.size):
        word = words[wi]
        lo = wi * 64
        for b in range(min(64, dst.size - lo)):
            dst[lo + b] = one - two * dst.dtype.type((word >> np.uint64(b)) & np.uint64(1))


@nb.njit(inline="always")
def _copy_into(dst, src):
    """dst = src, element by element (1-D arrays of one length)."""
    for c in range(dst.size):
        dst[c] = src[c]


def col2im_rows(rows, groups, kh, kw, sh, sw, ph, pw, dh, dw, oh, ow, out):
    """The adjoint of im2col_rows: out (N, H, W, C) is overwritten with the scatter-added rows.
    Parallel over images, so no two threads write the same element."""
    parallel(_col2im_rows, out.shape[0], rows, groups, kh, kw, sh, sw, ph, pw, dh, dw, oh, ow, out,
             cost=oh * ow * kh * kw * out.shape[3])


@nb.njit(**_JIT)
def _col2im_rows(rows, groups, kh, kw, sh, sw, ph, pw, dh, dw, oh, ow, out, counter, chunk):
    """One thread's share of ``col2im_rows``: the items it claims. Each element gets its terms in
    (oy, ox) order; the channel loop adds a row's slice into a pixel's slice (1-D views: 3-4x faster
    than the same loop on 4-D indices, which LLVM did not vectorize)."""
    n_img, height, width, channels = out.shape
    cg = channels // groups
    for n in claimed(counter, chunk, n_img):
        img = out[n]
        img[...] = 0
        for oy in range(oh):
            for ox in range(ow):
                row = rows[(n * oh + oy) * ow + ox]
                for i in range(kh):
                    iy = oy * sh - ph + i * dh
                    if iy < 0 or iy >= height:
                        continue
                    line = img[iy]
                    for j in range(kw):
                        ix = ox * sw - pw + j * dw
                        if ix < 0 or ix >= width:
                            continue
                        pixel = line[ix]
                        for g in range(groups):
                            base = ((g * kh + i) * kw + j) * cg
                            _add_into(pixel[g * cg:(g + 1) * cg], row[base:base + cg])


@nb.njit(inline="always")
def _add_into(dst, src):
    """dst += src, element by element (1-D arrays of one length)."""
    for c in range(dst.size):
        dst[c] += src[c]


def transpose_inner(a, bias, out):
    """out[n, j, i] = a[n, i, j] + bias[j] for a of shape (N, A, B) and bias of length B:
    NCHW <-> NHWC per image (as (N, C, H*W) <-> (N, H*W, C)), adding a bias indexed by a's last
    axis on the way (the conv bias when B = O; zeros of length B for none). TILE x TILE tiles
    transposed in vector registers (``kernels.tile_transpose``): resnet18-binary's (64, 1024, 64)
    5.0 -> 1.9 ms and (64, 64, 1024) 6.5 -> 1.6 ms on one thread, LeNet's (128, 64, 144) 0.71 ->
    0.18 ms (scalar moves, even tile by tile, read or write one array a row apart per element)."""
    kernel = _transpose_inner if a.dtype == bias.dtype == out.dtype else _transpose_inner_mixed
    parallel(kernel, a.shape[0], a, bias, out, cost=a.shape[1] * a.shape[2])


TILE = 16


@nb.njit(**_JIT)
def _transpose_inner(a, bias, out, counter, chunk):
    """One thread's share of ``transpose_inner``: the images it claims, whole tiles in vector
    registers where both arrays' rows are contiguous (``kernels.tile_transpose``), the rest (edge
    strips, or every tile) by scalar moves."""
    n_a, n_b = a.shape[1], a.shape[2]
    item = a.itemsize
    vectors = a.strides[2] == item and out.strides[2] == item and bias.strides[0] == item
    full_a = n_a - n_a % TILE if vectors else 0
    full_b = n_b - n_b % TILE if vectors else 0
    for n in claimed(counter, chunk, a.shape[0]):
        a_at, o_at = n * a.strides[0], n * out.strides[0]
        for i0 in range(0, full_a, TILE):
            for j0 in range(0, full_b, TILE):
                transpose_tile(a, a_at + i0 * a.strides[1] + j0 * item, a.strides[1], bias, j0 * item,
                               out, o_at + j0 * out.strides[1] + i0 * item, out.strides[1], TILE)
        _transpose_rest(a, bias, out, n, full_a, full_b)


@nb.njit(**_JIT)
def _transpose_inner_mixed(a, bias, out, counter, chunk):
    """``_transpose_inner`` for arrays of different dtypes: scalar moves (NumPy's promotion)."""
    for n in claimed(counter, chunk, a.shape[0]):
        _transpose_rest(a, bias, out, n, 0, 0)


@nb.njit(**_JIT)
def _transpose_rest(a, bias, out, n, full_a, full_b):
    """Image n's values outside the tiles [0, full_a) x [0, full_b), TILE x TILE blocks at a time."""
    n_a, n_b = a.shape[1], a.shape[2]
    for i0 in range(0, n_a, TILE):
        i1 = min(i0 + TILE, n_a)
        for j0 in range(full_b if i1 <= full_a else 0, n_b, TILE):
            for j in range(j0, min(j0 + TILE, n_b)):
                b = bias[j]
                for i in range(i0, i1):
                    out[n, j, i] = a[n, i, j] + b


def weights_to_rows(w, out):
    """out[(i*KW + j)*Cg + c, o] = w[o, c, i, j]: a weight (O, Cg, KH, KW) as the (KH*KW*Cg, O) matrix
    W^T of the rows lowering (columns in its (i, j, c) order), by two block moves split across
    threads (``transpose_inner`` per input channel, then ``swap_leading_axes``) instead of one
    strided NumPy copy (resnet18's 512 x 512 x 3 x 3: 23.5 ms as
    ``np.ascontiguousarray(w.transpose(2, 3, 1, 0))``)."""
    n_out, cg, kh, kw = w.shape
    taps = kh * kw
    tmp = np.empty((cg, taps, n_out), w.dtype)  # [c, t, o]
    transpose_inner(np.ascontiguousarray(w).reshape(n_out, cg, taps).transpose(1, 0, 2), np.zeros(taps, w.dtype), tmp)
    swap_leading_axes(tmp, np.zeros(cg, w.dtype), out.reshape(taps, cg, n_out))
    return out


def weights_by_tap(w, out):
    """out[o, (i*KW + j)*Cg + c] = w[o, c, i, j]: a weight (O, Cg, KH, KW) as the (O, KH*KW*Cg) matrix
    W of the rows lowering's forward GEMM, one transpose per output channel split across threads."""
    n_out, cg, kh, kw = w.shape
    transpose_inner(np.ascontiguousarray(w).reshape(n_out, cg, kh * kw), np.zeros(kh * kw, w.dtype),
                    out.reshape(n_out, kh * kw, cg))
    return out


def weights_from_rows(rows, out):
    """The inverse of ``weights_to_rows``: out (O, Cg, KH, KW), C-contiguous, from rows (KH*KW*Cg, O),
    by three block moves split across threads (per tap, per output channel)."""
    n_out, cg, kh, kw = out.shape
    taps = kh * kw
    toc = np.empty((taps, n_out, cg), rows.dtype)
    transpose_inner(np.ascontiguousarray(rows).reshape(taps, cg, n_out), np.zeros(n_out, rows.dtype), toc)
    otc = np.empty((n_out, taps, cg), rows.dtype)
    swap_leading_axes(toc, np.zeros(taps, rows.dtype), otc)
    transpose_inner(otc, np.zeros(cg, rows.dtype), out.reshape(n_out, cg, taps))
    return out
