"""1-bit quantizers: forward and backward against hand-computed values and direct NumPy formulas."""
import warnings

import numpy as np
import pytest

from bitnet import Tensor, no_grad
from bitnet import quantizers as Q


def run(q, x, g=None):
    """(output, input gradient) of q at x for the upstream gradient g (default: ones)."""
    t = Tensor(x, requires_grad=True)
    y = q(t)
    y.backward(np.ones_like(y.data) if g is None else g)
    return y.data, t.grad


def below(v, dtype):
    return np.nextafter(dtype(v), dtype(-np.inf))


def above(v, dtype):
    return np.nextafter(dtype(v), dtype(np.inf))


def sign_ref(x):
    return np.where(x >= 0, 1.0, -1.0).astype(x.dtype)


def random_with_edges(rng, dtype, clip=1.0):
    x = rng.standard_normal(2000) * 1.5
    x[:8] = [0.0, -0.0, clip, -clip, above(clip, np.float64), below(-clip, np.float64), 1e-30, -1e-30]
    return x.astype(dtype)


# -- ste_sign --------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_ste_sign_hand_values(dtype):
    x = np.array([-2.0, below(-1, dtype), -1.0, above(-1, dtype), -0.5, -0.0, 0.0, 0.5,
                  below(1, dtype), 1.0, above(1, dtype), 2.0], dtype=dtype)
    g = np.arange(1, 13, dtype=dtype)
    y, gx = run(Q.SteSign(), x, g)
    assert y.dtype == dtype and gx.dtype == dtype
    np.testing.assert_array_equal(y, [-1, -1, -1, -1, -1, 1, 1, 1, 1, 1, 1, 1])
    np.testing.assert_array_equal(gx, [0, 0, 3, 4, 5, 6, 7, 8, 9, 10, 0, 0])


def test_ste_sign_zero_is_plus_one():
    for dtype in (np.float16, np.float32, np.float64):
        y = Q.SteSign()(Tensor(np.array([0.0, -0.0], dtype))).data
        assert y.dtype == dtype
        np.testing.assert_array_equal(y, [1, 1])


def test_ste_sign_clip_value_boundary_in_input_dtype():
    # 0.1 is not representable: the boundary is compared in the input dtype, so float32(0.1) passes
    x = np.array([below(0.1, np.float32), np.float32(0.1), above(0.1, np.float32)], np.float32)
    _, gx = run(Q.SteSign(clip_value=0.1), x)
    np.testing.assert_array_equal(gx, [1, 1, 0])
    x = np.array([-0.5, 0.5, above(0.5, np.float64), -3.0])
    _, gx = run(Q.SteSign(clip_value=0.5), x)
    np.testing.assert_array_equal(gx, [1, 1, 0, 0])


def test_ste_sign_clip_none_passes_everywhere():
    x = np.array([-1e30, -2.0, 0.0, 1.0, 7.0, 1e30])
    g = np.array([1.0, 2, 3, 4, 5, 6])
    y, gx = run(Q.SteSign(clip_value=None), x, g)
    np.testing.assert_array_equal(y, [-1, -1, 1, 1, 1, 1])
    np.testing.assert_array_equal(gx, g)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("clip", [1.0, 0.25, 1.7])
def test_ste_sign_random(dtype, clip):
    rng = np.random.default_rng(0)
    x = random_with_edges(rng, dtype, clip)
    g = rng.standard_normal(x.shape).astype(dtype)
    y, gx = run(Q.SteSign(clip), x, g)
    np.testing.assert_array_equal(y, sign_ref(x))
    np.testing.assert_array_equal(gx, np.where(np.abs(x) <= dtype(clip), g, 0))
    assert y.dtype == gx.dtype == dtype


def test_ste_sign_nd_and_no_grad():
    x = np.random.default_rng(1).standard_normal((2, 3, 4, 5)).astype(np.float32)
    y = Q.SteSign()(Tensor(x, requires_grad=True))
    assert y.shape == x.shape and y.requires_grad
    with no_grad():
        assert not Q.SteSign()(Tensor(x, requires_grad=True)).requires_grad


