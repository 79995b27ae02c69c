"""Batch norm fused with a tiling max pool (``kernels.bn_pool``): the forward against batch norm
then max pooling (the same bits), the backward against a float64 NumPy reference of the
unfused formula; outputs poisoned first."""
from __future__ import annotations

import numpy as np
import pytest

from bitnet.kernels import batchnorm as KB
from bitnet.kernels import bn_pool as K
from bitnet.kernels import pooling as P

SHAPES = [((1, 3, 5, 7), (2, 2)), ((2, 1, 6, 6), (3, 3)), ((3, 4, 9, 8), (2, 2)), ((2, 5, 4, 9), (1, 3)),
          ((4, 2, 2, 2), (2, 2))]


def _stats(x):
    n, c = x.shape[:2]
    mean, invstd = np.empty(c), np.empty(c)
    KB.channel_stats(np.ascontiguousarray(x).reshape(n, c, -1), 1e-5, mean, invstd)
    return mean, invstd


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape,k", SHAPES, ids=str)
def test_forward_is_batch_norm_then_max_pool(shape, k, dtype):
    rng = np.random.default_rng(sum(shape))
    x = (rng.standard_normal(shape) * 3 + 1).astype(dtype)
    flat = x.reshape(-1)
    flat[1::4] = flat[0::4][:len(flat[1::4])]  # ties inside windows
    gamma = rng.standard_normal(shape[1]).astype(dtype)  # negative scales too
    beta = rng.standard_normal(shape[1]).astype(dtype)
    mean, invstd = _stats(x)
    oh, ow = shape[2] // k[0], shape[3] // k[1]
    out = np.full((shape[0], shape[1], oh, ow), np.nan, dtype)
    arg = np.full(out.shape, -1, np.int32)
    K.normalize_max_pool(x, mean, invstd, gamma, beta, *k, out, arg)
    z = np.empty(x.shape, dtype)
    KB.normalize_affine(x.reshape(shape[0], shape[1], -1), mean, invstd, gamma, beta, z.reshape(shape[0], shape[1], -1))
    ref = np.full(out.shape, np.nan, dtype)
    ref_arg = np.full(out.shape, -1, np.int32)
    P.max_pool_forward(z, *k, *k, 0, 0, ref, ref_arg)
    np.testing.assert_array_equal(out, ref)
    np.testing.assert_array_equal(arg, ref_arg)


def _reference_backward(g, arg, x, mean, invstd, gamma):
    """float64: scatter g to the argmax positions, then batch norm's backward formula."""
    n, c, h, w = x.shape
    gd = np.zeros((n * c, h * w))
    np.put_along_axis(gd, arg.reshape(n * c, -1).astype(np.int64), g.reshape(n * c, -1).astype(np.float64), 1)
    gd = gd.reshape(n, c, h, w)
    xm = x.astype(np.float64) - mean[None, :, None, None]
    m = n * h * w
    gb = gd.sum(axis=(0, 2, 3))
    gg = (gd * xm).sum(axis=(0, 2, 3)) * invstd
    k = gamma.astype(np.float64) * invstd
    gx = k[None, :, None, None] * (gd - gb[None, :, None, None] / m
                                   - xm * (gg * invstd)[None, :, None, None] / m)
    scale = np.abs(k)[None, :, None, None] * (np.abs(gd) + np.abs(gb / m)[None, :, None, None]
                                              + np.abs(xm * (gg * invstd)[None, :, None, None] / m))
    return gx, gg, gb, scale


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape,k", SHAPES, ids=str)
def test_backward_against_float64_reference(shape, k, dtype):
    rng = np.random.default_rng(sum(shape) + 1)
    x = (rng.standard_normal(shape) * 2 - 0.5).astype(dtype)
    gamma = rng.standard_normal(shape[1]).astype(dtype)
    beta = rng.standard_normal(shape[1]).astype(dtype)
    mean, invstd = _stats(x)
    oh, ow = shape[2] // k[0], shape[3] // k[1]
    out = np.empty((shape[0], shape[1], oh, ow), dtype)
    arg = np.empty(out.shape, np.int32)
    K.normalize_max_pool(x, mean, invstd, gamma, beta, *k, out, arg)
    g = rng.standard_normal(out.shape).astype(dtype)
    gx = np.full(shape, np.nan, dtype)
    gg, gb = np.full(shape[1], np.nan), np.full(shape[1], np.nan)
    K.batch_norm_max_pool_backward(g, arg, x, mean, invstd, gamma, gx, gg, gb)
    rx, rg, rb, scale = _reference_backward(g, arg, x, mean, invstd, gamma)
    # float64 sums of at most M = N*H*W terms: relative error ~M * 2^-53 of the sum of |terms|;
    # dx is then rounded once to x's dtype: half an ulp of the result, plus the sums' error
    # carried through (bounded by ``scale``, the sum of the formula's |terms|)
    eps = np.finfo(dtype).eps
    assert np.all(np.abs(gx - rx) <= eps * np.abs(rx) + 1e-12 * scale + 1e-300)
    m = shape[0] * shape[2] * shape[3]
    np.testing.assert_allclose(gb, rb, rtol=0, atol=m * 2.0 ** -52 * np.abs(g).sum())
    np.testing.assert_allclose(gg, rg, rtol=0, atol=m * 2.0 ** -52 * np.abs(g).sum() * np.abs(x).max() * 4
                               * invstd.max())


def test_tiles():
    assert K.tiles((1, 1, 4, 4), (2, 2), (2, 2), (0, 0))
    assert K.tiles((1, 1, 5, 4), (2, 2), (2, 2), (0, 0))   # a remainder row is dropped, as by the pool
    assert not K.tiles((1, 1, 4, 4), (2, 2), (1, 1), (0, 0))
    assert not K.tiles((1, 1, 4, 4), (2, 2), (2, 2), (1, 0))
    assert not K.tiles((1, 1, 1, 4), (2, 2), (2, 2), (0, 0))
