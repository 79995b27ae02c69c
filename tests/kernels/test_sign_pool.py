"""kernels.sign_pool against a NumPy reference: sign of max pooling of an affine map, packed.

The reference computes what the float layers compute, step by step: z = scale * y + shift (float32),
max pooling with -inf padding and NaN propagation, then bit = (pooled < 0), packed by
``bits.pack_reference``; the kernels must give the same words, padding bits included."""
import numpy as np
import pytest

from bitnet.kernels.bits import pack_reference
from bitnet.kernels.pooling import pool_output_size
from bitnet.kernels.sign_pool import pool_signs_flat, pool_signs_nhwc


def _pooled(z, k, s, p, ceil):
    """Max pooling of channels-last z (N, H, W, C) as the float path does it (NaN wins)."""
    n, h, w, c = z.shape
    oh, ow = (pool_output_size(h, k[0], s[0], p[0], ceil), pool_output_size(w, k[1], s[1], p[1], ceil))
    out = np.empty((n, oh, ow, c), np.float32)
    for i in range(oh):
        for j in range(ow):
            y0, x0 = i * s[0] - p[0], j * s[1] - p[1]
            win = z[:, max(y0, 0):min(y0 + k[0], h), max(x0, 0):min(x0 + k[1], w)]
            m = win.max(axis=(1, 2))
            m[np.isnan(win).any(axis=(1, 2))] = np.nan
            out[:, i, j] = m
    return out


CASES = [  # (N, H, W, C), kernel, stride, padding, ceil_mode
    ((1, 24, 24, 64), (2, 2), (2, 2), (0, 0), False),
    ((3, 7, 9, 1), (2, 2), (2, 2), (0, 0), False),
    ((2, 7, 9, 65), (3, 3), (2, 2), (1, 1), False),
    ((2, 8, 5, 130), (3, 2), (2, 1), (1, 0), True),
    ((1, 5, 5, 63), (1, 1), (1, 1), (0, 0), False),
    ((4, 6, 6, 3), (2, 3), (3, 2), (0, 1), True),
]


@pytest.mark.parametrize("shape,k,s,p,ceil", CASES)
@pytest.mark.parametrize("affine", [False, True])
def test_pool_signs_match_the_float_layers(shape, k, s, p, ceil, affine):
    rng = np.random.default_rng(sum(shape))
    y = rng.standard_normal(shape).astype(np.float32)
    y[rng.random(shape) < 0.02] = np.nan
    y[rng.random(shape) < 0.05] = 0.0
    c = shape[3]
    scale = rng.uniform(-2, 2, c).astype(np.float32) if affine else None
    shift = rng.normal(size=c).astype(np.float32) if affine else None
    z = y * scale + shift if affine else y
    pooled = _pooled(z, k, s, p, ceil)
    size = pooled.shape[1:3]
    got = pool_signs_nhwc(y, scale, shift, k, s, p, size)
    assert got.dtype == np.uint64
    np.testing.assert_array_equal(got, pack_reference(pooled))
    flat = pool_signs_flat(y, scale, shift, k, s, p, size)
    np.testing.assert_array_equal(flat, pack_reference(pooled.transpose(0, 3, 1, 2).reshape(shape[0], -1)))


def test_non_contiguous_input_and_default_size():
    rng = np.random.default_rng(0)
    nchw = rng.standard_normal((2, 70, 8, 6)).astype(np.float32)
    y = nchw.transpose(0, 2, 3, 1)  # a channels-last view, not contiguous
    expected = pack_reference(_pooled(np.ascontiguousarray(y), (2, 2), (2, 2), (0, 0), False))
    np.testing.assert_array_equal(pool_signs_nhwc(y, kernel=(2, 2), stride=(2, 2)), expected)


def test_empty_batch():
    y = np.zeros((0, 4, 4, 8), np.float32)
    assert pool_signs_nhwc(y, kernel=(2, 2), stride=(2, 2)).shape == (0, 2, 2, 1)
    assert pool_signs_flat(y, kernel=(2, 2), stride=(2, 2)).shape == (0, 1)


@pytest.mark.parametrize("flat", [False, True])
@pytest.mark.parametrize("n", [1, 64])  # one thread's work, and work split across threads
def test_bound_calls_equal_prepared_calls(flat, n):
    from bitnet.kernels.sign_pool import PoolSigns
    rng = np.random.default_rng(n)
    y = rng.standard_normal((n, 12, 12, 70)).astype(np.float32)
    g, b = rng.normal(size=70).astype(np.float32), rng.normal(size=70).astype(np.float32)
    ps = PoolSigns(y.shape, g, b, (2, 2), (2, 2), (0, 0), (6, 6), flat=flat)
    bound = ps.bind()
    first = bound(y)
    np.testing.assert_array_equal(first, ps(y))
    assert bound(-y) is first
    np.testing.assert_array_equal(first, ps(-y))
    with pytest.raises(ValueError, match="prepared for maps"):
        bound(y[:, :10])
