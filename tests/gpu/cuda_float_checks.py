"""Checks of ``bitnet.kernels.cuda_float`` in the Numba CUDA simulator, against NumPy and the CPU
layers of ``bitnet.nn``. ``test_cuda_float.py`` runs this file in a subprocess, because
``NUMBA_ENABLE_CUDASIM=1`` must be set before numba is imported:

    NUMBA_ENABLE_CUDASIM=1 python tests/gpu/cuda_float_checks.py [check ...]
    BITNET_TEST_CUDA=gpu python tests/gpu/cuda_float_checks.py [check ...]     # on a real GPU

prints one JSON object ``{check: null (passed) or the failure's traceback}`` as its last line and
exits 1 if a check failed. The simulator runs one Python thread per CUDA thread: shapes stay tiny.

Tolerances: u = 2^-24 is float32's unit roundoff. A float32 sum of K products (FMA or not) plus a
bias is within (K + 1) u sum_k |a_k b_k| (+ |bias|) of the exact value; each GEMM check uses that
bound, computed per output from float64 absolute products. Everything that rounds once from exact
or float64 values (avg pooling, global means) is within 1 ulp, so rtol = 2^-23 = 2u.
"""
from __future__ import annotations

import json
import os
import sys
import traceback

import numpy as np

U = 2.0 ** -24  # float32 unit roundoff
CHECKS = {}


def check(fn):
    CHECKS[fn.__name__.removeprefix("check_")] = fn
    return fn


# -- helpers -----------------------------------------------------------------------------------

def _rng(seed):
    return np.random.default_rng(seed)


def _dev(cuda, a):
    return cuda.to_device(np.ascontiguousarray(a, dtype=np.float32))


def _nan(cuda, shape):
    """An output poisoned with NaN, so an element the kernel leaves unwritten fails the comparison."""
    return cuda.to_device(np.full(shape, np.nan, np.float32))


def _out_size(size, k, s, p, d):
    return (size + 2 * p - d * (k - 1) - 1) // s + 1


def _ref_im2col(x, kh, kw, sh, sw, ph, pw, dh, dw):
    """rows[(n*OH + oy)*OW + ox, (c*KH + i)*KW + j] from a zero-padded copy (float64, exact)."""
    n, c, h, w = x.shape
    oh, ow = _out_size(h, kh, sh, ph, dh), _out_size(w, kw, sw, pw, dw)
    xp = np.pad(x.astype(np.float64), ((0, 0), (0, 0), (ph, ph), (pw, pw)))
    cols = np.empty((n, oh, ow, c, kh, kw))
    for i in range(kh):
        for j in range(kw):
            win = xp[:, :, i * dh:i * dh + sh * (oh - 1) + 1:sh, j * dw:j * dw + sw * (ow - 1) + 1:sw]
            cols[..., i, j] = win.transpose(0, 2, 3, 1)
    return cols.reshape(n * oh * ow, c * kh * kw), oh, ow


def _ref_pool(x, kh, kw, sh, sw, ph, pw, fill, reduce):
    """reduce over each (KH, KW) window of x padded with ``fill`` (float64)."""
    n, c, h, w = x.shape
    oh, ow = _out_size(h, kh, sh, ph, 1), _out_size(w, kw, sw, pw, 1)
    xp = np.pad(x.astype(np.float64), ((0, 0), (0, 0), (ph, ph), (pw, pw)), constant_values=fill)
    wins = np.stack([xp[:, :, i:i + sh * (oh - 1) + 1:sh, j:j + sw * (ow - 1) + 1:sw]
                     for i in range(kh) for j in range(kw)])
    return reduce(wins, axis=0)


def _gemm_bound(a, b, bias=None):
    """Per-output bound (K + 1) u (|a| |b|^T + |bias|) on the float32 rounding error of a @ b^T + bias."""
    absum = np.abs(a.astype(np.float64)) @ np.abs(b.astype(np.float64)).T
    if bias is not None:
        absum += np.abs(bias.astype(np.float64))
    return (a.shape[1] + 1) * U * absum


