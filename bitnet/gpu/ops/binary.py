"""Binary convolution and matrix product on "cuda" with the forward pass on packed bits
(``bitnet.ops.binary``'s GPU implementations), for training binary layers on the GPU.

Forward: the +-1 device inputs are packed to bits (bit = value < 0) by bitnet's numba.cuda kernels,
which run on the same memory as the device arrays (``bitnet.gpu.arrays.numba_view``, no copy):

    conv:   x -> (N, H, W, G, CWg) words (``xnor_cuda.pack_nchw``); w (O, Cg, KH, KW), seen as an
            image of O samples, -> filter rows (O, KH * KW * CWg) in the bit im2col's word order;
            per group g: dots[:, g * Mg:(g + 1) * Mg] = xnor GEMM of the bit im2col rows of x with
            group g's filter rows, in one launch on the 1-bit tensor cores (``xnor_mma.xnor_conv``,
            implicit GEMM) or bit im2col + popcount GEMM (``xnor_cuda``)
    matmul: x (N, K), w^T (K, O) -> rows of bits -> dots (N, O) = popcount GEMM (or the MMA's)

with ``dot = K - 2 popcount(bits(x) XOR bits(w))`` exact in int32. Taps in the padding read the pad
word: -1 bits for pad_value -1, +1 for pad_value +1 and for 0, where the kernel's epilogue subtracts
``corr[pixel, o]`` = the sum of w[o]'s +-1 values over the taps of that output pixel that fall in
the padding (built on the device from w's per-tap sums). The dots become the output dtype exactly
(|dot| < 2^24) and the bias is added once, as the float path adds it: the outputs equal the GPU
float convolution's (whose sums of +-1 products are exact too) bit for bit.

Backward: the GPU float path's (``bitnet.gpu.ops.conv_pool.conv2d_backward`` with the border read
as ``pad_value``; ``MatMul``'s backward, the same code on both devices), so the gradients are the
float path's.

Kernels: ``binary_kernels`` below, None = by the GPU (the tensor-core MMA from compute capability
8.0, else popcount; popcount in Numba's simulator, where "mma" runs the MMA's emulation). Where no
numba.cuda kernel can run (the array emulation inside ``bitnet.gpu.arrays.emulate()`` without the
simulator: unit tests of whole models on CPU-only machines), the forward computes the same numbers
with the float path; tests/gpu_training/binary_checks.py shows both give equal outputs.
"""
from __future__ import annotations

import os

import numpy as np

from bitnet.gpu import emulated
from bitnet.gpu.arrays import array_module, numba_view
from bitnet.gpu.dispatch import implements
from bitnet.gpu.ops.conv_pool import conv2d_backward, conv2d_forward, output_size
from bitnet.ops import binary as B
from bitnet.ops.elementwise import MatMul as FloatMatMul

binary_kernels = None   # "mma", "popcount" or None (choose by the GPU); see the module docstring
MAX_ROWS = 65535 * 64   # GEMM rows per launch (both kernels' grid y limit with 64-row blocks)


def on_bits(a) -> bool:
    """True where the numba.cuda kernels can run on ``a``: CuPy arrays, or emulated ones in the simulator."""
    return not isinstance(a, emulated.EmulatedArray) or os.environ.get("NUMBA_ENABLE_CUDASIM") == "1"


def _kernels():
    """``(xnor_cuda, xnor_mma, use_mma)``, imported at first use (importing them imports numba.cuda)."""
    from bitnet.kernels import xnor_cuda, xnor_mma
    from bitnet.packed.cuda_model import choose_binary_kernels
    return xnor_cuda, xnor_mma, choose_binary_kernels(binary_kernels, _compute_capability()) == "mma"


_CC = []


def _compute_capability():
    """The current GPU's (major, minor), None in the simulator (looked up once)."""
    if not _CC:
        from numba import config, cuda
        _CC.append(None if config.ENABLE_CUDASIM else tuple(cuda.get_current_device().compute_capability))
    return _CC[0]


