"""Max pooling's tiling case (stride = window, no padding) on flat indices, against a NumPy
reference of the rule: the first maximum of each window in scan order, or its last NaN."""
from __future__ import annotations

import numpy as np
import pytest

from bitnet import Tensor
from bitnet import functional as F
from bitnet.kernels import pooling as P


def _reference(x, k):
    n, c, h, w = x.shape
    oh, ow = h // k[0], w // k[1]
    out = np.empty((n, c, oh, ow), x.dtype)
    arg = np.empty((n, c, oh, ow), np.int64)
    for idx in np.ndindex(n, c, oh, ow):
        a, b, oy, ox = idx
        best, best_k = None, None
        for i in range(k[0]):
            for j in range(k[1]):
                y, xx = oy * k[0] + i, ox * k[1] + j
                v = x[a, b, y, xx]
                if best is None or v > best or v != v:
                    best, best_k = v, y * w + xx
        out[idx], arg[idx] = best, best_k
    return out, arg


def _awkward(rng, shape, dtype):
    x = rng.integers(-3, 4, shape).astype(dtype)  # many ties
    x.reshape(-1)[::11] = np.nan
    return x


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape,k", [((1, 1, 2, 2), (2, 2)), ((3, 5, 7, 9), (2, 2)), ((2, 3, 9, 6), (3, 3)),
                                     ((1, 2, 4, 9), (1, 3)), ((2, 1, 6, 6), (2, 3))], ids=str)
def test_tiled_max_pool_forward_and_backward(shape, k, dtype):
    rng = np.random.default_rng(sum(shape))
    x = _awkward(rng, shape, dtype)
    oh, ow = shape[2] // k[0], shape[3] // k[1]
    out = np.full((shape[0], shape[1], oh, ow), 7, dtype)
    arg = np.full(out.shape, -1, np.int32)
    P.max_pool_forward(x, *k, *k, 0, 0, out, arg)
    ref, ref_arg = _reference(x, k)
    np.testing.assert_array_equal(out, ref)
    np.testing.assert_array_equal(arg, ref_arg)
    g = rng.standard_normal(out.shape).astype(dtype)
    gin = np.full(shape, np.nan, dtype)
    P.max_pool_backward(g, arg, gin)
    expect = np.zeros((shape[0] * shape[1], shape[2] * shape[3]), dtype)
    for p in range(expect.shape[0]):
        np.add.at(expect[p], ref_arg.reshape(expect.shape[0], -1)[p], g.reshape(expect.shape[0], -1)[p])
    np.testing.assert_array_equal(gin.reshape(expect.shape), expect)


def test_max_pool_op_on_a_non_contiguous_input():
    rng = np.random.default_rng(3)
    base = _awkward(rng, (4, 3, 8, 10), np.float32)
    x = base.transpose(0, 1, 3, 2)[:, :, ::2]  # (4, 3, 5, 8), strided
    t = Tensor(x, requires_grad=True)
    y = F.max_pool2d(t, 2)
    ref, ref_arg = _reference(np.ascontiguousarray(x), (2, 2))
    np.testing.assert_array_equal(y.data, ref)
    g = rng.standard_normal(y.shape).astype(np.float32)
    y.backward(g)
    expect = np.zeros((12, 40), np.float32)
    for p in range(12):
        np.add.at(expect[p], ref_arg.reshape(12, -1)[p], g.reshape(12, -1)[p])
    np.testing.assert_array_equal(t.grad.reshape(12, -1), expect)
