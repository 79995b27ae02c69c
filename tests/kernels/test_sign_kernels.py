"""The one-pass sign and straight-through mask kernels against NumPy, outputs poisoned with NaN."""
from __future__ import annotations

import numba
import numpy as np
import pytest

from bitnet.kernels import sign as S
from bitnet.kernels.threads import MIN_PARALLEL_WORK


def _inputs(rng, n, dtype, clip=1.0):
    x = (rng.standard_normal(n) * 1.5).astype(dtype)
    edges = [0.0, -0.0, clip, -clip, np.nan, np.inf, -np.inf, np.nextafter(dtype(clip), dtype(2))]
    x[:min(n, len(edges))] = np.array(edges[:n], dtype)
    return x


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("n", [0, 1, 7, 1001, MIN_PARALLEL_WORK + 3])
@pytest.mark.parametrize("threads", [1, 2])
def test_sign_and_mask_match_numpy(dtype, n, threads):
    rng = np.random.default_rng(n)
    x = _inputs(rng, n, dtype)
    g = rng.standard_normal(n).astype(dtype)
    previous = numba.get_num_threads()
    numba.set_num_threads(min(threads, numba.config.NUMBA_NUM_THREADS))
    try:
        out = np.full(n, np.nan, dtype)
        S.sign(x, out)
        np.testing.assert_array_equal(out, np.where(x < 0, dtype(-1), dtype(1)))
        for clip in (1.0, 0.5):
            out = np.full(n, np.nan, dtype)
            S.ste_mask(g, x, dtype(clip), out)
            np.testing.assert_array_equal(out, np.where(np.abs(x) <= dtype(clip), g, dtype(0)))
    finally:
        numba.set_num_threads(previous)


def test_quantizer_on_non_contiguous_and_0d_inputs():
    from bitnet import Tensor
    from bitnet import quantizers as Q
    x = np.random.default_rng(1).standard_normal((5, 6, 3)).astype(np.float32).transpose(2, 0, 1)[:, ::2]
    t = Tensor(x, requires_grad=True)
    y = Q.SteSign(0.7)(t)
    g = np.random.default_rng(2).standard_normal(y.shape).astype(np.float32)
    y.backward(g)
    np.testing.assert_array_equal(y.data, np.where(x < 0, -1, 1).astype(np.float32))
    np.testing.assert_array_equal(t.grad, np.where(np.abs(x) <= np.float32(0.7), g, 0))
    s = Tensor(np.float32(-0.25), requires_grad=True)
    z = Q.SteSign()(s)
    z.backward(np.float32(3))
    assert z.shape == () and z.data == -1 and s.grad.shape == () and s.grad == 3


@pytest.mark.parametrize("n", [1, 999, MIN_PARALLEL_WORK + 7])
def test_sign_reports_whether_every_value_is_within_the_clip(n):
    rng = np.random.default_rng(n)
    x = rng.uniform(-1, 1, n).astype(np.float32)
    x[0] = 1.0  # the boundary is within
    out = np.full(n, np.nan, np.float32)
    assert S.sign(x, out, 1.0)
    np.testing.assert_array_equal(out, np.where(x < 0, np.float32(-1), np.float32(1)))
    for bad in (np.float32(1.0000001), np.float32(-3), np.float32(np.nan)):
        y = x.copy()
        y[-1] = bad
        assert not S.sign(y, out, 1.0)
    assert S.sign(x * 5, out, None)


@pytest.mark.parametrize("scale", [0.9, 1.5])
def test_ste_sign_gradient_with_and_without_values_beyond_the_clip(scale):
    from bitnet import Tensor
    from bitnet import quantizers as Q
    rng = np.random.default_rng(7)
    x = (rng.uniform(-1, 1, (6, 50)) * scale).astype(np.float32)
    g = rng.standard_normal(x.shape).astype(np.float32)
    t = Tensor(x, requires_grad=True)
    Q.SteSign()(t).backward(g)
    np.testing.assert_array_equal(t.grad, np.where(np.abs(x) <= 1, g, np.float32(0)))
