"""Forward outputs of conv2d, pooling and batch norm against independent NumPy references, on
random awkward geometries in float32 and float64; the Numba kernels of ``bitnet.kernels`` called
directly with NaN-poisoned ``out`` buffers so that any element left unwritten shows up."""
import os
import sys

import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bitnet_gradcheck import distinct  # noqa: E402
import bitnet_np_reference as R  # noqa: E402

import bitnet.functional as F  # noqa: E402
from bitnet import Tensor  # noqa: E402
from bitnet.kernels import batchnorm as KB  # noqa: E402
from bitnet.kernels import im2col as KI  # noqa: E402
from bitnet.kernels import pooling as KP  # noqa: E402

# float32: values O(1), at most ~50 products per output -> error ~ 50 * 6e-8; float64: ~1e-15
TOL = {np.float32: dict(rtol=1e-5, atol=1e-5), np.float64: dict(rtol=1e-12, atol=1e-12)}


def random_conv_geometry(rng):
    """A random convolution: odd/even sizes, stride 1-2, padding 0-2, dilation 1-2, groups."""
    while True:
        groups = int(rng.choice([1, 1, 2, 3]))
        cg, og = int(rng.integers(1, 3)), int(rng.integers(1, 3))
        kh, kw = int(rng.integers(1, 4)), int(rng.integers(1, 4))
        stride = (int(rng.integers(1, 3)), int(rng.integers(1, 3)))
        padding = (int(rng.integers(0, 3)), int(rng.integers(0, 3)))
        dilation = (int(rng.integers(1, 3)), int(rng.integers(1, 3)))
        n, h, w = int(rng.integers(1, 3)), int(rng.integers(3, 10)), int(rng.integers(3, 10))
        if R.out_size(h, kh, stride[0], padding[0], dilation[0]) > 0 and \
           R.out_size(w, kw, stride[1], padding[1], dilation[1]) > 0:
            return (n, cg * groups, h, w), (og * groups, cg, kh, kw), stride, padding, dilation, groups


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("seed", range(12))
def test_conv2d_forward_random_geometry(seed, dtype):
    rng = np.random.default_rng(100 + seed)
    xs, ws, stride, padding, dilation, groups = random_conv_geometry(rng)
    x, w, b = (rng.standard_normal(s).astype(dtype) for s in (xs, ws, ws[:1]))
    use_bias = seed % 2 == 0
    out = F.conv2d(Tensor(x), Tensor(w), Tensor(b) if use_bias else None,
                   stride, padding, dilation, groups)
    assert out.dtype == dtype
    ref = R.conv2d_ref(x, w, b if use_bias else None, stride, padding, dilation, groups)
    assert out.shape == ref.shape
    np.testing.assert_allclose(out.data, ref, **TOL[dtype])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("case", [
    ((1, 3, 7, 7), (4, 3, 3, 3), 2, 1, 1, 1),    # batch 1, odd size, stride 2, padding
    ((2, 4, 9, 8), (4, 2, 3, 3), 1, 2, 2, 2),    # dilation 2, groups 2
    ((2, 3, 6, 5), (6, 1, 3, 3), 2, 1, 1, 3),    # depthwise with multiplier 2
    ((3, 2, 5, 5), (3, 2, 5, 5), 1, 0, 1, 1),    # kernel = input: 1x1 output
], ids=["b1_s2_p1", "d2_g2", "depthwise", "full_kernel"])
def test_conv2d_forward_named_geometries(case, dtype):
    xs, ws, stride, padding, dilation, groups = case
    rng = np.random.default_rng(7)
    x, w, b = (rng.standard_normal(s).astype(dtype) for s in (xs, ws, ws[:1]))
    out = F.conv2d(Tensor(x), Tensor(w), Tensor(b), stride, padding, dilation, groups)
    ref = R.conv2d_ref(x, w, b, (stride,) * 2, (padding,) * 2, (dilation,) * 2, groups)
    np.testing.assert_allclose(out.data, ref, **TOL[dtype])