def _assert_within(got, ref, bound, what):
    err = np.abs(got.astype(np.float64) - ref)
    assert np.all(np.isfinite(got)), f"{what}: non-finite outputs (unwritten elements?)"
    worst = np.unravel_index(np.argmax(err - bound), err.shape)
    assert np.all(err <= bound), (f"{what}: error {err[worst]:.3g} > bound {bound[worst]:.3g} at {worst} "
                                  f"(got {got[worst]!r}, expected {ref[worst]!r})")
    # the bound is a few float32 ulps, far from the size of the values: it can catch wrong sums
    assert bound.max() < 1e-3 * max(np.abs(ref).max(), 1.0), f"{what}: bound {bound.max()} too loose"


def _raises(exc, fn, *fragments):
    try:
        fn()
    except exc as e:
        for frag in fragments:
            assert frag in str(e), f"message {str(e)!r} lacks {frag!r}"
        return
    raise AssertionError(f"{fn} did not raise {exc.__name__}")


def _cpu(layer, x):
    from bitnet.tensor import Tensor
    return layer(Tensor(x)).data


# -- GEMM ----------------------------------------------------------------------------------------

@check
def check_sgemm_edges(cuda, cf):
    """M, N, K below, at and past the 64 x 64 x 16 tile, K = 1, with and without bias."""
    rng = _rng(1)
    for m, n, k, with_bias in [(1, 1, 1, False), (37, 29, 19, True), (65, 3, 1, True), (3, 70, 1, False),
                               (64, 64, 16, True), (70, 66, 40, True), (5, 7, 33, False)]:
        a = rng.standard_normal((m, k)).astype(np.float32)
        b = rng.standard_normal((n, k)).astype(np.float32)
        bias = rng.standard_normal(n).astype(np.float32) if with_bias else None
        out = _nan(cuda, (m, n))
        ret = cf.sgemm_nt(_dev(cuda, a), _dev(cuda, b), out, None if bias is None else _dev(cuda, bias))
        assert ret is out
        ref = a.astype(np.float64) @ b.astype(np.float64).T + (0.0 if bias is None else bias)
        got = out.copy_to_host()
        if k == 1 and bias is None:  # one product per output: exactly the rounded float32 product
            np.testing.assert_array_equal(got, a * b.T)
        np.testing.assert_allclose(got, ref, rtol=0, atol=_gemm_bound(a, b, bias).max(),
                                   err_msg=f"sgemm_nt M={m} N={n} K={k} bias={with_bias}")
        _assert_within(got, ref, _gemm_bound(a, b, bias), f"sgemm_nt M={m} N={n} K={k}")


@check
def check_sgemm_errors(cuda, cf):
    a, b = _nan(cuda, (4, 3)), _nan(cuda, (5, 3))
    _raises(ValueError, lambda: cf.sgemm_nt(a, _nan(cuda, (5, 2)), _nan(cuda, (4, 5))), "same K", "(5, 2)")
    _raises(ValueError, lambda: cf.sgemm_nt(a, b, _nan(cuda, (5, 4))), "(4, 5)", "(5, 4)")
    _raises(ValueError, lambda: cf.sgemm_nt(a, b, _nan(cuda, (4, 5)), bias=_nan(cuda, (4,))), "(5,)", "(4,)")
    _raises(ValueError, lambda: cf.sgemm_nt(cuda.to_device(np.zeros((4, 3))), b, _nan(cuda, (4, 5))), "float64")
    _raises(ValueError, lambda: cf.sgemm_nt(_nan(cuda, (3, 4))[:, :3], b, _nan(cuda, (4, 5))), "not C-contiguous")
    _raises(TypeError, lambda: cf.sgemm_nt(np.zeros((4, 3), np.float32), b, _nan(cuda, (4, 5))), "device array")


# -- convolution -------------------------------------------------------------------------------

