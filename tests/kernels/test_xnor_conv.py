"""bitnet.kernels.xnor_conv: the fused packed convolution / GEMM against the float convolution of
+-1 values (exact), with every padding mode, stride, dilation, groups, K not a multiple of 64, odd
sizes and batch 1; the epilogue and the packed sign output; the fallback (256-bit) kernel."""
from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

from bitnet import functional as F
from bitnet.kernels import xnor_conv as XC
from bitnet.kernels.bitpack import pack_nchw, pack_rows
from bitnet.kernels.bits import pack_reference, xnor_dot_reference
from bitnet.kernels.xnor_naive import xnor_gemm_naive
from bitnet.kernels.xnor_block import has_vector_popcount, preferred_lanes
from bitnet.tensor import Tensor, no_grad
from bitnet.kernels.threads import run

FALLBACK = XC.make_xnor_conv(4 if XC.LANES == 8 else 8)
KERNELS = {"selected": XC.xnor_conv, "other-width": FALLBACK}

# n, c, h, w, o, k, stride, padding, dilation, groups
CONFIGS = [
    (2, 70, 9, 7, 10, 3, 1, 1, 1, 1),
    (1, 64, 12, 12, 64, 5, 1, 0, 1, 1),
    (3, 130, 8, 9, 36, 3, 2, 1, 2, 2),
    (2, 6, 5, 5, 4, 3, 1, 2, 1, 2),
    (1, 1, 7, 5, 3, 3, 1, 1, 1, 1),
    (2, 63, 6, 6, 67, 1, 1, 0, 1, 1),
    (1, 65, 11, 13, 5, (3, 5), (2, 1), (1, 2), (1, 2), 1),
    (4, 256, 4, 4, 128, 3, 1, 1, 1, 1),
    # interior blocks read in place (implicit convolution): stride 2 with groups and 2 words per
    # tap, and dilation 2 without padding
    (2, 130, 20, 21, 40, 3, 2, 1, 1, 2),
    (1, 64, 16, 18, 32, 3, 1, 0, 2, 1),
    # 25 pixels: the last row block holds one row (the one-row micro-kernel, as a dense layer at batch 1)
    (1, 70, 5, 5, 40, 3, 1, 1, 1, 1),
]


def _pair(v):
    return v if isinstance(v, tuple) else (v, v)


def _signs(x):
    return np.where(x >= 0, 1.0, -1.0).astype(np.float32)