def test_conv2d_noncontiguous_input():
    rng = np.random.default_rng(8)
    x = rng.standard_normal((5, 3, 6, 2)).transpose(3, 1, 0, 2)  # (2, 3, 5, 6), not contiguous
    w = rng.standard_normal((2, 3, 3, 3))
    out = F.conv2d(Tensor(x), Tensor(w), padding=1)
    np.testing.assert_allclose(out.data, R.conv2d_ref(x, w, padding=(1, 1)), rtol=1e-12, atol=1e-12)


def random_pool_geometry(rng):
    while True:
        kh, kw = int(rng.integers(1, 4)), int(rng.integers(1, 4))
        sh, sw = int(rng.integers(1, 4)), int(rng.integers(1, 4))
        ph, pw = int(rng.integers(0, kh // 2 + 1)), int(rng.integers(0, kw // 2 + 1))
        n, c, h, w = int(rng.integers(1, 3)), int(rng.integers(1, 4)), int(rng.integers(2, 10)), int(rng.integers(2, 10))
        if R.out_size(h, kh, sh, ph) > 0 and R.out_size(w, kw, sw, pw) > 0:
            return (n, c, h, w), (kh, kw), (sh, sw), (ph, pw)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("mode", ["max", "avg"])
@pytest.mark.parametrize("seed", range(10))
def test_pool_forward_random_geometry(seed, mode, dtype):
    rng = np.random.default_rng(200 + seed)
    xs, k, s, p = random_pool_geometry(rng)
    x = rng.standard_normal(xs).astype(dtype) - 3.0  # all negative: zero padding must not win the max
    fn = F.max_pool2d if mode == "max" else F.avg_pool2d
    out = fn(Tensor(x), k, s, p)
    assert out.dtype == dtype
    ref = R.pool2d_ref(x, k, s, p, mode)
    assert out.shape == ref.shape
    np.testing.assert_allclose(out.data, ref, **TOL[dtype])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", [(6, 5), (1, 3, 5, 7), (3, 2, 4, 3), (2, 4, 1, 1)])
def test_batch_norm_train_forward_and_running_stats(shape, dtype):
    rng = np.random.default_rng(9)
    c = shape[1]
    x = (rng.standard_normal(shape) * rng.uniform(0.5, 3, (1, c) + (1,) * (len(shape) - 2))
         + rng.uniform(-2, 2, (1, c) + (1,) * (len(shape) - 2))).astype(dtype)
    gamma, beta = rng.uniform(0.5, 1.5, c).astype(dtype), rng.standard_normal(c).astype(dtype)
    rm, rv = rng.standard_normal(c).astype(dtype), rng.uniform(0.5, 2, c).astype(dtype)
    rm0, rv0 = rm.copy(), rv.copy()
    eps, mom = 1e-3, 0.3
    out = F.batch_norm(Tensor(x), rm, rv, Tensor(gamma), Tensor(beta), training=True, momentum=mom, eps=eps)
    assert out.dtype == dtype
    ref, mean, var = R.batch_norm_train_ref(x, gamma, beta, eps)
    np.testing.assert_allclose(out.data, ref, **TOL[dtype])
    m = x.size // c
    erm, erv = R.running_update_ref(rm0.astype(np.float64), rv0.astype(np.float64), mean, var, m, mom)
    assert rm.dtype == dtype and rv.dtype == dtype  # updated in place
    np.testing.assert_allclose(rm, erm, **TOL[dtype])
    np.testing.assert_allclose(rv, erv, **TOL[dtype])


def test_batch_norm_running_stats_over_several_steps_default_momentum():
    rng = np.random.default_rng(10)
    rm, rv = np.zeros(3), np.ones(3)
    erm, erv = rm.copy(), rv.copy()
    g, b = Tensor(np.ones(3)), Tensor(np.zeros(3))
    for _ in range(4):
        x = rng.standard_normal((4, 3, 2, 2)) * 2 + 1
        F.batch_norm(Tensor(x), rm, rv, g, b, training=True)
        _, mean, var = R.batch_norm_train_ref(x, np.ones(3), np.zeros(3), 1e-5)
        erm, erv = R.running_update_ref(erm, erv, mean, var, 16, 0.1)
    np.testing.assert_allclose(rm, erm, rtol=1e-12)
    np.testing.assert_allclose(rv, erv, rtol=1e-12)
    # eval mode leaves the running statistics alone
    F.batch_norm(Tensor(x), rm, rv, g, b, training=False)
    np.testing.assert_allclose(rm, erm, rtol=1e-12)


def test_batch_norm_large_mean_small_std_is_accurate():
    """|mean| >> std: the shifted one-pass statistics must not cancel catastrophically."""
    rng = np.random.default_rng(11)
    x = 1e4 + rng.standard_normal((64, 2)) * 1e-2
    out = F.batch_norm(Tensor(x), None, None, Tensor(np.ones(2)), Tensor(np.zeros(2)), eps=1e-12)
    ref, _, _ = R.batch_norm_train_ref(x, np.ones(2), np.zeros(2), 1e-12)
    np.testing.assert_allclose(out.data, ref, rtol=1e-7, atol=1e-7)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_batch_norm_eval_forward(dtype):
    rng = np.random.default_rng(12)
    x = rng.standard_normal((2, 3, 3, 5)).astype(dtype)
    gamma, beta = rng.uniform(0.5, 1.5, 3).astype(dtype), rng.standard_normal(3).astype(dtype)
    rm, rv = rng.standard_normal(3).astype(dtype), rng.uniform(0.5, 2, 3).astype(dtype)
    out = F.batch_norm(Tensor(x), rm, rv, Tensor(gamma), Tensor(beta), training=False, eps=1e-4)
    assert out.dtype == dtype
    np.testing.assert_allclose(out.data, R.batch_norm_eval_ref(x, gamma, beta, rm, rv, 1e-4), **TOL[dtype])


# -- kernels called directly with poisoned output buffers ------------------------------------------

def im2col_ref(x, kh, kw, sh, sw, ph, pw, dh, dw, oh, ow):
    n, c, h, w = x.shape
    xp = np.zeros((n, c, h + 2 * ph, w + 2 * pw), x.dtype)
    xp[:, :, ph:ph + h, pw:pw + w] = x
    cols = np.empty((c, kh, kw, n, oh, ow), x.dtype)
    for i in range(kh):
        for j in range(kw):
            patch = xp[:, :, i * dh: i * dh + sh * (oh - 1) + 1: sh, j * dw: j * dw + sw * (ow - 1) + 1: sw]
            cols[:, i, j] = patch.transpose(1, 0, 2, 3)
    return cols.reshape(c * kh * kw, n * oh * ow)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("geom", [(3, 3, 1, 1, 0, 0, 1, 1), (3, 2, 2, 2, 1, 2, 1, 1),
                                  (3, 3, 2, 1, 2, 1, 2, 2), (1, 1, 3, 2, 0, 0, 1, 1),
                                  (2, 3, 1, 3, 1, 1, 2, 1),
                                  # "same" stride-1 borders (col2im's one run per tap and image)
                                  (3, 3, 1, 1, 1, 1, 1, 1), (3, 3, 1, 1, 2, 2, 2, 2), (3, 5, 1, 1, 1, 2, 1, 1),
                                  (1, 1, 1, 1, 0, 0, 1, 1), (5, 3, 1, 1, 2, 1, 1, 1)], ids=str)
def test_im2col_and_col2im_kernels_poisoned(geom, dtype):
    kh, kw, sh, sw, ph, pw, dh, dw = geom
    rng = np.random.default_rng(13)
    x = rng.standard_normal((2, 3, 7, 6)).astype(dtype)
    oh, ow = KI.conv_output_size(7, kh, sh, ph, dh), KI.conv_output_size(6, kw, sw, pw, dw)
    cols = np.full((3 * kh * kw, 2 * oh * ow), np.nan, dtype)
    KI.im2col(x, kh, kw, sh, sw, ph, pw, dh, dw, oh, ow, cols)
    assert not np.isnan(cols).any(), "im2col left elements unwritten"
    np.testing.assert_array_equal(cols, im2col_ref(x, kh, kw, sh, sw, ph, pw, dh, dw, oh, ow))
    # col2im is the adjoint of im2col: <im2col(x), c> == <x, col2im(c)>, and fully overwrites out
    c = rng.standard_normal(cols.shape).astype(dtype)
    back = np.full(x.shape, np.nan, dtype)
    KI.col2im(c, kh, kw, sh, sw, ph, pw, dh, dw, oh, ow, back)
    assert not np.isnan(back).any(), "col2im left elements unwritten"
    # reference adjoint by scatter-add through the padded index map
    idx = im2col_ref(np.arange(x.size, dtype=np.float64).reshape(x.shape) + 1, kh, kw, sh, sw, ph, pw, dh, dw, oh, ow)
    ref = np.zeros(x.size + 1)
    np.add.at(ref, idx.astype(np.int64).ravel(), c.astype(np.float64).ravel())  # index 0 = padding
    np.testing.assert_allclose(back.ravel(), ref[1:], **TOL[dtype])


def test_swap_leading_axes_poisoned():
    rng = np.random.default_rng(14)
    a = rng.standard_normal((3, 5, 7))
    out = np.full((5, 3, 7), np.nan)
    bias = rng.standard_normal(3)
    KI.swap_leading_axes(a, bias, out)  # out[j, i] = a[i, j] + bias[i]
    np.testing.assert_array_equal(out, a.transpose(1, 0, 2) + bias[None, :, None])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("geom", [(2, 2, 2, 2, 0, 0), (3, 3, 2, 2, 1, 1), (3, 2, 1, 3, 1, 0)], ids=str)
def test_pooling_kernels_poisoned(geom, dtype):
    kh, kw, sh, sw, ph, pw = geom
    rng = np.random.default_rng(15)
    x = distinct(rng, (2, 3, 7, 5)).astype(dtype)
    oh, ow = R.out_size(7, kh, sh, ph), R.out_size(5, kw, sw, pw)
    out = np.full((2, 3, oh, ow), np.nan, dtype)
    argmax = np.full((2, 3, oh, ow), -1, np.int32)
    KP.max_pool_forward(x, kh, kw, sh, sw, ph, pw, out, argmax)
    assert not np.isnan(out).any() and (argmax >= 0).all()
    np.testing.assert_array_equal(out, R.pool2d_ref(x, (kh, kw), (sh, sw), (ph, pw), "max").astype(dtype))
    planes = x.reshape(6, -1)
    np.testing.assert_array_equal(np.take_along_axis(planes, argmax.reshape(6, -1), 1).reshape(out.shape), out)
    g = rng.standard_normal(out.shape).astype(dtype)
    gin = np.full(x.shape, np.nan, dtype)
    KP.max_pool_backward(g, argmax, gin)
    ref = np.zeros((6, 7 * 5))
    for p in range(6):
        np.add.at(ref[p], argmax.reshape(6, -1)[p], g.reshape(6, -1)[p])
    np.testing.assert_allclose(gin.reshape(6, -1), ref, **TOL[dtype])

    aout = np.full((2, 3, oh, ow), np.nan, dtype)
    KP.avg_pool_forward(x, kh, kw, sh, sw, ph, pw, aout)
    assert not np.isnan(aout).any()
    np.testing.assert_allclose(aout, R.pool2d_ref(x, (kh, kw), (sh, sw), (ph, pw), "avg"), **TOL[dtype])
    agin = np.full(x.shape, np.nan, dtype)
    KP.avg_pool_backward(g, kh, kw, sh, sw, ph, pw, agin)
    assert not np.isnan(agin).any()
    # adjoint identity: <avg_pool(x), g> == <x, avg_pool_backward(g)>
    np.testing.assert_allclose(np.sum(aout.astype(np.float64) * g), np.sum(x.astype(np.float64) * agin), rtol=1e-5 if dtype == np.float32 else 1e-12)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", [(5, 3, 1), (2, 4, 7), (1, 2, 9)])
def test_batchnorm_kernels_poisoned(shape, dtype):
    rng = np.random.default_rng(16)
    c = shape[1]
    x = (rng.standard_normal(shape) * 2 + 5).astype(dtype)
    gamma, beta = rng.uniform(0.5, 1.5, c).astype(dtype), rng.standard_normal(c).astype(dtype)
    eps = 1e-5
    mean, invstd = np.full(c, np.nan), np.full(c, np.nan)
    KB.channel_stats(x, eps, mean, invstd)
    x64 = x.astype(np.float64)
    rmean = x64.mean(axis=(0, 2))
    rvar = ((x64 - rmean[None, :, None]) ** 2).mean(axis=(0, 2))
    # float32 inputs: differences may be rounded to float32 (see the float64-accumulation test)
    stats_rtol = 1e-10 if dtype == np.float64 else 1e-6
    np.testing.assert_allclose(mean, rmean, rtol=stats_rtol)
    np.testing.assert_allclose(invstd, 1 / np.sqrt(rvar + eps), rtol=stats_rtol)
    out = np.full(shape, np.nan, dtype)
    KB.normalize_affine(x, mean, invstd, gamma, beta, out)
    ref = (x64 - rmean[None, :, None]) / np.sqrt(rvar + eps)[None, :, None] * gamma[None, :, None] + beta[None, :, None]
    assert not np.isnan(out).any()
    np.testing.assert_allclose(out, ref, **TOL[dtype])
    g = rng.standard_normal(shape).astype(dtype)
    gx, gg, gb = np.full(shape, np.nan, dtype), np.full(c, np.nan), np.full(c, np.nan)
    KB.batch_norm_backward(g, x, mean, invstd, gamma, gx, gg, gb)
    assert not (np.isnan(gx).any() or np.isnan(gg).any() or np.isnan(gb).any())
    xhat = (x64 - mean[None, :, None]) * invstd[None, :, None]  # backward given the kernel's stats
    g64 = g.astype(np.float64)
    np.testing.assert_allclose(gb, g64.sum(axis=(0, 2)), rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(gg, (g64 * xhat).sum(axis=(0, 2)), rtol=1e-10, atol=1e-10)
    m = shape[0] * shape[2]
    rgx = (gamma[None, :, None] * invstd[None, :, None] / m) * (m * g64 - gb[None, :, None] - xhat * gg[None, :, None])
    np.testing.assert_allclose(gx, rgx, **TOL[dtype])


def test_channel_stats_accumulates_float32_input_in_float64():
    """The kernel's docstring promises float64 statistics. For float32 input the variance must then
    be exact to ~1e-12 (float32 values are exact in float64), not to float32's ~1e-7."""
    rng = np.random.default_rng(17)
    x = (rng.standard_normal((8, 3, 16)) * 2 + 5).astype(np.float32)
    mean, invstd = np.empty(3), np.empty(3)
    KB.channel_stats(x, 0.0, mean, invstd)
    x64 = x.astype(np.float64)
    var = ((x64 - x64.mean(axis=(0, 2))[None, :, None]) ** 2).mean(axis=(0, 2))
    np.testing.assert_allclose(mean, x64.mean(axis=(0, 2)), rtol=1e-12)
    np.testing.assert_allclose(1 / invstd ** 2, var, rtol=1e-11)


@pytest.mark.parametrize("geom", [(3, 3, 1, 1), (3, 3, 2, 2), (3, 5, 1, 2), (5, 3, 2, 1)], ids=str)
def test_col2im_of_a_same_border_gives_the_bits_of_one_run_per_row(geom):
    """The stride-1 "same" path adds the same terms in the same order as the general kernel."""
    from bitnet.kernels.threads import parallel
    kh, kw, ph, pw = geom
    dh, dw = (ph * 2 // (kh - 1), pw * 2 // (kw - 1))
    n, c, h, w = 3, 5, 8, 9
    rng = np.random.default_rng(sum(geom))
    cols = rng.standard_normal((c * kh * kw, n * h * w)).astype(np.float32)
    same, general = np.empty((n, c, h, w), np.float32), np.empty((n, c, h, w), np.float32)
    KI.col2im(cols, kh, kw, 1, 1, ph, pw, dh, dw, h, w, same)
    parallel(KI._col2im, c, cols, kh, kw, 1, 1, ph, pw, dh, dw, h, w, np.zeros((0, 0), np.float32), general,
             cost=1)  # no masks: one run per output row
    np.testing.assert_array_equal(same, general)
