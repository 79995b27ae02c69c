"""Checks of the GPU binary kernels (``bitnet.kernels.xnor_cuda``) against the CPU kernels, run under
Numba's CUDA simulator by tests/gpu/test_xnor_cuda.py (or on a real GPU: ``python
tests/gpu/xnor_cuda_checks.py``). Every comparison is exact: the same bits, dots and float32 values.
Shapes are tiny: the simulator runs one Python thread per CUDA thread."""
from __future__ import annotations

import sys

import numpy as np
from numba import cuda

from bitnet.kernels import bitpack, bits
from bitnet.kernels import xnor_conv as XC
from bitnet.kernels import xnor_cuda as XG

rng = np.random.default_rng(0)


def equal(got, want, what):
    if got.shape != want.shape or got.dtype != want.dtype or not np.array_equal(got, want):
        bad = "shape/dtype" if got.shape != want.shape or got.dtype != want.dtype else \
            f"{int(np.sum(got != want))} of {want.size} values"
        raise AssertionError(f"{what}: GPU {got.dtype} {got.shape} differs from CPU {want.dtype} {want.shape} ({bad})")


def check_pack():
    for k in (1, 63, 64, 65, 130):
        x = rng.standard_normal((3, k)).astype(np.float32)
        x[0, 0], x[-1, -1] = 0.0, -0.0  # sign(0) = +1, and -0.0 >= 0 is +1 as well
        out = cuda.device_array((3, bits.words_for(k)), np.uint64)
        equal(XG.pack_rows(cuda.to_device(x), out).copy_to_host(), bits.pack_reference(x), f"pack_rows K={k}")
    for c, g in ((70, 1), (70, 2), (3, 3)):
        x = rng.standard_normal((2, c, 3, 2)).astype(np.float32)
        out = cuda.device_array((2, 3, 2, g, bits.words_for(c // g)), np.uint64)
        equal(XG.pack_nchw(cuda.to_device(x), g, out).copy_to_host(), bitpack.pack_nchw(x, g), f"pack_nchw C={c} G={g}")


def gpu_conv(xb, w, c, o, ksize, stride, padding, dilation, g, pad_value, scale=None, shift=None, residual=None,
             bits=None):
    """The GPU path of a packed convolution (as bitnet.packed.cuda_model runs it), channels-last out."""
    n, h, w_, _, cwg = xb.shape
    (kh, kw), (sh, sw), (ph, pw), (dh, dw) = ksize, stride, padding, dilation
    oh, ow = (h + 2 * ph - dh * (kh - 1) - 1) // sh + 1, (w_ + 2 * pw - dw * (kw - 1) - 1) // sw + 1
    mg = o // g
    rows = XC.unpanel_words(XC.pack_filters(w, g), mg)
    padword = cuda.to_device(XC.pad_words(c // g, pad_value))
    corr = XC.zero_pad_correction(w, (h, w_), stride, padding, dilation) if pad_value == 0 and any(padding) else None
    dev_x = cuda.to_device(xb)
    p = n * oh * ow
    out = cuda.device_array((p, o), np.int32 if scale is None else np.float32)
    for gi in range(g):
        a = cuda.device_array((p, kh * kw * cwg), np.uint64)
        XG.im2col_bits(dev_x, gi, ksize, stride, padding, dilation, padword, a)
        XG.xnor_gemm(a, cuda.to_device(np.ascontiguousarray(rows[gi])), (c // g) * kh * kw, out,
                     corr=None if corr is None else cuda.to_device(corr),
                     scale=None if scale is None else cuda.to_device(scale),
                     shift=None if shift is None else cuda.to_device(shift),
                     residual=None if residual is None else cuda.to_device(residual.reshape(p, o)), col0=gi * mg,
                     bits=bits)
    return out, (n, oh, ow, o)


CONVS = [  # (C, O, kernel, stride, padding, dilation, groups, pad_value)
    (70, 5, (3, 3), (1, 1), (1, 1), (1, 1), 1, 1.0),
    (70, 5, (3, 3), (1, 1), (1, 1), (1, 1), 1, -1.0),
    (70, 5, (3, 3), (1, 1), (1, 1), (1, 1), 1, 0.0),
    (6, 4, (3, 2), (2, 1), (1, 2), (2, 1), 2, 0.0),
    (64, 33, (1, 1), (2, 2), (0, 0), (1, 1), 1, 1.0),
    (64, 80, (1, 1), (1, 1), (0, 0), (1, 1), 1, 1.0),
]


def conv_case(c, o, ksize, stride, padding, dilation, g, pad_value):
    """A random case of ``CONVS`` on 2 images of 5 x 4: the packed input, the float filters, the pad
    word and the zero-padding correction (None unless zero padding)."""
    x = rng.standard_normal((2, c, 5, 4)).astype(np.float32)
    w = rng.standard_normal((o, c // g) + ksize).astype(np.float32)
    corr = XC.zero_pad_correction(w, (5, 4), stride, padding, dilation) if pad_value == 0 and any(padding) else None
    return bitpack.pack_nchw(x, g), w, XC.pad_words(c // g, pad_value), corr


def check_conv():
    for c, o, ksize, stride, padding, dilation, g, pad_value in CONVS:
        xb, w, padword, corr = conv_case(c, o, ksize, stride, padding, dilation, g, pad_value)
        cfg = f"conv C={c} O={o} k={ksize} s={stride} p={padding} d={dilation} g={g} pad={pad_value:g}"
        want = XC.xnor_conv2d(xb, XC.pack_filters(w, g), c, o, ksize, stride, padding, dilation, padword=padword,
                              corr=corr, dots=True, layout="nhwc")
        got, shape = gpu_conv(xb, w, c, o, ksize, stride, padding, dilation, g, pad_value)
        equal(got.copy_to_host().reshape(shape), want, cfg + " dots")
        scale = rng.standard_normal(o).astype(np.float32)
        shift = rng.standard_normal(o).astype(np.float32)
        res = rng.standard_normal(shape).astype(np.float32)
        want, want_bits = XC.xnor_conv2d(xb, XC.pack_filters(w, g), c, o, ksize, stride, padding, dilation,
                                         padword=padword, corr=corr, scale=scale, shift=shift, residual=res,
                                         emit_bits=g == 1, layout="nhwc") if g == 1 else (
            XC.xnor_conv2d(xb, XC.pack_filters(w, g), c, o, ksize, stride, padding, dilation, padword=padword,
                           corr=corr, scale=scale, shift=shift, residual=res, layout="nhwc"), None)
        fused = cuda.device_array((int(np.prod(shape[:3])), bits.words_for(o)), np.uint64) if g == 1 else None
        got, _ = gpu_conv(xb, w, c, o, ksize, stride, padding, dilation, g, pad_value, scale, shift, res, fused)
        equal(got.copy_to_host().reshape(shape), want, cfg + " scale*dot+shift+residual")
        if want_bits is not None:  # the signs handed to the next layer: from the epilogue, and pack_rows
            equal(fused.copy_to_host().reshape(want_bits.shape), want_bits, cfg + " signs from the epilogue")
            words = cuda.device_array((got.shape[0], bits.words_for(o)), np.uint64)
            XG.pack_rows(got, words)
            equal(words.copy_to_host().reshape(want_bits.shape), want_bits, cfg + " signs packed from the output")


def check_gemm_tiles():
    k = 200  # 4 words, the last one partial: padding bits 0 in both operands
    a = bits.pack_reference(rng.standard_normal((37, k)))
    b = bits.pack_reference(rng.standard_normal((21, k)))
    want = bits.xnor_dot_reference(a, b, k)
    for tile in ((2, 2), (4, 2), (4, 4)):
        out = cuda.device_array((37, 21), np.int32)
        XG.xnor_gemm(cuda.to_device(a), cuda.to_device(b), k, out, tile=tile)
        equal(out.copy_to_host(), want, f"xnor_gemm tile {tile}")
    # K spanning several shared-memory steps (TILE_K words each), one filter, one row
    k = 64 * (2 * XG.TILE_K + 3) - 5
    a = bits.pack_reference(rng.standard_normal((1, k)))
    b = bits.pack_reference(rng.standard_normal((1, k)))
    out = cuda.device_array((1, 1), np.int32)
    XG.xnor_gemm(cuda.to_device(a), cuda.to_device(b), k, out)
    equal(out.copy_to_host(), bits.xnor_dot_reference(a, b, k), f"xnor_gemm K={k}")


def check_errors():
    a = cuda.to_device(np.zeros((2, 3), np.uint64))
    f = cuda.to_device(np.ones(4, np.float32))
    for call, text in (
            (lambda: XG.xnor_gemm(np.zeros((2, 3), np.uint64), a, 64, cuda.device_array((2, 2), np.int32)),
             "expected a CUDA device array"),
            (lambda: XG.xnor_gemm(a, a, 64, cuda.device_array((2, 2), np.float64)), "int32 (dots) or float32"),
            (lambda: XG.xnor_gemm(a, a, 64, cuda.device_array((2, 2), np.float32)), "needs scale and shift"),
            (lambda: XG.xnor_gemm(a, a, 500, cuda.device_array((2, 2), np.int32)), "k=500 must lie in 1..192"),
            (lambda: XG.xnor_gemm(a, a, 64, cuda.device_array((2, 4), np.float32), scale=f, shift=f, col0=2,
                                  bits=cuda.device_array((2, 1), np.uint64)), "col0 a multiple of 64 (got 2)"),
            (lambda: XG.pack_rows(cuda.to_device(np.zeros((2, 70), np.float32)), cuda.device_array((2, 1), np.uint64)),
             "out must be (2, 2)")):
        expect_error(call, text)


def expect_error(call, text):
    """``call()`` must raise TypeError or ValueError with ``text`` in its message."""
    try:
        call()
    except (TypeError, ValueError) as e:
        if text not in str(e):
            raise AssertionError(f"error message {e!r} lacks {text!r}") from None
    else:
        raise AssertionError(f"no error for a call that should say {text!r}")


CHECKS = {"pack": check_pack, "conv": check_conv, "gemm": check_gemm_tiles, "errors": check_errors}

if __name__ == "__main__":
    for name in sys.argv[1:] or CHECKS:
        CHECKS[name]()
        print(f"{name}: ok", flush=True)