def _float_conv(xs, ws, stride, padding, dilation, groups, pad_value):
    with no_grad():
        xp = F.pad(Tensor(xs), (((padding[0],) * 2), ((padding[1],) * 2)), value=pad_value)
        return F.conv2d(xp, Tensor(ws), None, stride, 0, dilation, groups).data


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("pad_value", [1.0, -1.0, 0.0])
@pytest.mark.parametrize("cfg", CONFIGS, ids=lambda c: "x".join(map(str, c[:6])))
def test_dots_equal_float_convolution_of_signs(cfg, pad_value, kernel):
    n, c, h, w, o, k, s, p, d, g = cfg
    k, s, p, d = map(_pair, (k, s, p, d))
    rng = np.random.default_rng(n * 1000 + c + o)
    x = rng.standard_normal((n, c, h, w)).astype(np.float32)
    wt = rng.standard_normal((o, c // g) + k).astype(np.float32)
    x[0, 0, 0, 0] = 0.0
    xs, ws = _signs(x), _signs(wt)
    ref = _float_conv(xs, ws, s, p, d, g, pad_value)
    corr = XC.zero_pad_correction(ws, (h, w), s, p, d) if pad_value == 0 else None
    kern = KERNELS[kernel]
    got = XC.xnor_conv2d(pack_nchw(x, g), XC.pack_filters(wt, g, kern.panel), c, o, k, s, p, d,
                         padword=XC.pad_words(c // g, pad_value), corr=corr, dots=True, kernel=kern)
    assert got.dtype == np.int32 and got.shape == ref.shape
    assert np.array_equal(got, ref)


@pytest.mark.parametrize("kernel", KERNELS)
def test_affine_epilogue_residual_and_sign_bits(kernel):
    n, c, h, w, o = 3, 96, 7, 6, 70
    rng = np.random.default_rng(5)
    x = rng.standard_normal((n, c, h, w)).astype(np.float32)
    wt = rng.standard_normal((o, c, 3, 3)).astype(np.float32)
    scale = rng.uniform(-0.1, 0.1, o).astype(np.float32)
    shift = rng.normal(size=o).astype(np.float32)
    res = rng.normal(size=(n, o, h, w)).astype(np.float32)
    dots = _float_conv(_signs(x), _signs(wt), (1, 1), (1, 1), (1, 1), 1, 1.0)
    for residual in (None, res):
        kern = KERNELS[kernel]
        y, bits = XC.xnor_conv2d(pack_nchw(x), XC.pack_filters(wt, 1, kern.panel), c, o, (3, 3), padding=(1, 1),
                                 scale=scale, shift=shift, residual=residual, emit_bits=True, kernel=kern)
        # the same float32 operations in the same order: exact
        expected = scale[None, :, None, None] * dots + shift[None, :, None, None]
        if residual is not None:
            expected = expected + residual
        assert y.dtype == np.float32 and np.array_equal(y, expected)
        assert np.array_equal(bits, pack_reference(expected.transpose(0, 2, 3, 1), axis=-1)[:, :, :, None, :])


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("t_rows,fp_chunk", [(4, 1), (8, 2), (32, 1)])
def test_raw_kernel_writes_every_output_over_poisoned_buffers(kernel, t_rows, fp_chunk):
    # 2 images of 5x5 -> 3x3 (18 pixels: partial pixel blocks), 40 filters (a partial panel), the
    # epilogue with every flag on; outputs start as garbage and must all be overwritten
    kern = KERNELS[kernel]
    n, c, h, w, o, p = 2, 64, 5, 5, 40, kern.panel
    rng = np.random.default_rng(9)
    x, wt = rng.standard_normal((n, c, h, w)).astype(np.float32), rng.standard_normal((o, c, 3, 3)).astype(np.float32)
    xp, fp = pack_nchw(x), XC.pack_filters(wt, 1, p)
    n_fp = fp.shape[1]
    os_ = n_fp * p
    ref = _float_conv(_signs(x), _signs(wt), (1, 1), (0, 0), (1, 1), 1, 1.0).transpose(0, 2, 3, 1).reshape(-1, o)
    out_i = np.full(18 * os_, -12345, np.int32)
    counter = np.zeros(1, np.int64)  # tasks claimed by both threads of run()
    run(lambda: kern(xp.reshape(-1), n, h, w, 1, 1, fp.reshape(-1), n_fp, 3, 3, 1, 1, 0, 0, 1, 1, 3, 3,
                     np.zeros(1, np.uint64), c * 9, 0, XC._EMPTY_I, XC._EMPTY_F, XC._EMPTY_F, XC._EMPTY_F, out_i,
                     XC._EMPTY_F, XC._EMPTY_B, 8, t_rows, fp_chunk, counter), 2)
    assert np.array_equal(out_i.reshape(18, os_)[:, :o], ref)
    # affine + residual + corr + bits, all through the raw kernel
    scale = np.zeros(os_, np.float32)
    shift = np.ones(os_, np.float32)
    scale[:o], shift[:o] = rng.uniform(-1, 1, o), rng.normal(size=o)
    res = np.zeros((18, os_), np.float32)
    res[:, :o] = rng.normal(size=(18, o))
    corr = np.zeros((9, os_), np.int32)
    corr[:, :o] = rng.integers(-9, 10, (9, o))
    out_f = np.full(18 * os_, np.nan, np.float32)
    out_bits = np.full(18, np.uint64(2**64 - 1), np.uint64)
    flags = XC.AFFINE | XC.RESIDUAL | XC.CORR | XC.BITS
    counter = np.zeros(1, np.int64)
    run(lambda: kern(xp.reshape(-1), n, h, w, 1, 1, fp.reshape(-1), n_fp, 3, 3, 1, 1, 0, 0, 1, 1, 3, 3,
                     np.zeros(1, np.uint64), c * 9, flags, corr.reshape(-1), scale, shift, res.reshape(-1), XC._EMPTY_I,
                     out_f, out_bits.view(np.uint8), 8, t_rows, fp_chunk, counter), 2)
    dots = ref - np.tile(corr[:, :o], (2, 1))
    expected = scale[:o] * dots.astype(np.float32) + shift[:o] + res[:, :o]
    assert np.array_equal(out_f.reshape(18, os_)[:, :o], expected)
    # the sign word: the 40 filters' bits, then the padding lanes' (+1: bit 0); bits 32.. of a
    # 32-lane panel's word are not written by it (xnor_conv2d zeroes that buffer)
    want = pack_reference(expected, axis=-1)[:, 0]
    low = np.uint64((1 << min(64, os_)) - 1) if os_ < 64 else np.uint64(2**64 - 1)
    assert np.array_equal(out_bits & low, want & low)


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("m,n,k", [(64, 200, 1600), (1, 1, 1), (5, 33, 64), (130, 7, 65), (300, 3, 4096)])
def test_gemm_equals_reference(m, n, k, kernel):
    rng = np.random.default_rng(m + n + k)
    a, b = rng.standard_normal((m, k)).astype(np.float32), rng.standard_normal((n, k)).astype(np.float32)
    got = XC.xnor_gemm(pack_rows(a), pack_rows(b), k, kernel=KERNELS[kernel])
    assert np.array_equal(got, xnor_dot_reference(pack_rows(a), pack_rows(b), k))
    assert np.array_equal(got, (_signs(a) @ _signs(b).T).astype(np.int32))
    assert np.array_equal(xnor_gemm_naive(pack_rows(a), pack_rows(b), k), got)


def test_filters_are_split_across_threads_when_pixels_are_few():
    # batch-1 dense layer: one pixel, 1000 filters -> several filter chunks per thread
    t_rows, fp_chunk = XC._task_shape(1, -(-1000 // XC.PANEL), 2)
    assert t_rows == 4 and fp_chunk < -(-1000 // XC.PANEL)
    assert XC._task_shape(12800, 2, 2) == (32, 2)
    assert XC._task_shape(1, -(-1000 // XC.PANEL), 1)[1] < -(-1000 // XC.PANEL)  # one thread: still several tasks
    rng = np.random.default_rng(1)
    a, b = rng.standard_normal((1000, 1024)).astype(np.float32), rng.standard_normal((1, 1024)).astype(np.float32)
    assert np.array_equal(XC.xnor_gemm(pack_rows(a), pack_rows(b), 1024), (_signs(a) @ _signs(b).T).astype(np.int32))


def test_bad_operands_get_clear_errors():
    x = np.zeros((1, 4, 4, 1, 1), np.uint64)
    f = XC.pack_filters(np.ones((4, 10, 3, 3), np.float32))
    with pytest.raises(TypeError, match="packed activations, a uint64 array"):
        XC.xnor_conv2d(x.astype(np.float32), f, 10, 4, (3, 3), dots=True)
    with pytest.raises(ValueError, match=rf"filters must be uint64 \(1, n_panels, 25, {XC.PANEL}\)"):
        XC.xnor_conv2d(x, f, 10, 4, (5, 5), dots=True)
    with pytest.raises(ValueError, match="too small"):
        XC.xnor_conv2d(np.zeros((1, 2, 2, 1, 1), np.uint64), f, 10, 4, (3, 3), dots=True)
    with pytest.raises(ValueError, match="needs scale and shift"):
        XC.xnor_conv2d(x, f, 10, 4, (3, 3))
    with pytest.raises(ValueError, match=r"residual must have shape \(1, 4, 2, 2\)"):
        XC.xnor_conv2d(x, f, 10, 4, (3, 3), scale=np.ones(4), shift=np.ones(4), residual=np.zeros((1, 4, 3, 3)))
    with pytest.raises(ValueError, match="residual and emit_bits need the affine epilogue"):
        XC.xnor_conv2d(x, f, 10, 4, (3, 3), dots=True, emit_bits=True)
    with pytest.raises(ValueError, match=r"corr must have shape \(4, 4\)"):
        XC.xnor_conv2d(x, f, 10, 4, (3, 3), dots=True, corr=np.zeros((4, 4, 1), np.int32))
    with pytest.raises(ValueError, match="layout must be"):
        XC.xnor_conv2d(x, f, 10, 4, (3, 3), dots=True, layout="chwn")
    with pytest.raises(ValueError, match="k=1 needs 1 words, got 2"):
        XC.xnor_gemm(np.zeros((2, 2), np.uint64), np.zeros((3, 2), np.uint64), 1)


def test_kernel_selection_follows_the_compile_target():
    assert preferred_lanes("+avx512f,+avx512vpopcntdq,+avx2") == 8
    assert preferred_lanes("+avx512f,-avx512vpopcntdq,+avx2") == 4
    assert preferred_lanes("+avx2,+popcnt") == 4


@pytest.mark.skipif(not has_vector_popcount(), reason="this CPU has no AVX-512 VPOPCNTDQ")
def test_selected_kernel_uses_512_bit_popcount():
    # Numba keeps no assembly for code loaded from its cache: compile the selected kernel's own
    # function (closure and options included) once more, without the cache, to read its assembly.
    import numba
    kernel = numba.njit(**{**XC._JIT, "cache": False})(XC.xnor_conv.py_func)
    kernel.panel = XC.PANEL
    XC.xnor_gemm(np.zeros((4, 1), np.uint64), np.zeros((1, 1), np.uint64), 64, kernel=kernel)
    asm = "\n".join(kernel.inspect_asm(sig) for sig in kernel.signatures)
    assert "vpopcntq\t%zmm" in asm


def test_target_without_vpopcntdq_selects_the_256_bit_kernel():
    # Numba compiles for NUMBA_CPU_FEATURES when set: a target without VPOPCNTDQ gets lanes = 4,
    # and its kernel still computes exact dot products (this CPU runs that code too).
    code = ("import numpy as np\n"
            "from bitnet.kernels import xnor_conv as XC\n"
            "from bitnet.kernels.bitpack import pack_rows\n"
            "from bitnet.kernels.bits import xnor_dot_reference\n"
            "r = np.random.default_rng(0)\n"
            "a, b = pack_rows(r.standard_normal((70, 300)).astype(np.float32)), "
            "pack_rows(r.standard_normal((50, 300)).astype(np.float32))\n"
            "assert np.array_equal(XC.xnor_gemm(a, b, 300), xnor_dot_reference(a, b, 300))\n"
            "print(XC.LANES)\n")
    env = dict(os.environ, NUMBA_CPU_FEATURES="+64bit,+sse2,+sse4.2,+popcnt,+avx,+avx2,+fma,+bmi,+bmi2",
               NUMBA_CPU_NAME="haswell", NUMBA_CACHE_DIR=os.path.join(os.environ.get("TMPDIR", "/tmp"), "bitnet-avx2-cache"))
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=600)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "4"


@pytest.mark.parametrize("layout", ["nchw", "nhwc"])
@pytest.mark.parametrize("o", [32, 40])  # whole panels, and padding lanes dropped into an array of its own
def test_bound_calls_equal_prepared_calls_and_reuse_their_output(layout, o):
    rng = np.random.default_rng(o)
    x = rng.standard_normal((2, 70, 7, 6)).astype(np.float32)
    w = rng.standard_normal((o, 70, 3, 3)).astype(np.float32)
    xb, filters = pack_nchw(x), XC.pack_filters(w)
    scale, shift = rng.uniform(0.5, 2, o).astype(np.float32), rng.normal(size=o).astype(np.float32)
    for dots in (True, False):
        kw = dict(dots=True) if dots else dict(scale=scale, shift=shift)
        call = XC.XnorConv2d(xb.shape, filters, 70, o, (3, 3), padding=(1, 1), layout=layout, **kw)
        bound = call.bind()
        first = bound(xb)
        np.testing.assert_array_equal(first, call(xb))
        again = bound(pack_nchw(-x))
        assert again is first  # the same array, refilled
        np.testing.assert_array_equal(again, call(pack_nchw(-x)))
        assert bound.nbytes >= first.nbytes
    with pytest.raises(ValueError, match="prepared for packed input"):
        bound(xb[:1])


@pytest.mark.parametrize("layout", ["nchw", "nhwc"])
@pytest.mark.parametrize("o", [64, 40])  # whole panels (residual read in place for nhwc), and padding lanes
def test_bound_calls_with_residual_and_signs_equal_prepared_calls(layout, o):
    rng = np.random.default_rng(o + 1)
    x = rng.standard_normal((2, 70, 7, 6)).astype(np.float32)
    xb = pack_nchw(x)
    filters = XC.pack_filters(rng.standard_normal((o, 70, 3, 3)).astype(np.float32))
    scale, shift = rng.uniform(0.5, 2, o).astype(np.float32), rng.normal(size=o).astype(np.float32)
    call = XC.XnorConv2d(xb.shape, filters, 70, o, (3, 3), padding=(1, 1), layout=layout, scale=scale, shift=shift,
                         residual=True, emit_bits=True)
    bound = call.bind()
    shape = (2, o, 7, 6) if layout == "nchw" else (2, 7, 6, o)
    results = []
    for sign in (1, -1):
        res = rng.standard_normal(shape).astype(np.float32)
        want, got = call(pack_nchw(sign * x), res), bound(pack_nchw(sign * x), res)
        np.testing.assert_array_equal(got[0], want[0])
        np.testing.assert_array_equal(got[1], want[1])
        assert np.any(got[1]) and not np.all(got[1] == got[1].flat[0])
        results.append(got)
    assert results[0][0] is results[1][0] and results[0][1] is results[1][1]  # refilled, not new
    with pytest.raises(ValueError, match="with a residual"):
        bound(xb)
    with pytest.raises(ValueError, match="residual must have shape"):
        bound(xb, np.zeros((1, 2, 3), np.float32))