def _words(bits: int) -> int:
    return -(-bits // 64)


def _pack_nchw(xc, xp, a, groups):
    """The signs of a (N, C, H, W) +-1 device array as words (N, H, W, G, words_for(C / G))."""
    n, c, h, w = a.shape
    out = xp.empty((n, h, w, groups, _words(c // groups)), dtype=np.uint64)
    xc.pack_nchw(numba_view(xp.ascontiguousarray(a, dtype=np.float32)), groups, numba_view(out))
    return out


def _pack_rows(xc, xp, a):
    """The signs of a (R, K) +-1 device array as words (R, words_for(K))."""
    out = xp.empty((a.shape[0], _words(a.shape[1])), dtype=np.uint64)
    xc.pack_rows(numba_view(xp.ascontiguousarray(a, dtype=np.float32)), numba_view(out))
    return out


_PAD_WORDS = {}


def _pad_words(xp, cg, pad_value):
    """The words a padded tap reads (``xnor_conv.pad_words``), on the device, made once per shape."""
    from bitnet.kernels.xnor_conv import pad_words
    key = (xp.__name__, cg, pad_value)
    if key not in _PAD_WORDS:
        _PAD_WORDS[key] = xp.asarray(pad_words(cg, pad_value))
    return _PAD_WORDS[key]


def zero_pad_correction(xp, w, in_hw, stride, padding, dilation):
    """int32 (OH * OW, O) on the device: for each output pixel and filter, the sum of the filter's +-1
    values over its taps in the padding (``bitnet.kernels.xnor_conv.zero_pad_correction``). The
    padding map comes from the shapes alone (host); the filters' tap sums stay on the device."""
    o, _, kh, kw = w.shape
    border, mask = _padding_map(xp, w.shape, in_hw, stride, padding, dilation)
    taps = (1 - 2 * (w < 0).astype(np.int32)).sum(axis=1, dtype=np.int32).reshape(o, kh * kw)  # (O, taps)
    corr = xp.zeros((mask.shape[0], o), dtype=np.int32)
    for i, t in enumerate(border):
        corr += mask[:, i:i + 1] * taps[None, :, t]
    return corr


_PADDING_MAPS = {}


def _padding_map(xp, w_shape, in_hw, stride, padding, dilation):
    """``(border, mask)``: the taps that read the padding at some output pixel, and int32 (OH * OW,
    len(border)) on the device, 1 where the pixel's tap is in the padding; from the shapes alone, made
    once per geometry."""
    key = (xp.__name__, tuple(w_shape[2:]), tuple(in_hw), tuple(stride), tuple(padding), tuple(dilation))
    if key not in _PADDING_MAPS:
        _, _, kh, kw = w_shape
        (h, wd), (sh, sw), (ph, pw), (dh, dw) = in_hw, stride, padding, dilation
        oh, ow = output_size((1, 1, h, wd), w_shape, stride, padding, dilation)
        ih = np.arange(oh)[:, None] * sh - ph + np.arange(kh)[None, :] * dh  # (OH, KH)
        iw = np.arange(ow)[:, None] * sw - pw + np.arange(kw)[None, :] * dw  # (OW, KW)
        padded = ((ih < 0) | (ih >= h))[:, None, :, None] | ((iw < 0) | (iw >= wd))[None, :, None, :]
        padded = padded.reshape(oh * ow, kh * kw)
        border = [int(t) for t in np.flatnonzero(padded.any(axis=0))]
        _PADDING_MAPS[key] = border, xp.asarray(np.ascontiguousarray(padded[:, border], np.int32))
    return _PADDING_MAPS[key]


def conv_dots(x, w, stride, padding, dilation, groups, pad_value):
    """int32 dots (N * OH * OW, O) of the binary convolution, on bits (module docstring)."""
    xp = array_module(x)
    xc, xm, mma = _kernels()
    n_img, _, h, wd = x.shape
    n_out, cg, kh, kw = w.shape
    mg, k = n_out // groups, cg * kh * kw
    oh, ow = output_size(x.shape, w.shape, stride, padding, dilation)
    dots = xp.empty((n_img * oh * ow, n_out), dtype=np.int32)
    if dots.size == 0:
        return dots
    xb = _pack_nchw(xc, xp, x, groups)
    rows = _pack_nchw(xc, xp, w, 1).reshape(n_out, kh * kw * xb.shape[4])  # word (i * KW + j) * CWg + cw
    padword = numba_view(_pad_words(xp, cg, pad_value))
    corr = None
    if pad_value == 0 and any(padding):
        corr = numba_view(zero_pad_correction(xp, w, (h, wd), stride, padding, dilation))
    per_chunk = max(1, MAX_ROWS // (oh * ow))  # whole images per launch: corr's rows stay aligned
    direct = groups == 1 and (kh, kw) == (1, 1) and tuple(stride) == (1, 1) and not any(padding)
    geometry = ((kh, kw), tuple(stride), tuple(padding), tuple(dilation))
    for i0 in range(0, n_img, per_chunk):
        xbi = xb[i0:i0 + per_chunk]
        out = numba_view(dots[i0 * oh * ow:(i0 + xbi.shape[0]) * oh * ow])
        xv = numba_view(xbi)
        for gi in range(groups):
            filters = numba_view(rows[gi * mg:(gi + 1) * mg])
            if mma:
                xm.xnor_conv(xv, gi, *geometry, padword, filters, k, out, corr=corr, col0=gi * mg)
                continue
            if direct:
                a = numba_view(xbi.reshape(-1, xbi.shape[4]))
            else:
                a = numba_view(xp.empty((xbi.shape[0] * oh * ow, kh * kw * xb.shape[4]), dtype=np.uint64))
                xc.im2col_bits(xv, gi, *geometry, padword, a)
            xc.xnor_gemm(a, filters, k, out, corr=corr, col0=gi * mg)
    return dots


def matmul_dots(a, wt):
    """int32 dots (N, O) = a @ wt of +-1 device arrays a (N, K) and wt (K, O), on bits."""
    xp = array_module(a)
    xc, xm, mma = _kernels()
    n, k = a.shape
    dots = xp.empty((n, wt.shape[1]), dtype=np.int32)
    if dots.size == 0 or k == 0:
        dots[...] = 0
        return dots
    ab, wb = _pack_rows(xc, xp, a), numba_view(_pack_rows(xc, xp, wt.T))
    gemm = xm.xnor_gemm if mma else xc.xnor_gemm
    for r0 in range(0, n, MAX_ROWS):
        gemm(numba_view(ab[r0:r0 + MAX_ROWS]), wb, k, numba_view(dots[r0:r0 + MAX_ROWS]))
    return dots


@implements(B.BinaryConv2d)
class BinaryConv2dGPU(B.BinaryConv2d):
    """``bitnet.ops.binary.BinaryConv2d`` on "cuda": forward on bits, backward the float convolution's."""

    owned_grads = (0, 1, 2)  # conv2d_backward's new arrays

    def forward(self, x, w, *bias, stride=(1, 1), padding=(0, 0), dilation=(1, 1), groups=1, pad_value=0.0):
        self.saved = (x, w, stride, padding, dilation, groups, pad_value)
        b = bias[0] if bias else None
        if not on_bits(x):
            return conv2d_forward(x, w, b, stride, padding, dilation, groups, pad_value)
        n_img = x.shape[0]
        oh, ow = output_size(x.shape, w.shape, stride, padding, dilation)
        dots = conv_dots(x, w, stride, padding, dilation, groups, pad_value)
        xp = array_module(x)
        out = xp.ascontiguousarray(dots.reshape(n_img, oh, ow, -1).transpose(0, 3, 1, 2), dtype=x.dtype)
        if b is not None:
            out += b.reshape(1, -1, 1, 1)
        return out

    def backward(self, g):
        x, w, stride, padding, dilation, groups, pad_value = self.saved
        need = self.needs_grad
        gx, gw, gb = conv2d_backward(x, w, g, stride, padding, dilation, groups, need[0], need[1],
                                     len(need) == 3 and need[2], pad_value=pad_value)
        return (gx, gw, gb) if len(need) == 3 else (gx, gw)


@implements(B.BinaryMatMul)
class BinaryMatMulGPU(FloatMatMul):
    """``bitnet.ops.binary.BinaryMatMul`` (x @ w^T of +-1 matrices) on "cuda": forward on bits, backward
    ``MatMul``'s."""

    def forward(self, a, b):
        if not on_bits(a):
            return super().forward(a, b)
        self.a, self.b = a, b
        return matmul_dots(a, b).astype(a.dtype)