def test_integer_input_becomes_float32():
    y = Q.SteSign()(Tensor(np.array([-2, 0, 3])))
    assert y.dtype == np.float32
    np.testing.assert_array_equal(y.data, [-1, 1, 1])


# -- approx_sign -----------------------------------------------------------------------------------
def test_approx_sign_hand_values():
    x = np.array([-1.5, -1.0, -0.75, -0.25, 0.0, 0.25, 0.75,
                  below(1, np.float64), 1.0, above(1, np.float64)])
    y, gx = run(Q.ApproxSign(), x)
    np.testing.assert_array_equal(y, [-1, -1, -1, -1, 1, 1, 1, 1, 1, 1])
    # 2 - 2|x|; just inside 1 the gradient is 2 - 2 (1 - 2^-53) = 2^-52
    np.testing.assert_array_equal(gx, [0, 0, 0.5, 1.5, 2, 1.5, 0.5, 2.0 ** -52, 0, 0])


def test_approx_sign_random_float64():
    rng = np.random.default_rng(2)
    x = random_with_edges(rng, np.float64)
    g = rng.standard_normal(x.shape)
    y, gx = run(Q.ApproxSign(), x, g)
    np.testing.assert_array_equal(y, sign_ref(x))
    ref = np.where(np.abs(x) <= 1, g * (2 - 2 * np.abs(x)), 0.0)
    np.testing.assert_allclose(gx, ref, rtol=1e-12, atol=1e-12)


def test_approx_sign_float32():
    y, gx = run(Q.ApproxSign(), np.array([-0.5, 0.0, 0.5], np.float32))
    assert y.dtype == gx.dtype == np.float32
    np.testing.assert_array_equal(gx, [1, 2, 1])


# -- swish_sign ------------------------------------------------------------------------------------
def swish_fn(x, beta):
    s = 1 / (1 + np.exp(-beta * x))
    return 2 * s * (1 + beta * x * (1 - s)) - 1


def swish_grad_formula(x, beta):
    return beta * (2 - beta * x * np.tanh(beta * x / 2)) / (1 + np.cosh(beta * x))


@pytest.mark.parametrize("beta", [5.0, 1.0, 2.5, 10.0])
def test_swish_sign_hand_values(beta):
    x = np.array([-3.0 / beta, -0.0, 0.0, 0.3])
    y, gx = run(Q.SwishSign(beta), x)
    np.testing.assert_array_equal(y, [-1, 1, 1, 1])
    assert gx[1] == beta and gx[2] == beta  # d/dx at 0 = beta * 2 / 2
    assert gx[0] < 0  # beyond |beta x| ~ 2.4 the derivative turns negative (the "swish" overshoot)


@pytest.mark.parametrize("beta", [5.0, 1.0, 2.5])
def test_swish_sign_random_matches_formula_and_central_differences(beta):
    rng = np.random.default_rng(3)
    x = rng.uniform(-3, 3, 500)
    x[0] = 0.0
    g = rng.standard_normal(x.shape)
    y, gx = run(Q.SwishSign(beta), x, g)
    np.testing.assert_array_equal(y, sign_ref(x))
    np.testing.assert_allclose(gx, g * swish_grad_formula(x, beta), rtol=1e-12, atol=1e-12)
    h = 1e-6
    numeric = (swish_fn(x + h, beta) - swish_fn(x - h, beta)) / (2 * h)
    np.testing.assert_allclose(gx, g * numeric, rtol=1e-6, atol=1e-6)