# N, C, H, W, O, (KH, KW), (SH, SW), (PH, PW), (DH, DW), bias
CONV_CASES = [
    (2, 3, 7, 6, 4, (3, 3), (2, 2), (1, 1), (1, 1), True),   # stride 2, padding 1, odd sizes
    (1, 2, 8, 7, 5, (3, 3), (1, 1), (1, 1), (2, 2), False),  # dilation 2, batch 1
    (2, 2, 6, 9, 3, (2, 3), (2, 1), (0, 2), (1, 2), True),   # asymmetric everything
    (1, 4, 5, 5, 6, (1, 1), (1, 1), (0, 0), (1, 1), True),   # 1x1
]


@check
def check_im2col_and_rows_to_nchw(cuda, cf):
    """Both are pure data movement: exactly equal to the NumPy references."""
    rng = _rng(2)
    for n, c, h, w, o, k, s, p, d, _ in CONV_CASES:
        x = rng.standard_normal((n, c, h, w)).astype(np.float32)
        ref, oh, ow = _ref_im2col(x, *k, *s, *p, *d)
        out = _nan(cuda, ref.shape)
        assert cf.im2col_nchw(_dev(cuda, x), k, s, p, d, out) is out
        np.testing.assert_array_equal(out.copy_to_host(), ref, err_msg=f"im2col {k} {s} {p} {d}")
        rows = rng.standard_normal((n * oh * ow, o)).astype(np.float32)
        out = _nan(cuda, (n, o, oh, ow))
        assert cf.rows_to_nchw(_dev(cuda, rows), n, oh, ow, out) is out
        np.testing.assert_array_equal(out.copy_to_host(), rows.reshape(n, oh, ow, o).transpose(0, 3, 1, 2))
        back = _nan(cuda, rows.shape)
        assert cf.nchw_to_rows(out, back) is back
        np.testing.assert_array_equal(back.copy_to_host(), rows)
    # the CPU column-layout im2col of bitnet.kernels is the transpose of this one
    from bitnet.kernels import im2col as K
    x = rng.standard_normal((2, 3, 7, 6)).astype(np.float32)
    cols = np.full((3 * 9, 2 * 4 * 3), np.nan, np.float32)
    K.im2col(x, 3, 3, 2, 2, 1, 1, 1, 1, 4, 3, cols)
    out = cf.im2col_nchw(_dev(cuda, x), 3, 2, 1, 1, _nan(cuda, (24, 27)))
    np.testing.assert_array_equal(out.copy_to_host(), cols.T)


@check
def check_conv2d_against_cpu_layer(cuda, cf):
    """conv2d_nchw against bitnet.nn.Conv2d (the project's semantics) and a float64 reference.
    Both float32 results are within (K + 1) u sum |w x| of the exact one (module docstring), so
    they are within twice that of each other."""
    import bitnet.nn as nn
    rng = _rng(3)
    for case_no, (n, c, h, w, o, k, s, p, d, with_bias) in enumerate(CONV_CASES):
        layer = nn.Conv2d(c, o, k, stride=s, padding=p, dilation=d, bias=with_bias, rng=case_no)
        x = rng.standard_normal((n, c, h, w)).astype(np.float32)
        w2d = layer.weight.data.reshape(o, -1)
        bias = layer.bias.data if with_bias else None
        cpu = _cpu(layer, x)
        out = _nan(cuda, cpu.shape)
        ret = cf.conv2d_nchw(_dev(cuda, x), _dev(cuda, w2d), None if bias is None else _dev(cuda, bias),
                             k, s, p, d, out)
        assert ret is out
        got = out.copy_to_host()
        cols, oh, ow = _ref_im2col(x, *k, *s, *p, *d)
        to_nchw = lambda r: r.reshape(n, oh, ow, o).transpose(0, 3, 1, 2)  # noqa: E731
        bound = to_nchw(_gemm_bound(cols, w2d, bias))
        ref = to_nchw(cols @ w2d.astype(np.float64).T + (0.0 if bias is None else bias))
        _assert_within(got, ref, bound, f"conv2d case {case_no} vs float64")
        _assert_within(got, cpu.astype(np.float64), 2 * bound, f"conv2d case {case_no} vs bitnet.nn.Conv2d")
        np.testing.assert_allclose(got, cpu, rtol=0, atol=2 * bound.max())
        # a caller's workspace (larger than needed) gives the same bits
        size = cf.conv2d_workspace_size(x.shape, o, k, s, p, d)
        assert size == n * oh * ow * (c * k[0] * k[1] + o)
        again = cf.conv2d_nchw(_dev(cuda, x), _dev(cuda, w2d), None if bias is None else _dev(cuda, bias),
                               k, s, p, d, _nan(cuda, cpu.shape), workspace=_nan(cuda, (size + 5,)))
        np.testing.assert_array_equal(again.copy_to_host(), got)


