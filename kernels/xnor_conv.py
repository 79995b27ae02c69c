"""Packed binary convolution (and dense layer, and GEMM): bit im2col rows, the XNOR-popcount
micro-kernel and its epilogue, fused in one parallel kernel, channels-last in and out.

Operands (bit convention: ``bitnet.kernels.bits``):

- activations ``x``: packed channels-last words, flat view of ``(N, H, W, G, CWg)``;
- weights: *filter panels*, flat view of ``(G, n_fp, KW_words, P)`` (``pack_filters``): for each
  K-word the words of ``P = VECS * lanes`` consecutive filters are contiguous, so one vector load
  covers ``lanes`` filters; filters beyond ``Mg`` are zero words.

For output pixel q = (n, oh, ow) and filter m of group g, with K = (C / G) * KH * KW:

    dot[q, g, m] = K - 2 * sum_{i, j, cw} popcount(x_pad[n, ih, iw, g, cw] XOR w[g, m, i, j, cw])
    ih = oh * sh - ph + i * dh,   iw = ow * sw - pw + j * dw

where taps outside the image read ``padword[cw]`` (0 for pad_value +1 and 0, the channel bits set
for pad_value -1). With ``pad_value = 0`` a padded tap must contribute 0 instead of +1 * w, so the
caller passes ``corr[pos, g * Mg_pad + m]`` = the sum of sign(w) over the taps of output position
``pos = oh * OW + ow`` that fall in the padding, and dot -= corr.

Work: a task is a block of ``T`` consecutive output pixels (over the whole batch) and a range of
filter panels, split into row blocks of ``ROWS`` pixels. A row block reads ``x`` in place where
it can: a 1x1 / stride-1 / unpadded convolution row by row, and a block of pixels in one output
row whose taps all fall inside the image as an *implicit* convolution (the micro-kernel's tap
table); the others (image borders, pixels wrapping to the next row) get their im2col words
written into a small row buffer first (each pixel's K words contiguous, in L1). For each filter
panel the task runs the micro-kernel on every row block (pixel words broadcast, filter words in
vector lanes) and the vector epilogue (``bitnet.kernels.xnor_epilogue``): int32 dots, or ``scale * dot + shift``
(+ residual) as float32, and optionally the signs packed along filters, the next binary layer's
input. Outputs are channels-last ``(N * OH * OW, G * Mg_pad)``, each pixel's filters contiguous.
"""
from __future__ import annotations

import numba as nb
import numpy as np

from bitnet.kernels.atomics import fetch_add
from bitnet.kernels.threads import num_threads, run
from bitnet.kernels.xnor_block import ROWS, VECS, preferred_lanes, xnor_block
from bitnet.kernels.xnor_epilogue import AFFINE, BITS, CORR, RESIDUAL, xnor_epilogue

_JIT = dict(boundscheck=False, nogil=True, cache=True)


@nb.njit(inline="always", boundscheck=False)
def _im2col_rows(x, rows, q0, cnt, T, g, H, W, G, CWg, KH, KW, sh, sw, ph, pw, dh, dw, OH, OW, padword):
    """rows[r * kwords + (i * KW + j) * CWg + cw] = the word tap (i, j), channel word cw of pixel
    q0 + r (group g), the pad word outside the image; rows beyond ``cnt`` all zero."""
    kwords = KH * KW * CWg
    n = q0 // (OH * OW)  # the first pixel's (n, oh, ow), then stepped: no divisions per pixel
    oh = (q0 - n * OH * OW) // OW
    ow = q0 - (n * OH + oh) * OW - 1
    for r in range(T):
        base = r * kwords
        if r >= cnt:
            for k in range(kwords):
                rows[base + k] = 0
            continue
        ow += 1
        if ow == OW:
            ow = 0
            oh += 1
            if oh == OH:
                oh = 0
                n += 1
        ih0, iw0 = oh * sh - ph, ow * sw - pw
        inside = ih0 >= 0 and ih0 + (KH - 1) * dh < H and iw0 >= 0 and iw0 + (KW - 1) * dw < W
        if inside and CWg == 1:  # the common case, without per-tap tests
            step = np.uint64(dw * G)
            for i in range(KH):  # unsigned indices: no negative-index wraparound code per word
                src = np.uint64(((n * H + ih0 + i * dh) * W + iw0) * G + g)
                dst = np.uint64(base + i * KW)
                for j in range(np.uint64(KW)):
                    rows[dst + j] = x[src + j * step]
            continue
        for i in range(KH):
            ih = ih0 + i * dh
            for j in range(KW):
                iw = iw0 + j * dw
                kb = base + (i * KW + j) * CWg
                if ih >= 0 and ih < H and iw >= 0 and iw < W:
                    src = (((n * H + ih) * W + iw) * G + g) * CWg
                    for cw in range(CWg):
                        rows[kb + cw] = x[src + cw]
                else:
                    for cw in range(CWg):
                        rows[kb + cw] = padword[cw]


