"""Packed binary convolution (and dense layer, and GEMM): bit im2col into panels, the XNOR-popcount
micro-kernel, and the epilogue, fused in one parallel kernel.

Operands (bit convention: ``bitnet.kernels.bits``):

- activations ``x``: packed channels-last words, flat view of ``(N, H, W, G, CWg)``;
- weights ``w``: flat view of ``(G, Mg_pad, KH * KW * CWg)``, each row a filter's words in
  (kh, kw, channel-word) order, ``Mg_pad`` = filters per group rounded up to ``ROWS`` (zero rows).

For output pixel q = (n, oh, ow) and filter m of group g, with K = (C / G) * KH * KW:

    dot[n, m, oh, ow] = K - 2 * sum_{i, j, cw} popcount(w[g, m, i, j, cw] XOR x_pad[n, ih, iw, g, cw])
    ih = oh * sh - ph + i * dh,   iw = ow * sw - pw + j * dw

where taps outside the image read ``padword[cw]`` (0 for pad_value +1 and 0, the channel bits set for
pad_value -1). With ``pad_value = 0`` a padded tap must contribute 0 instead of +1 * w, so the caller
passes ``corr[m, oh * OW + ow]`` = the sum of sign(w) over the padded taps, and dot -= corr.

Work: a task is one *panel* of P consecutive output pixels (over the whole batch) and a range of
filters. It writes the pixels' im2col words into a panel buffer (for each K-word the P pixels'
words contiguous: the micro-kernel's layout; it stays in L1/L2, no im2col matrix is ever
materialized), runs the micro-kernel over its filters in blocks of ``ROWS``, and applies the
epilogue, by ``mode``:

- ``DOTS``: ``out_i[n, g*Mg + m, pix] = dot`` (int32);
- ``AFFINE``: ``out_f[n, gm, pix] = scale[gm] * dot + shift[gm]`` (float32), plus
  ``residual[n, gm, pix]`` when ``residual`` is non-empty;

and, when ``out_bits`` is non-empty (shape ``(N * OH * OW, words_for(M))``), packs the signs of the
result (bit set where it is < 0) along the filter axis: the next binary layer's input, ready.
Tasks that share a pixel own disjoint 64-filter ranges of ``out_bits`` words, so no two threads
write the same word.
"""
from __future__ import annotations

import numba as nb
import numpy as np

from bitnet.kernels.xnor_block import ROWS, VECS, make_xnor_block, preferred_lanes

DOTS, AFFINE = 0, 1
_JIT = dict(parallel=True, boundscheck=False, nogil=True, cache=True)


@nb.njit(inline="always", boundscheck=False)
def _epilogue(acc, off, gm, cols, img, pix_of, one_image, K, corr, use_corr, mode, scale, shift, residual,
              use_res, out_i, out_f, out_bits, emit_bits, q0, dots, vals):
    """Filter ``gm``'s row of a block: popcounts -> dots (-> affine, + residual) -> outputs; one
    branch-free loop per step so that LLVM vectorizes them, contiguous stores within one image."""
    n0, p0 = img[0], pix_of[0]
    if mode == DOTS and one_image and not use_corr and not emit_bits:  # the GEMM's case: one pass
        row_i = out_i[n0, gm]
        for c in range(cols):
            row_i[p0 + c] = K - 2 * acc[off + c]
        return
    for c in range(cols):
        dots[c] = K - 2 * acc[off + c]
    if use_corr:
        for c in range(cols):
            dots[c] -= corr[gm, pix_of[c]]
    if mode == DOTS:
        if one_image:
            row_i = out_i[n0, gm]
            for c in range(cols):
                row_i[p0 + c] = dots[c]
        else:
            for c in range(cols):
                out_i[img[c], gm, pix_of[c]] = dots[c]
        if emit_bits:
            for c in range(cols):
                vals[c] = np.float32(dots[c])
    else:
        sc, sh = scale[gm], shift[gm]
        for c in range(cols):
            vals[c] = sc * np.float32(dots[c]) + sh
        if use_res:
            if one_image:
                row_r = residual[n0, gm]
                for c in range(cols):
                    vals[c] += row_r[p0 + c]
            else:
                for c in range(cols):
                    vals[c] += residual[img[c], gm, pix_of[c]]
        if one_image:
            row_f = out_f[n0, gm]
            for c in range(cols):
                row_f[p0 + c] = vals[c]
        else:
            for c in range(cols):
                out_f[img[c], gm, pix_of[c]] = vals[c]
    if emit_bits:
        word, bit = gm // 64, np.uint64(1) << np.uint64(gm % 64)
        for c in range(cols):
            if vals[c] < 0:
                out_bits[q0 + c, word] |= bit