@check
def check_conv2d_errors(cuda, cf):
    x, w2d, out = _nan(cuda, (1, 2, 5, 5)), _nan(cuda, (3, 18)), _nan(cuda, (1, 3, 3, 3))
    _raises(ValueError, lambda: cf.conv2d_nchw(x, w2d, None, 3, 1, 0, 1, out, groups=2), "groups=1")
    _raises(ValueError, lambda: cf.conv2d_nchw(x, _nan(cuda, (3, 9)), None, 3, 1, 0, 1, out), "(O, 18)", "(3, 9)")
    _raises(ValueError, lambda: cf.conv2d_nchw(x, w2d, None, 3, 1, 1, 1, out), "(1, 3, 5, 5)", "(1, 3, 3, 3)")
    _raises(ValueError, lambda: cf.conv2d_nchw(x, w2d, _nan(cuda, (2,)), 3, 1, 0, 1, out), "(3,)", "(2,)")
    _raises(ValueError, lambda: cf.conv2d_nchw(x, w2d, None, 3, 1, 0, 1, out, workspace=_nan(cuda, (10,))),
            "workspace", "at least 189")  # 9 rows x (18 + 3)
    _raises(ValueError, lambda: cf.conv2d_nchw(x, w2d, None, 7, 1, 0, 1, out), "does not fit")
    _raises(ValueError, lambda: cf.im2col_nchw(x, 3, 1, 0, 1, _nan(cuda, (9, 9))), "(9, 18)", "(9, 9)")
    _raises(ValueError, lambda: cf.rows_to_nchw(_nan(cuda, (8, 3)), 1, 3, 3, out), "N*OH*OW = 9")


# -- element-wise ----------------------------------------------------------------------------------

@check
def check_channel_affine(cuda, cf):
    """Bit-identical to NumPy's float32 x * scale + shift (the product is rounded before the sum);
    with batch-norm scale/shift, within 4 u (|x scale| + |shift|) of bitnet.nn.BatchNorm2d in eval
    mode (scale, shift, product and sum each round once)."""
    import bitnet.nn as nn
    rng = _rng(4)
    x = rng.standard_normal((2, 5, 3, 7)).astype(np.float32)
    bn = nn.BatchNorm2d(5).eval()
    bn.running_mean[:] = rng.standard_normal(5)
    bn.running_var[:] = rng.uniform(0.2, 3.0, 5)
    bn.weight.data[:] = rng.standard_normal(5)
    bn.bias.data[:] = rng.standard_normal(5)
    scale64 = bn.weight.data / np.sqrt(bn.running_var.astype(np.float64) + bn.eps)
    scale = scale64.astype(np.float32)
    shift = (bn.bias.data - bn.running_mean * scale64).astype(np.float32)
    out = _nan(cuda, x.shape)
    assert cf.channel_affine_nchw(_dev(cuda, x), _dev(cuda, scale), _dev(cuda, shift), out) is out
    got = out.copy_to_host()
    np.testing.assert_array_equal(got, x * scale[:, None, None] + shift[:, None, None])
    cpu = _cpu(bn, x)
    bound = 4 * U * (np.abs(x * scale[:, None, None]) + np.abs(shift[:, None, None]))
    _assert_within(got, cpu.astype(np.float64), bound, "channel_affine vs BatchNorm2d.eval()")
    _raises(ValueError, lambda: cf.channel_affine_nchw(_dev(cuda, x), _nan(cuda, (4,)), _dev(cuda, shift), out),
            "(5,)", "(4,)")