def make_xnor_conv(lanes: int):
    """The fused kernel built on the ``lanes``-wide micro-kernel (filter panels of ``VECS * lanes``).

    One source for every width: ``lanes`` reaches the micro-kernel and the epilogue as a
    compile-time constant (the closure's only variables are plain ints), so each width compiles to
    its own code, and Numba's on-disk cache, which keys a closure by its variables' values, finds
    the compiled kernel again in the next process instead of compiling it anew.
    """
    if lanes not in (2, 4, 8):
        raise ValueError(f"make_xnor_conv: lanes must be 2, 4 or 8 (uint64 lanes per vector), got {lanes!r}")
    P = VECS * lanes

    @nb.njit(**_JIT)
    def xnor_conv(x, n_img, H, W, G, CWg, w, n_fp, KH, KW, sh, sw, ph, pw, dh, dw, OH, OW, padword, K, flags,
                  corr, scale, shift, residual, out_i, out_f, bits, bits_stride, T, fp_chunk, next_task):
        """One thread's share: claims tasks from ``next_task`` (``fetch_add``) until none are left;
        ``bitnet.kernels.threads.run`` calls it on every thread that runs."""
        OHW = OH * OW
        total = n_img * OHW
        kwords = KH * KW * CWg
        OS = G * n_fp * P  # output row stride: all filters (panels) of all groups
        direct = KH == 1 and KW == 1 and sh == 1 and sw == 1 and ph == 0 and pw == 0
        taps = np.empty(KH * KW, np.int64)  # implicit convolution: tap offsets in x (words)
        for i in range(KH):
            for j in range(KW):
                taps[i * KW + j] = (i * dh * W + j * dw) * G * CWg
        one_tap = np.zeros(1, np.int64)
        n_blocks = (total + T - 1) // T
        n_chunks = (n_fp + fp_chunk - 1) // fp_chunk
        n_tasks = n_blocks * n_chunks
        rows = np.empty(T * kwords, np.uint64)
        acc = np.empty(ROWS * P, np.int64)
        corr_rows = np.zeros(ROWS, np.int64)
        src = np.empty(T // ROWS, np.int64)  # per row block: its first word in x, or -1 (built rows)
        while True:
            task = fetch_add(next_task, 0, 1)
            if task >= n_tasks:
                break
            q0 = (task // n_chunks) * T
            fp_lo = (task % n_chunks) * fp_chunk
            fp_hi = min(n_fp, fp_lo + fp_chunk)
            cnt = min(T, total - q0)
            n_rb = (cnt + ROWS - 1) // ROWS
            for g in range(G):
                n = q0 // OHW
                oh = (q0 - n * OHW) // OW
                ow = q0 - n * OHW - oh * OW
                for b in range(n_rb):  # plan: read x in place where the block allows it, else build rows
                    r0 = b * ROWS
                    ih0, iw0 = oh * sh - ph, ow * sw - pw
                    full = r0 + ROWS <= cnt
                    if direct and full:
                        src[b] = ((q0 + r0) * G + g) * CWg
                    elif (not direct and full and ow + ROWS <= OW and ih0 >= 0 and ih0 + (KH - 1) * dh < H
                          and iw0 >= 0 and iw0 + (ROWS - 1) * sw + (KW - 1) * dw < W):
                        src[b] = ((n * H + ih0) * W + iw0) * G * CWg + g * CWg
                    else:
                        src[b] = -1
                        _im2col_rows(x, rows[r0 * kwords:], q0 + r0, min(ROWS, cnt - r0), ROWS, g, H, W, G, CWg,
                                     KH, KW, sh, sw, ph, pw, dh, dw, OH, OW, padword)
                    ow += ROWS
                    while ow >= OW:
                        ow -= OW
                        oh += 1
                        if oh == OH:
                            oh = 0
                            n += 1
                for fp in range(fp_lo, fp_hi):
                    col = (g * n_fp + fp) * P
                    for b in range(n_rb):
                        r0 = b * ROWS
                        nr = min(ROWS, cnt - r0)
                        if src[b] < 0 and nr == 1:  # a lone row (a dense layer at batch 1)
                            xnor_block(rows, r0 * kwords, kwords, one_tap, 1, kwords, w, col * kwords, acc, 0,
                                       lanes, 1)
                        elif src[b] < 0:
                            xnor_block(rows, r0 * kwords, kwords, one_tap, 1, kwords, w, col * kwords, acc, 0,
                                       lanes, ROWS)
                        elif direct:
                            xnor_block(x, src[b], G * CWg, one_tap, 1, kwords, w, col * kwords, acc, 0, lanes,
                                       ROWS)
                        else:
                            xnor_block(x, src[b], sw * G * CWg, taps, KH * KW, CWg, w, col * kwords, acc, 0,
                                       lanes, ROWS)
                        q = q0 + r0
                        if flags & CORR:
                            for i in range(nr):
                                corr_rows[i] = ((q + i) % OHW) * OS + col
                        xnor_epilogue(acc, nr, K, flags, corr, corr_rows, scale, shift, col, residual, out_i,
                                      out_f, q * OS + col, OS, bits, q * bits_stride + col // 8, bits_stride,
                                      lanes)

    xnor_conv.panel = P
    return xnor_conv


LANES = preferred_lanes()
xnor_conv = make_xnor_conv(LANES)
PANEL = VECS * LANES

_EMPTY_I = np.zeros(0, np.int32)
_EMPTY_F = np.zeros(0, np.float32)
_EMPTY_B = np.zeros(0, np.uint8)


def panel_words(words: np.ndarray, panel: int = PANEL) -> np.ndarray:
    """Lay out packed filter rows ``(G, Mg, KW_words)`` (or ``(M, KW_words)``: one group) as
    filter panels ``(G, ceil(Mg / panel), KW_words, panel)``, filters beyond Mg zero."""
    words = np.asarray(words, np.uint64)
    if words.ndim == 2:
        words = words[None]
    g, mg, kw = words.shape
    n_fp = -(-mg // panel)
    padded = np.zeros((g, n_fp * panel, kw), np.uint64)
    padded[:, :mg] = words
    return np.ascontiguousarray(padded.reshape(g, n_fp, panel, kw).transpose(0, 1, 3, 2))


def unpanel_words(panels: np.ndarray, mg: int) -> np.ndarray:
    """The inverse of ``panel_words``: ``(G, n_fp, KW_words, panel)`` -> rows ``(G, mg, KW_words)``."""
    g, n_fp, kw, panel = panels.shape
    return np.ascontiguousarray(panels.transpose(0, 1, 3, 2).reshape(g, n_fp * panel, kw)[:, :mg])


def pack_filters(w_signs: np.ndarray, groups: int = 1, panel: int = PANEL) -> np.ndarray:
    """Pack filters ``(O, C / G, KH, KW)`` (their signs: bit = w < 0) into the kernel's filter
    panels ``(G, ceil((O / G) / panel), KH * KW * words_for(C / G), panel)``."""
    from bitnet.kernels.bitpack import pack_rows
    from bitnet.kernels.bits import pack_reference
    o, cg, kh, kw = w_signs.shape
    if groups < 1 or o % groups:
        raise ValueError(f"pack_filters: {o} filters do not split into {groups} groups")
    taps = np.transpose(w_signs, (0, 2, 3, 1))  # (O, KH, KW, C / G): channels last
    if taps.dtype == np.float32:  # the fast packer (training packs the kernels at every step)
        words = pack_rows(np.ascontiguousarray(taps).reshape(-1, cg))
    else:
        words = pack_reference(taps, axis=-1)
    return panel_words(words.reshape(groups, o // groups, -1), panel)


def filter_panels_shape(w_shape, groups: int = 1, panel: int = PANEL) -> tuple:
    """The shape ``pack_filters`` gives filters of shape ``(O, C / G, KH, KW)``, without packing."""
    o, cg, kh, kw = (int(v) for v in w_shape)
    return (groups, -(-(o // groups) // panel), kh * kw * (-(-cg // 64)), panel)


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
    """``(OH * OW, O)`` int32: for pad_value 0, the sum of the filter's +-1 values over the taps of
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
    return np.einsum("hwij,oij->hwo", padded.astype(np.int64), tap_sums).reshape(-1, o).astype(np.int32)


def _out_size(size, pad, dil, k, stride):
    return (size + 2 * pad - dil * (k - 1) - 1) // stride + 1


def _check_operands(x_shape, filters, in_channels, out_channels, kernel_size, panel):
    n, h, w_, g, cwg = x_shape
    kh, kw = kernel_size
    kwords = kh * kw * cwg
    if (not isinstance(filters, np.ndarray) or filters.dtype != np.uint64 or filters.ndim != 4
            or filters.shape[0] != g or filters.shape[2:] != (kwords, panel)):
        raise ValueError(f"xnor_conv2d: filters must be uint64 ({g}, n_panels, {kwords}, {panel}) for {g} groups, "
                         f"{kh}x{kw} taps, {cwg} words per tap and panels of {panel} filters; got "
                         f"{getattr(filters, 'dtype', type(filters).__name__)} {getattr(filters, 'shape', '')}; "
                         "pack them with pack_filters")
    if in_channels % g or -(-(in_channels // g) // 64) != cwg:
        raise ValueError(f"xnor_conv2d: {in_channels} channels in {g} groups need {-(-(in_channels // g) // 64)} "
                         f"words per group, the input has {cwg}")
    mg = out_channels // g
    if out_channels % g or not filters.shape[1] == -(-mg // panel):
        raise ValueError(f"xnor_conv2d: out_channels={out_channels} in {g} groups does not fit filters of shape "
                         f"{filters.shape}")


def _padded(values, g, mg, n_fp, panel, fill, dtype):
    """Per-filter values (G * Mg,) -> per panel lane (G * n_fp * panel,), padding lanes = fill."""
    if mg == n_fp * panel:  # no padding lanes
        return np.ascontiguousarray(values, dtype).reshape(-1)
    out = np.full((g, n_fp * panel), fill, dtype)
    out[:, :mg] = np.asarray(values, dtype).reshape(g, mg)
    return out.reshape(-1)


def xnor_conv2d(x, filters, in_channels, out_channels, kernel_size, stride=(1, 1), padding=(0, 0), dilation=(1, 1),
                padword=None, corr=None, scale=None, shift=None, residual=None,
                dots=False, emit_bits=False, kernel=None, k_true=None, layout="nchw"):
    """Run the fused packed convolution; see the module docstring.

    ``x``: ``(N, H, W, G, CWg)`` uint64 (``bitpack.pack_nchw``); ``filters``: ``pack_filters``'s
    output; ``in_channels``, ``out_channels``: the true C and O; ``padword``: ``(CWg,)`` words for
    padded taps (default zeros: +1); ``corr``: ``zero_pad_correction``'s ``(OH * OW, O)`` or None.
    Returns ``dots`` (int32) when ``dots`` is true, else ``scale * dot + shift (+ residual)``
    (float32), as ``(N, O, OH, OW)`` (``layout="nchw"``, a view of the channels-last result) or
    ``(N, OH, OW, O)`` (``"nhwc"``); ``residual`` is given in the same layout. With
    ``emit_bits`` (affine only) also the packed signs ``(N, OH, OW, 1, words_for(O))``, the next
    layer's input (for groups > 1 each group's filters must fill whole panels).
    ``XnorConv2d`` is the same call prepared once for an input shape.
    """
    if not isinstance(x, np.ndarray) or x.dtype != np.uint64 or x.ndim != 5:
        raise TypeError(f"xnor_conv2d expects packed activations, a uint64 array (N, H, W, G, CWg); got "
                        f"{getattr(x, 'dtype', type(x).__name__)} {getattr(x, 'shape', '')}; pack with "
                        "bitnet.kernels.bitpack.pack_nchw")
    call = XnorConv2d(x.shape, filters, in_channels, out_channels, kernel_size, stride, padding, dilation, padword,
                      corr, scale, shift, residual is not None, dots, emit_bits, kernel, k_true, layout)
    return call(x, residual)


class XnorConv2d:
    """``xnor_conv2d`` prepared for one input shape (``x_shape``) and one set of options: the checks,
    the epilogue's per-lane scale and shift, the zero-padding correction, the output shape and the
    thread split are made once; ``call(x, residual=None)`` then only allocates the output and runs
    the kernel (a packed layer keeps one per input shape: most of a small batch's time was this
    preparation). ``residual``: whether calls pass one. The arrays given here are read at each call,
    not copied."""

    def __init__(self, x_shape, filters, in_channels, out_channels, kernel_size, stride=(1, 1), padding=(0, 0),
                 dilation=(1, 1), padword=None, corr=None, scale=None, shift=None, residual=False, dots=False,
                 emit_bits=False, kernel=None, k_true=None, layout="nchw"):
        kernel = kernel or xnor_conv
        panel = kernel.panel
        x_shape = tuple(int(v) for v in x_shape)
        if len(x_shape) != 5:
            raise TypeError(f"xnor_conv2d expects packed activations (N, H, W, G, CWg); got shape {x_shape}")
        _check_operands(x_shape, filters, in_channels, out_channels, kernel_size, panel)
        if layout not in ("nchw", "nhwc"):
            raise ValueError(f"xnor_conv2d: layout must be 'nchw' or 'nhwc', got {layout!r}")
        n, h, w_, g, cwg = x_shape
        kh, kw = kernel_size
        mg, n_fp = out_channels // g, filters.shape[1]
        oh, ow = (_out_size(h, padding[0], dilation[0], kh, stride[0]),
                  _out_size(w_, padding[1], dilation[1], kw, stride[1]))
        if oh < 1 or ow < 1:
            raise ValueError(f"xnor_conv2d: a {h}x{w_} input is too small for a {kh}x{kw} kernel "
                             f"(padding {padding}, dilation {dilation})")
        self.x_shape, self.kernel, self.layout, self.dots, self.emit_bits = x_shape, kernel, layout, dots, emit_bits
        self.out_channels, self.mg, self.lanes, self.oh, self.ow = out_channels, mg, g * n_fp * panel, oh, ow
        self.total = n * oh * ow
        padword = np.zeros(cwg, np.uint64) if padword is None else np.ascontiguousarray(padword, np.uint64)
        k_true = (in_channels // g) * kh * kw if k_true is None else int(k_true)
        flags = 0
        sc, sh, corr_p = _EMPTY_F, _EMPTY_F, _EMPTY_I
        if dots:
            if emit_bits or residual:
                raise ValueError("xnor_conv2d: dots=True returns raw dot products; residual and emit_bits need the "
                                 "affine epilogue (scale, shift)")
        else:
            if scale is None or shift is None:
                raise ValueError("xnor_conv2d: the affine epilogue needs scale and shift (or pass dots=True)")
            scale, shift = np.asarray(scale), np.asarray(shift)
            if scale.shape != (out_channels,) or shift.shape != (out_channels,):
                raise ValueError(f"xnor_conv2d: scale and shift must have shape ({out_channels},), got "
                                 f"{scale.shape} and {shift.shape}")
            flags |= AFFINE
            sc = _padded(scale, g, mg, n_fp, panel, 0.0, np.float32)
            sh = _padded(shift, g, mg, n_fp, panel, 1.0, np.float32)  # padding lanes: +1, sign bit 0
            if residual:
                flags |= RESIDUAL
        self.words = -(-out_channels // 64)
        if emit_bits:
            if g > 1 and mg % panel:
                raise ValueError(f"xnor_conv2d: emit_bits with {g} groups needs filters per group ({mg}) to be a "
                                 f"multiple of {panel}")
            flags |= BITS
        if corr is not None:
            corr = np.asarray(corr, np.int32)
            if corr.shape != (oh * ow, out_channels):
                raise ValueError(f"xnor_conv2d: corr must have shape {(oh * ow, out_channels)}, got {corr.shape}")
            corr_p = np.zeros((oh * ow, g, n_fp * panel), np.int32)
            corr_p[:, :, :mg] = corr.reshape(oh * ow, g, mg)
            corr_p = corr_p.reshape(-1)
            flags |= CORR
        self.flags = flags
        self.threads = _threads_for(self.total * n_fp * panel * kh * kw * cwg)
        t_rows, fp_chunk = _task_shape(self.total, n_fp, self.threads)
        # the kernel's arguments; x, residual, outputs and the task counter are filled in per call
        self.args = [None, n, h, w_, g, cwg, filters.reshape(-1), n_fp, kh, kw, stride[0], stride[1], padding[0],
                     padding[1], dilation[0], dilation[1], oh, ow, padword, k_true, flags, corr_p, sc, sh, _EMPTY_F,
                     _EMPTY_I, _EMPTY_F, _EMPTY_B, 8 * self.words, t_rows, fp_chunk, None]

    def __call__(self, x, residual=None):
        if x.shape != self.x_shape or x.dtype != np.uint64:
            raise ValueError(f"xnor_conv2d: prepared for packed input {self.x_shape} uint64, got {x.dtype} {x.shape}")
        if (residual is not None) != bool(self.flags & RESIDUAL):
            raise ValueError("xnor_conv2d: prepared " + ("with" if self.flags & RESIDUAL else "without") +
                             " a residual; call it the same way")
        n, oh, ow, mg, oc = self.x_shape[0], self.oh, self.ow, self.mg, self.out_channels
        g = self.x_shape[3]
        args = list(self.args)
        args[0] = x.reshape(-1)
        out = args[25 if self.dots else 26] = np.empty(self.total * self.lanes, np.int32 if self.dots else np.float32)
        if residual is not None:
            args[24] = self._residual(residual)
        if self.emit_bits:
            out_bits = np.zeros((self.total, self.words), np.uint64)
            args[27] = out_bits.reshape(-1).view(np.uint8)
        args[-1] = np.zeros(1, np.int64)
        self._run(args)
        out = self._finish(out.reshape(n, oh, ow, g, self.lanes // g)[..., :mg].reshape(n, oh, ow, oc))
        if self.emit_bits:
            return out, out_bits.reshape(n, oh, ow, 1, self.words)
        return out

    def _residual(self, residual, buf=None):
        """The kernel's residual operand for ``residual`` ((N, O, OH, OW) for "nchw", (N, OH, OW, O) for
        "nhwc"): read in place where it is the kernel's own layout, else copied into lanes of the
        kernel's width (``buf``, if given: a zeroed (N*OH*OW, G, lanes/G) float32 array reused)."""
        n, oh, ow, mg, oc, g = self.x_shape[0], self.oh, self.ow, self.mg, self.out_channels, self.x_shape[3]
        want = (n, oc, oh, ow) if self.layout == "nchw" else (n, oh, ow, oc)
        r = np.asarray(residual, np.float32)
        if r.shape != want:
            raise ValueError(f"xnor_conv2d: residual must have shape {want} ({self.layout}), got {r.shape}")
        if self.layout == "nchw":
            r = r.transpose(0, 2, 3, 1)
        if mg * g == self.lanes and self.layout == "nhwc":  # the kernel's own layout: read in place
            return np.ascontiguousarray(r).reshape(-1)
        res = np.zeros((self.total, g, self.lanes // g), np.float32) if buf is None else buf
        res[:, :, :mg] = r.reshape(self.total, g, mg)
        return res.reshape(-1)

    def _run(self, args):
        kernel = self.kernel
        if self.threads == 1:
            kernel(*args)
        else:
            run(lambda: kernel(*args), self.threads)

    def _finish(self, out):
        """The (N, OH, OW, O) result in the prepared layout (a view for "nchw")."""
        return out.transpose(0, 3, 1, 2) if self.layout == "nchw" else out

    def bind(self):
        """``call(x, residual=None)`` whose output arrays, task counter and argument list are made once
        here and reused by every call: the result (with ``emit_bits`` the pair of floats and packed
        signs) is valid until the next call (``bitnet.packed.plan`` copies what it hands out). Same
        kernel, same arguments: the same values as ``self(x, residual)``. ``call.nbytes``: the bytes
        it holds."""
        n, oh, ow, g = self.x_shape[0], self.oh, self.ow, self.x_shape[3]
        args = list(self.args)
        out = args[25 if self.dots else 26] = np.empty(self.total * self.lanes, np.int32 if self.dots else np.float32)
        counter = args[-1] = np.zeros(1, np.int64)
        lanes5 = out.reshape(n, oh, ow, g, self.lanes // g)[..., :self.mg]
        if self.mg * g == self.lanes:  # no padding lanes: the result is a view of the kernel's output
            result = None
            final = self._finish(lanes5.reshape(n, oh, ow, self.out_channels))
        else:                          # padding lanes dropped into an array of its own
            result = np.empty((n, oh, ow, g, self.mg), out.dtype)
            final = self._finish(result.reshape(n, oh, ow, self.out_channels))
        held = out.nbytes + (0 if result is None else result.nbytes)
        res_buf = None
        if self.flags & RESIDUAL and not (self.mg * g == self.lanes and self.layout == "nhwc"):
            res_buf = np.zeros((self.total, g, self.lanes // g), np.float32)  # (its padding lanes stay 0)
            held += res_buf.nbytes
        if self.emit_bits:  # the kernel writes the words of every lane; the bits past them stay 0
            out_bits = np.zeros((self.total, self.words), np.uint64)
            args[27] = out_bits.reshape(-1).view(np.uint8)
            final = (final, out_bits.reshape(n, oh, ow, 1, self.words))
            held += out_bits.nbytes
        shape, with_residual = self.x_shape, bool(self.flags & RESIDUAL)

        def call(x, residual=None):
            if x.shape != shape or x.dtype != np.uint64:
                raise ValueError(f"xnor_conv2d: prepared for packed input {shape} uint64, got {x.dtype} {x.shape}")
            if (residual is not None) != with_residual:
                raise ValueError("xnor_conv2d: prepared " + ("with" if with_residual else "without") +
                                 " a residual; call it the same way")
            args[0] = x.reshape(-1)
            if with_residual:
                args[24] = self._residual(residual, res_buf)
            counter[0] = 0
            self._run(args)
            if result is not None:
                np.copyto(result, lanes5)
            return final
        call.nbytes = held
        return call


def xnor_gemm(a_words, b_words, k, kernel=None):
    """``(M, W) x (N, W) -> (M, N)`` int32 dot products of +-1 rows of true length ``k`` (a view
    of the kernel's ``(N, M)`` result): a 1x1 convolution of N pixels, the rows of ``b`` read
    in place."""
    kernel = kernel or xnor_conv
    a = np.asarray(a_words)
    b = np.ascontiguousarray(b_words)
    if a.dtype != np.uint64 or a.ndim != 2:
        raise ValueError(f"xnor_gemm: a must be uint64 (M, W), got {a.dtype} {a.shape}")
    if b.dtype != np.uint64 or b.ndim != 2 or b.shape[1] != a.shape[1]:
        raise ValueError(f"xnor_gemm: b must be uint64 (N, {a.shape[1]}), got {b.dtype} {b.shape}")
    return xnor_gemm_panels(panel_words(a, kernel.panel), a.shape[0], b, k, kernel)


def xnor_gemm_panels(a_panels, m, b_words, k, kernel=None):
    """``xnor_gemm`` with the first operand already laid out by ``panel_words`` (``m`` true rows)."""
    kernel = kernel or xnor_conv
    nw = a_panels.shape[2]
    if not 0 < k <= 64 * nw or k <= 64 * (nw - 1):
        raise ValueError(f"xnor_gemm: k={k} needs {-(-k // 64)} words, got {nw}")
    n = b_words.shape[0]
    if n == 0:  # no pixels (an empty batch): a 1 x 0 image would be no image at all
        return np.zeros((0, m), np.int32).T
    dots = xnor_conv2d(b_words.reshape(1, 1, n, 1, nw), a_panels, 64 * nw, m, (1, 1), dots=True, kernel=kernel,
                       k_true=k, layout="nhwc")
    return dots.reshape(n, m).T


# word-XORs (output pixels x filter lanes x K words) below which one thread beats waking a helper
# (a helper's wake-up and the kernel's dispatch cost a few tens of microseconds)
MIN_PARALLEL_WORK = 1 << 21


def _threads_for(work: int) -> int:
    return 1 if work < MIN_PARALLEL_WORK else num_threads()


def _task_shape(pixels, n_fp, threads):
    """(pixels per task, filter panels per task): blocks of 32 pixels and all panels, smaller
    blocks and then filter chunks where that leaves fewer than 4 tasks per thread."""
    want = 4 * threads
    t_rows = 32
    while t_rows > ROWS and -(-pixels // t_rows) < want:
        t_rows //= 2
    blocks = max(1, -(-pixels // t_rows))  # (an empty batch: one empty task)
    chunks = min(n_fp, -(-want // blocks))
    return t_rows, -(-n_fp // chunks)