def test_swish_sign_far_tails_are_zero_without_warnings():
    x = np.array([-3e38, -1e3, -50.0, 50.0, 1e3, 3e38], np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        y, gx = run(Q.SwishSign(), x)
    assert gx.dtype == np.float32 and np.all(np.isfinite(gx))
    np.testing.assert_array_equal(gx, np.zeros(6))
    np.testing.assert_array_equal(y, [-1, -1, -1, 1, 1, 1])


# -- ste_heaviside ---------------------------------------------------------------------------------
def test_ste_heaviside_hand_values():
    x = np.array([-2.0, -1.0, -0.5, -0.0, 0.0, 0.5, 1.0,
                  above(1, np.float32), 2.0], np.float32)
    g = np.arange(1, 10, dtype=np.float32)
    y, gx = run(Q.SteHeaviside(), x, g)
    assert y.dtype == gx.dtype == np.float32
    np.testing.assert_array_equal(y, [0, 0, 0, 1, 1, 1, 1, 1, 1])
    np.testing.assert_array_equal(gx, [0, 2, 3, 4, 5, 6, 7, 0, 0])


def test_ste_heaviside_random_and_clip():
    rng = np.random.default_rng(4)
    x = random_with_edges(rng, np.float64, 0.5)
    g = rng.standard_normal(x.shape)
    y, gx = run(Q.SteHeaviside(clip_value=0.5), x, g)
    np.testing.assert_array_equal(y, (x >= 0).astype(np.float64))
    np.testing.assert_array_equal(gx, np.where(np.abs(x) <= 0.5, g, 0))
    _, gx = run(Q.SteHeaviside(clip_value=None), x, g)
    np.testing.assert_array_equal(gx, g)


# -- magnitude_aware_sign --------------------------------------------------------------------------
def test_magnitude_aware_sign_hand_values():
    w = np.array([[0.5, -1.0, 1.5], [-0.25, 0.0, 2.0]], np.float32)  # alpha = [1.0, 0.75]
    g = np.array([[1, 2, 3], [4, 5, 6]], np.float32)
    y, gw = run(Q.MagnitudeAwareSign(), w, g)
    assert y.dtype == gw.dtype == np.float32
    np.testing.assert_array_equal(y, [[1, -1, 1], [-0.75, 0.75, 0.75]])
    # ste_sign gradient (|w| <= 1) times alpha, nothing through alpha
    np.testing.assert_array_equal(gw, [[1, 2, 0], [3, 3.75, 0]])


def test_magnitude_aware_sign_per_channel_conv_weights_and_stop_gradient():
    rng = np.random.default_rng(5)
    w = (rng.standard_normal((4, 3, 3, 3)) * 0.8).astype(np.float64)
    w[0, 0, 0, 0], w[1, 0, 0, 0], w[2, 0, 0, 0] = 0.0, 1.0, -1.0
    g = rng.standard_normal(w.shape)
    y, gw = run(Q.MagnitudeAwareSign(), w, g)
    alpha = np.abs(w).reshape(4, -1).mean(axis=1).reshape(4, 1, 1, 1)
    np.testing.assert_array_equal(y, sign_ref(w) * alpha)
    np.testing.assert_array_equal(np.unique(np.abs(y[2])), alpha[2].ravel())
    _, ste = run(Q.SteSign(), w, g)
    np.testing.assert_array_equal(gw, ste * alpha)
    # the test discriminates: a gradient through alpha would differ
    through_alpha = (g * sign_ref(w)).reshape(4, -1).sum(1).reshape(4, 1, 1, 1) * sign_ref(w) / 27
    assert np.abs(through_alpha).max() > 1e-3


def test_magnitude_aware_sign_clip_none_and_1d():
    w = np.array([-3.0, 0.0, 0.5])
    y, gw = run(Q.MagnitudeAwareSign(clip_value=None), w)
    np.testing.assert_array_equal(y, [-3.0, 0.0, 0.5])  # 1-D: one weight per channel, alpha = |w|
    np.testing.assert_array_equal(gw, [3.0, 0.0, 0.5])
    y, _ = run(Q.MagnitudeAwareSign(), np.zeros((2, 3), np.float32))
    np.testing.assert_array_equal(y, np.zeros((2, 3)))


@pytest.mark.parametrize("cls", [Q.SteSign, Q.ApproxSign, Q.SwishSign, Q.SteHeaviside,
                                 Q.MagnitudeAwareSign])
def test_one_bit_precision_and_dtype(cls):
    q = cls()
    assert q.precision == 1
    for dtype in (np.float32, np.float64):
        y, gx = run(q, np.linspace(-2, 2, 11).astype(dtype).reshape(11, 1))
        assert y.dtype == gx.dtype == dtype