@check
def check_sign_of_nan(cuda, cf):
    """sign(NaN) = +1 on the GPU as on the CPU's float path and in every packed kernel (bit = x < 0)."""
    from bitnet.quantizers import _sign
    x = np.array([np.nan, -np.nan, 0.0, -0.0, -1.0, 2.0], np.float32)
    sign = cf.unary(_dev(cuda, x), "sign", _nan(cuda, x.shape)).copy_to_host()
    np.testing.assert_array_equal(sign, [1, 1, 1, 1, -1, 1])
    np.testing.assert_array_equal(sign, _sign(x))


@check
def check_unary_and_add(cuda, cf):
    """Exact for identity, relu, hardtanh, sign and add; tanh within 4 ulps (CUDA's tanhf is within 2
    ulps, NumPy's within 1): rtol = 4 * 2^-23, atol for results that underflow near 0."""
    import bitnet.nn as nn
    from bitnet.quantizers import _sign
    rng = _rng(5)
    for shape in [(3, 4, 5, 2), (37,), (6, 7)]:
        x = (rng.standard_normal(shape) * 2).astype(np.float32)
        x.reshape(-1)[:4] = [0.0, -0.0, 1.0, -1.0]  # sign(0) = sign(-0) = +1; hardtanh's bounds
        dx = _dev(cuda, x)
        run = lambda op, **kw: cf.unary(dx, op, _nan(cuda, shape), **kw).copy_to_host()  # noqa: E731
        np.testing.assert_array_equal(run("identity"), x)
        np.testing.assert_array_equal(run("relu"), np.maximum(x, 0))
        np.testing.assert_array_equal(run("relu"), _cpu(nn.ReLU(), x))
        np.testing.assert_array_equal(run("hardtanh"), np.clip(x, -1, 1))
        np.testing.assert_array_equal(run("hardtanh", min_val=-0.5, max_val=2.0), np.clip(x, -0.5, 2.0))
        np.testing.assert_array_equal(run("hardtanh", min_val=-0.5, max_val=2.0),
                                      _cpu(nn.HardTanh(-0.5, 2.0), x))
        sign = run("sign")
        np.testing.assert_array_equal(sign, np.where(x >= 0, np.float32(1), np.float32(-1)))
        np.testing.assert_array_equal(sign, _sign(x))
        assert sign.reshape(-1)[0] == 1 and sign.reshape(-1)[1] == 1
        tanh = run("tanh")
        np.testing.assert_allclose(tanh, np.tanh(x.astype(np.float64)), rtol=4 * 2.0 ** -23, atol=1e-30)
        np.testing.assert_allclose(tanh, _cpu(nn.Tanh(), x), rtol=4 * 2.0 ** -23, atol=1e-30)
        y = rng.standard_normal(shape).astype(np.float32)
        out = _nan(cuda, shape)
        assert cf.add(dx, _dev(cuda, y), out) is out
        np.testing.assert_array_equal(out.copy_to_host(), x + y)
    dx = _nan(cuda, (4,))
    _raises(ValueError, lambda: cf.unary(dx, "gelu", _nan(cuda, (4,))), "gelu", "tanh")
    _raises(ValueError, lambda: cf.unary(dx, "relu", _nan(cuda, (4,)), min_val=0.0), "min_val")
    _raises(ValueError, lambda: cf.unary(dx, "relu", _nan(cuda, (2, 2))), "(4,)", "(2, 2)")
    _raises(ValueError, lambda: cf.add(dx, _nan(cuda, (5,)), _nan(cuda, (4,))), "(4,)", "(5,)")


# -- pooling ---------------------------------------------------------------------------------------