def make_xnor_conv(lanes: int):
    """The fused kernel built on the ``lanes``-wide micro-kernel (panel width ``P = VECS * lanes``)."""
    block = make_xnor_block(lanes)
    P = VECS * lanes

    @nb.njit(**_JIT)
    def xnor_conv(x, n_img, H, W, G, CWg, w, Mg, Mg_pad, KH, KW, sh, sw, ph, pw, dh, dw, OH, OW,
                  padword, K, corr, mode, scale, shift, residual, out_i, out_f, out_bits, m_chunk):
        OHW = OH * OW
        total = n_img * OHW
        kwords = KH * KW * CWg
        n_panels = (total + P - 1) // P
        n_chunks = (Mg + m_chunk - 1) // m_chunk
        use_corr = corr.shape[0] > 0
        use_res = residual.shape[0] > 0
        emit_bits = out_bits.shape[0] > 0
        for task in nb.prange(n_panels * n_chunks):
            p = task // n_chunks
            m_lo = (task % n_chunks) * m_chunk
            m_hi = min(Mg, m_lo + m_chunk)
            buf = np.empty(kwords * P, np.uint64)
            acc = np.empty(ROWS * P, np.int64)
            cols = min(P, total - p * P)
            img = np.empty(P, np.int64)  # image and pixel of each column, computed once per task
            pix_of = np.empty(P, np.int64)
            for c in range(cols):
                img[c] = (p * P + c) // OHW
                pix_of[c] = (p * P + c) - img[c] * OHW
            one_image = img[0] == img[cols - 1]  # the panel's pixels are contiguous in the output
            dots = np.empty(P, np.int32)
            vals = np.empty(P, np.float32)
            if emit_bits:  # clear this task's words of its pixels' sign bits
                for c in range(cols):
                    q = p * P + c
                    for g in range(G):
                        lo, hi = g * Mg + m_lo, g * Mg + m_hi
                        for wd in range(lo // 64, (hi + 63) // 64):
                            out_bits[q, wd] = 0
            for g in range(G):
                # bit im2col of this panel for group g
                for c in range(P):
                    if c >= cols:
                        for k in range(kwords):
                            buf[k * P + c] = 0
                        continue
                    n, pix = img[c], pix_of[c]
                    oh = pix // OW
                    ow = pix - oh * OW
                    for i in range(KH):
                        ih = oh * sh - ph + i * dh
                        for j in range(KW):
                            iw = ow * sw - pw + j * dw
                            kb = (i * KW + j) * CWg
                            if ih >= 0 and ih < H and iw >= 0 and iw < W:
                                src = (((n * H + ih) * W + iw) * G + g) * CWg
                                for cw in range(CWg):
                                    buf[(kb + cw) * P + c] = x[src + cw]
                            else:
                                for cw in range(CWg):
                                    buf[(kb + cw) * P + c] = padword[cw]
                for m0 in range(m_lo, m_hi, ROWS):
                    block(w, (g * Mg_pad + m0) * kwords, kwords, buf, 0, kwords, acc, 0)
                    for r in range(min(ROWS, m_hi - m0)):
                        _epilogue(acc, r * P, g * Mg + m0 + r, cols, img, pix_of, one_image, K, corr, use_corr,
                                  mode, scale, shift, residual, use_res, out_i, out_f, out_bits, emit_bits,
                                  p * P, dots, vals)

    xnor_conv.panel = P
    return xnor_conv


LANES = preferred_lanes()
xnor_conv = make_xnor_conv(LANES)
PANEL = VECS * LANES


_EMPTY_I = np.zeros((0, 0, 0), np.int32)
_EMPTY_F = np.zeros((0, 0, 0), np.float32)
_EMPTY_C = np.zeros((0, 0), np.int32)
_EMPTY_B = np.zeros((0, 0), np.uint64)
_EMPTY_V = np.zeros(0, np.float32)


def pack_filters(w_signs: np.ndarray, groups: int = 1) -> np.ndarray:
    """Pack filters ``(O, C / G, KH, KW)`` (their signs: bit = w < 0) into the kernel's weight
    layout ``(G, Mg_pad, KH * KW * words_for(C / G))``, rows beyond O / G zero."""
    from bitnet.kernels.bits import pack_reference
    o, cg, kh, kw = w_signs.shape
    if o % groups:
        raise ValueError(f"pack_filters: {o} filters do not split into {groups} groups")
    words = pack_reference(np.transpose(w_signs, (0, 2, 3, 1)), axis=-1)  # (O, KH, KW, CWg)
    mg = o // groups
    mg_pad = -(-mg // ROWS) * ROWS
    out = np.zeros((groups, mg_pad, kh * kw * words.shape[-1]), np.uint64)
    out[:, :mg] = words.reshape(groups, mg, -1)
    return out


def pad_words(channels_per_group: int, pad_value: float) -> np.ndarray:
    """The ``(words_for(Cg),)`` words a padded tap reads: all channel bits set for pad_value -1
    (every padded value is -1), zeros for +1 and for 0 (0 is computed as +1, then corrected)."""
    nw = -(-channels_per_group // 64)
    words = np.zeros(nw, np.uint64)
    if pad_value == -1:
        for i in range(nw):
            bits = min(64, channels_per_group - 64 * i)
            words[i] = np.uint64((1 << bits) - 1)
    return words


def zero_pad_correction(w_signs, in_hw, stride, padding, dilation) -> np.ndarray:
    """``(O, OH * OW)`` int32: for pad_value 0, the sum of the filter's +-1 values over the taps of
    each output position that fall in the padding (those taps were computed as +1 * w and must
    count 0). ``w_signs``: the filters ``(O, C / G, KH, KW)`` (only their signs matter), or
    their per-tap sums of +-1 values ``(O, KH, KW)`` (int)."""
    w_signs = np.asarray(w_signs)
    tap_sums = w_signs if w_signs.ndim == 3 else np.where(w_signs < 0, -1, 1).sum(axis=1)  # (O, KH, KW)
    o, kh, kw = tap_sums.shape
    h, w = in_hw
    oh, ow = (_out_size(h, padding[0], dilation[0], kh, stride[0]), _out_size(w, padding[1], dilation[1], kw, stride[1]))
    ih = np.arange(oh)[:, None] * stride[0] - padding[0] + np.arange(kh)[None, :] * dilation[0]  # (OH, KH)
    iw = np.arange(ow)[:, None] * stride[1] - padding[1] + np.arange(kw)[None, :] * dilation[1]  # (OW, KW)
    out_h, out_w = (ih < 0) | (ih >= h), (iw < 0) | (iw >= w)
    padded = out_h[:, None, :, None] | out_w[None, :, None, :]  # (OH, OW, KH, KW)
    return np.einsum("hwij,oij->ohw", padded.astype(np.int64), tap_sums).reshape(o, -1).astype(np.int32)


def _out_size(size, pad, dil, k, stride):
    return (size + 2 * pad - dil * (k - 1) - 1) // stride + 1


def xnor_conv2d(x, filters, in_channels, out_channels, kernel_size, stride=(1, 1), padding=(0, 0), dilation=(1, 1),
                padword=None, corr=None, scale=None, shift=None, residual=None,
                dots=False, emit_bits=False, kernel=None, k_true=None):
    """Run the fused packed convolution; see the module docstring.

    ``x``: ``(N, H, W, G, CWg)`` uint64 (``bitpack.pack_nchw``); ``filters``: ``pack_filters``'s
    output; ``in_channels``, ``out_channels``: the true C and O; ``padword``: ``(CWg,)`` words for padded taps (default
    zeros: +1); ``corr``: ``(O, OH * OW)`` int32 or None. Returns ``dots`` (``(N, O, OH, OW)`` int32)
    when ``dots`` is true, else ``scale * dot + shift (+ residual)`` as float32 ``(N, O, OH, OW)``;
    with ``emit_bits`` also the packed signs ``(N, OH, OW, 1, words_for(O))``.
    """
    if not isinstance(x, np.ndarray) or x.dtype != np.uint64 or x.ndim != 5:
        raise TypeError(f"xnor_conv2d expects packed activations, a uint64 array (N, H, W, G, CWg); got "
                        f"{getattr(x, 'dtype', type(x).__name__)} {getattr(x, 'shape', '')}; pack with "
                        "bitnet.kernels.bitpack.pack_nchw")
    n, h, w_, g, cwg = x.shape
    kh, kw = kernel_size
    if filters.dtype != np.uint64 or filters.ndim != 3 or filters.shape[0] != g or filters.shape[2] != kh * kw * cwg:
        raise ValueError(f"xnor_conv2d: filters must be uint64 ({g}, Mg_pad, {kh * kw * cwg}) for {g} groups, "
                         f"{kh}x{kw} taps and {cwg} words per tap; got {filters.dtype} {filters.shape}")
    if in_channels % g or -(-(in_channels // g) // 64) != cwg:
        raise ValueError(f"xnor_conv2d: {in_channels} channels in {g} groups need {-(-(in_channels // g) // 64)} "
                         f"words per group, the input has {cwg}")
    mg = out_channels // g
    if out_channels % g or mg > filters.shape[1] or mg <= filters.shape[1] - ROWS:
        raise ValueError(f"xnor_conv2d: out_channels={out_channels} does not fit filters of shape {filters.shape}")
    o = mg * g
    oh, ow = (_out_size(h, padding[0], dilation[0], kh, stride[0]), _out_size(w_, padding[1], dilation[1], kw, stride[1]))
    if oh < 1 or ow < 1:
        raise ValueError(f"xnor_conv2d: a {h}x{w_} input is too small for a {kh}x{kw} kernel "
                         f"(padding {padding}, dilation {dilation})")
    padword = np.zeros(cwg, np.uint64) if padword is None else np.ascontiguousarray(padword, np.uint64)
    k_true = (in_channels // g) * kh * kw if k_true is None else int(k_true)
    out_i, out_f = _EMPTY_I, _EMPTY_F
    if dots:
        out_i = np.empty((n, o, oh * ow), np.int32)
    else:
        out_f = np.empty((n, o, oh * ow), np.float32)
        if scale is None or shift is None:
            raise ValueError("xnor_conv2d: the affine epilogue needs scale and shift (or pass dots=True)")
    out_bits = np.empty((n * oh * ow, -(-o // 64)), np.uint64) if emit_bits else _EMPTY_B
    scale = _EMPTY_V if scale is None else np.ascontiguousarray(scale, np.float32)
    shift = _EMPTY_V if shift is None else np.ascontiguousarray(shift, np.float32)
    if not dots and (scale.shape != (o,) or shift.shape != (o,)):
        raise ValueError(f"xnor_conv2d: scale and shift must have shape ({o},), got {scale.shape} and {shift.shape}")
    res = _EMPTY_F
    if residual is not None:
        res = np.ascontiguousarray(residual, np.float32)
        if res.shape != (n, o, oh, ow):
            raise ValueError(f"xnor_conv2d: residual must have shape {(n, o, oh, ow)}, got {res.shape}")
        res = res.reshape(n, o, oh * ow)
    corr = _EMPTY_C if corr is None else np.ascontiguousarray(corr, np.int32)
    m_chunk = _m_chunk(n * oh * ow, mg, kernel)
    (kernel or xnor_conv)(x.reshape(-1), n, h, w_, g, cwg, filters.reshape(-1), mg, filters.shape[1], kh, kw,
                          stride[0], stride[1], padding[0], padding[1], dilation[0], dilation[1], oh, ow,
                          padword, k_true, corr, DOTS if dots else AFFINE, scale, shift, res, out_i, out_f,
                          out_bits, m_chunk)
    result = (out_i if dots else out_f).reshape(n, o, oh, ow)
    if emit_bits:
        return result, out_bits.reshape(n, oh, ow, 1, -1)
    return result


def xnor_gemm(a_words, b_words, k, kernel=None):
    """``(M, W) x (N, W) -> (M, N)`` int32 dot products of +-1 rows of true length ``k``: a 1x1
    convolution of one 1 x N image, so that each filter's outputs are contiguous.
    ``a_words`` may be ``pack_filters``'s output for M rows."""
    a = np.asarray(a_words)
    if a.ndim == 2:
        m = a.shape[0]
        a = np.zeros((1, -(-m // ROWS) * ROWS, a.shape[1]), np.uint64)
        a[0, :m] = a_words
    else:
        m = a.shape[1]
    b = np.ascontiguousarray(b_words)
    if b.dtype != np.uint64 or b.ndim != 2 or b.shape[1] != a.shape[2]:
        raise ValueError(f"xnor_gemm: b must be uint64 (N, {a.shape[2]}), got {b.dtype} {b.shape}")
    if not 0 < k <= 64 * a.shape[2]:
        raise ValueError(f"xnor_gemm: k={k} does not fit {a.shape[2]} words")
    if k <= 64 * (a.shape[2] - 1):
        raise ValueError(f"xnor_gemm: k={k} needs {-(-k // 64)} words, got {a.shape[2]}")
    n = b.shape[0]
    x = b.reshape(1, 1, n, 1, -1)
    dots = xnor_conv2d(x, a, 64 * a.shape[2], m, (1, 1), dots=True, kernel=kernel, k_true=k)
    return dots.reshape(m, n)


def _m_chunk(pixels, mg, kernel):
    """Filters per task: all of them, unless there are too few panels to keep the threads busy."""
    panel = PANEL if kernel is None else getattr(kernel, "panel", PANEL)
    panels = -(-pixels // panel)
    threads = nb.get_num_threads()
    if panels >= 4 * threads or mg <= 64:
        return -(-mg // 64) * 64
    chunks = min(-(-mg // 64), -(-4 * threads // panels))
    return -(-(-(-mg // chunks)) // 64) * 64