# N, C, H, W, kernel, stride, padding
POOL_CASES = [
    (2, 3, 7, 6, (3, 3), (2, 2), (1, 1)),   # padding 1 with a 3x3/2 window, odd sizes
    (1, 2, 6, 8, (2, 2), None, (0, 0)),     # the usual 2x2/2 (stride None = the window)
    (2, 2, 5, 7, (3, 2), (1, 2), (1, 1)),   # asymmetric, padding on both axes
    (1, 3, 9, 5, (5, 3), (3, 2), (2, 0)),   # padding = half the window
]


@check
def check_pooling(cuda, cf):
    """Max pooling is exact; average pooling is bit-identical to bitnet.nn.AvgPool2d (float64 sums
    in the same order) and within one rounding (rtol 2u) of the float64 reference."""
    import bitnet.nn as nn
    rng = _rng(6)
    for n, c, h, w, k, s, p in POOL_CASES:
        x = rng.standard_normal((n, c, h, w)).astype(np.float32)
        x[0, 0, 0, :2] = x[0, 0, 0, 0]  # a tie inside a window
        ss = k if s is None else s
        cpu_max, cpu_avg = _cpu(nn.MaxPool2d(k, s, p), x), _cpu(nn.AvgPool2d(k, s, p), x)
        out = _nan(cuda, cpu_max.shape)
        assert cf.maxpool2d_nchw(_dev(cuda, x), k, s, p, out) is out
        got = out.copy_to_host()
        np.testing.assert_array_equal(got, _ref_pool(x, *k, *ss, *p, -np.inf, np.max).astype(np.float32))
        np.testing.assert_array_equal(got, cpu_max)
        out = _nan(cuda, cpu_avg.shape)
        assert cf.avgpool2d_nchw(_dev(cuda, x), k, s, p, out) is out
        got = out.copy_to_host()
        np.testing.assert_array_equal(got, cpu_avg)
        ref = _ref_pool(x, *k, *ss, *p, 0.0, np.sum) / (k[0] * k[1])
        np.testing.assert_allclose(got, ref, rtol=2 * U, atol=1e-12)
    x = _nan(cuda, (1, 1, 6, 6))
    _raises(ValueError, lambda: cf.maxpool2d_nchw(x, 2, 2, 2, _nan(cuda, (1, 1, 5, 5))), "at most half")
    _raises(ValueError, lambda: cf.avgpool2d_nchw(x, 2, 0, 0, _nan(cuda, (1, 1, 3, 3))), "stride >= 1")
    _raises(ValueError, lambda: cf.avgpool2d_nchw(x, 2, 2, 0, _nan(cuda, (1, 1, 2, 2))), "(1, 1, 3, 3)")


# N, C, H, W, kernel, stride, padding: windows hanging over the border in ceil mode
POOL_MODE_CASES = [
    (2, 3, 7, 6, (3, 3), (2, 2), (1, 1)),
    (1, 2, 5, 5, (2, 2), None, (0, 0)),
    (2, 2, 7, 5, (3, 2), (2, 3), (1, 1)),
    (1, 2, 4, 4, (2, 2), (2, 2), (1, 1)),   # ceil mode drops the window starting in the padding
]


@check
def check_pooling_ceil_mode_count_include_pad_and_nan(cuda, cf):
    """ceil_mode, count_include_pad=False and NaN propagation give the CPU layers' bits (the CPU
    kernels are checked against NumPy and PyTorch in tests/engine/test_pool_modes.py and
    test_nan_and_edge_grads.py)."""
    import bitnet.nn as nn
    rng = _rng(8)
    for n, c, h, w, k, s, p in POOL_MODE_CASES:
        x = rng.standard_normal((n, c, h, w)).astype(np.float32)
        x[0, 0, 0, 1] = x[-1, -1, h - 1, w - 1] = x[0, 1, 2, 2] = np.nan  # not first in their windows
        for ceil_mode in (False, True):
            cpu = _cpu(nn.MaxPool2d(k, s, p, ceil_mode=ceil_mode), x)
            assert np.isnan(cpu).any()
            out = _nan(cuda, cpu.shape)
            assert cf.maxpool2d_nchw(_dev(cuda, x), k, s, p, out, ceil_mode=ceil_mode) is out
            np.testing.assert_array_equal(out.copy_to_host(), cpu)
            finite = np.nan_to_num(x, nan=0.5)
            for include in (True, False):
                cpu = _cpu(nn.AvgPool2d(k, s, p, ceil_mode, include), finite)
                out = _nan(cuda, cpu.shape)
                assert cf.avgpool2d_nchw(_dev(cuda, finite), k, s, p, out, ceil_mode=ceil_mode,
                                         count_include_pad=include) is out
                np.testing.assert_array_equal(out.copy_to_host(), cpu)
    x = _nan(cuda, (1, 1, 5, 5))
    _raises(ValueError, lambda: cf.maxpool2d_nchw(x, 2, 2, 0, _nan(cuda, (1, 1, 2, 2)), ceil_mode=True), "(1, 1, 3, 3)")


@check
def check_global_avgpool(cuda, cf):
    """float64 sums rounded once: within rtol 2u of the float64 mean; within H*W u mean|x| of the
    CPU layer (NumPy's float32 sum of H*W terms); NHWC gives the NCHW bits (same summation order)."""
    import bitnet.nn as nn
    rng = _rng(7)
    for n, c, h, w in [(2, 5, 3, 4), (1, 3, 1, 1), (3, 2, 7, 5)]:
        x = (rng.standard_normal((n, c, h, w)) + 0.5).astype(np.float32)
        out = _nan(cuda, (n, c))
        assert cf.global_avgpool_nchw(_dev(cuda, x), out) is out
        got = out.copy_to_host()
        np.testing.assert_allclose(got, x.astype(np.float64).mean(axis=(2, 3)), rtol=2 * U, atol=1e-12)
        bound = h * w * U * np.abs(x.astype(np.float64)).mean(axis=(2, 3))
        _assert_within(got, _cpu(nn.GlobalAvgPool2d(), x).astype(np.float64), bound + 2 * U * np.abs(got),
                       "global_avgpool_nchw vs GlobalAvgPool2d")
        out = _nan(cuda, (n, c))
        assert cf.global_avgpool_nhwc(_dev(cuda, x.transpose(0, 2, 3, 1)), out) is out
        np.testing.assert_array_equal(out.copy_to_host(), got)
    _raises(ValueError, lambda: cf.global_avgpool_nhwc(_nan(cuda, (2, 3, 3, 4)), _nan(cuda, (2, 3))), "(2, 4)")


def main(argv):
    on_gpu = os.environ.get("BITNET_TEST_CUDA") == "gpu"  # tests/gpu/cudasim.py: the real GPU instead
    if not on_gpu and os.environ.get("NUMBA_ENABLE_CUDASIM") != "1":
        raise SystemExit("run with NUMBA_ENABLE_CUDASIM=1 in the environment (the Numba CUDA simulator), "
                         "or with BITNET_TEST_CUDA=gpu on a machine with an NVIDIA GPU")
    from numba import config, cuda
    if on_gpu:
        assert not config.ENABLE_CUDASIM, "BITNET_TEST_CUDA=gpu runs on the GPU: unset NUMBA_ENABLE_CUDASIM"
        assert cuda.is_available(), "BITNET_TEST_CUDA=gpu, but numba.cuda finds no usable GPU here"
    else:
        assert config.ENABLE_CUDASIM, "numba was imported before NUMBA_ENABLE_CUDASIM was set"
    import bitnet.kernels.cuda_float as cf
    results = {}
    for name in argv or list(CHECKS):
        try:
            CHECKS[name](cuda, cf)
            results[name] = None
        except Exception:  # noqa: BLE001 - reported per check to the test
            results[name] = traceback.format_exc()
    print(json.dumps(results))
    return 0 if all(v is None for v in results.values()) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
