"""k-bit DoReFa quantizers, Identity and the for_bits shorthand."""
import numpy as np
import pytest

from bitnet import Tensor
from bitnet import quantizers as Q


def run(q, x, g=None):
    t = Tensor(x, requires_grad=True)
    y = q(t)
    y.backward(np.ones_like(y.data) if g is None else g)
    return y.data, t.grad


# -- dorefa_activation -----------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_dorefa_activation_hand_values_2bit(dtype):
    d = dtype
    # v * 3 = 0.5 -> 0 and 2.5 -> 2: np.round rounds half to even
    x = np.array([-0.5, np.nextafter(d(0), d(-1)), -0.0, 0.0, d(1) / d(6), 0.2, 0.5, d(5) / d(6),
                  np.nextafter(d(1), d(0)), 1.0, np.nextafter(d(1), d(2)), 1.5], dtype=d)
    g = np.arange(1, 13, dtype=d)
    y, gx = run(Q.DoReFaActivation(2), x, g)
    assert y.dtype == gx.dtype == d
    third = d(1) / d(3)
    two_thirds = d(2) / d(3)
    np.testing.assert_array_equal(y, [0, 0, 0, 0, 0, third, two_thirds, two_thirds, 1, 1, 1, 1])
    np.testing.assert_array_equal(gx, [0, 0, 3, 4, 5, 6, 7, 8, 9, 10, 0, 0])


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
def test_dorefa_activation_random_matches_formula(bits):
    rng = np.random.default_rng(bits)
    x = rng.uniform(-0.5, 1.5, 3000).astype(np.float32)
    g = rng.standard_normal(x.shape).astype(np.float32)
    y, gx = run(Q.DoReFaActivation(bits), x, g)
    n = np.float32(2 ** bits - 1)
    np.testing.assert_array_equal(y, np.round(np.clip(x, 0, 1) * n) / n)
    np.testing.assert_array_equal(gx, np.where((x >= 0) & (x <= 1), g, 0))
    assert y.dtype == gx.dtype == np.float32


@pytest.mark.parametrize("bits", [2, 3, 4, 5, 8, 10])
def test_dorefa_activation_exactly_2k_levels(bits):
    x = np.linspace(-0.5, 1.5, 200_001).astype(np.float32)
    y = Q.DoReFaActivation(bits)(Tensor(x)).data
    levels = np.unique(y)
    assert levels.size == 2 ** bits
    assert levels[0] == 0 and levels[-1] == 1
    n = np.float32(2 ** bits - 1)
    np.testing.assert_array_equal(levels, np.arange(2 ** bits, dtype=np.float32) / n)
    assert Q.DoReFaActivation(bits).precision == bits


# -- dorefa_weight ---------------------------------------------------------------------------------
def test_dorefa_weight_hand_values():
    # tanh(20) rounds to 1.0 in float64, so m = 1 and v = [0, 1/2, 1] -> 3v = [0, 1.5, 3] -> [0, 2, 3]
    w = np.array([-20.0, 0.0, 20.0])
    g = np.array([5.0, 7.0, 11.0])
    y, gw = run(Q.DoReFaWeight(2), w, g)
    np.testing.assert_array_equal(y, [-1.0, 2 * (2.0 / 3) - 1, 1.0])
    np.testing.assert_array_equal(gw, [0.0, 7.0, 0.0])  # g (1 - tanh^2) / m


def test_dorefa_weight_all_zero_uses_m_one():
    y, gw = run(Q.DoReFaWeight(3), np.zeros((2, 2), np.float32))
    assert y.dtype == gw.dtype == np.float32
    level = np.float32(2) * (np.float32(4) / np.float32(7)) - 1  # v = 1/2 -> 3.5 -> 4 (half to even)
    np.testing.assert_array_equal(y, np.full((2, 2), level))
    np.testing.assert_array_equal(gw, np.ones((2, 2)))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("bits", [2, 4])
def test_dorefa_weight_random_matches_formula(dtype, bits):
    rng = np.random.default_rng(10 + bits)
    w = (rng.standard_normal((6, 3, 3, 3)) * 0.3).astype(dtype)
    w[0] *= 5  # channels differ in range: m is the max over the whole tensor, not per channel
    g = rng.standard_normal(w.shape).astype(dtype)
    y, gw = run(Q.DoReFaWeight(bits), w, g)
    t = np.tanh(w)
    m = np.abs(t).max()
    n = dtype(2 ** bits - 1)
    np.testing.assert_array_equal(y, 2 * (np.round((t / (2 * m) + dtype(0.5)) * n) / n) - 1)
    np.testing.assert_allclose(gw, g * (1 - t * t) / m, rtol=1e-6 if dtype == np.float32 else 1e-13)
    assert y.dtype == gw.dtype == dtype
    assert np.abs(y).max() == 1


@pytest.mark.parametrize("bits", [2, 3, 4, 5, 8])
def test_dorefa_weight_exactly_2k_levels(bits):
    w = np.linspace(-3, 3, 200_001).astype(np.float32)
    y = Q.DoReFaWeight(bits)(Tensor(w)).data
    levels = np.unique(y)
    assert levels.size == 2 ** bits
    assert levels[0] == -1 and levels[-1] == 1
    n = np.float32(2 ** bits - 1)
    np.testing.assert_array_equal(levels, 2 * (np.arange(2 ** bits, dtype=np.float32) / n) - 1)
    assert Q.DoReFaWeight(bits).precision == bits


@pytest.mark.parametrize("cls", [Q.DoReFaActivation, Q.DoReFaWeight])
@pytest.mark.parametrize("bad", [0, 1, 32, 33, -2, 2.0, 1.5, "4", True, None])
def test_kbit_bad_bits(cls, bad):
    with pytest.raises(ValueError, match=r"2\.\.31") as e:
        cls(bad)
    assert repr(bad) in str(e.value)


@pytest.mark.parametrize("cls", [Q.DoReFaActivation, Q.DoReFaWeight])
def test_kbit_accepts_numpy_int_and_limits(cls):
    assert cls(np.int64(4)).bits == 4 and type(cls(np.int64(4)).bits) is int
    assert cls(2).precision == 2 and cls(31).precision == 31


# -- identity --------------------------------------------------------------------------------------
def test_identity():
    q = Q.Identity()
    assert q.precision == 32
    t = Tensor(np.array([-2.5, 0.0, 3.0], np.float32), requires_grad=True)
    y = q(t)
    assert y is t
    (y * 2.0).sum().backward()
    np.testing.assert_array_equal(t.grad, [2, 2, 2])
    arr = np.arange(3.0)
    np.testing.assert_array_equal(q(arr).data, arr)


# -- for_bits --------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["activation", "weight"])
def test_for_bits(kind):
    assert Q.for_bits(1, kind) == Q.SteSign()
    assert Q.for_bits(32, kind) is None
    cls = Q.DoReFaActivation if kind == "activation" else Q.DoReFaWeight
    for bits in (2, 3, 8, 31, np.int32(5)):
        q = Q.for_bits(bits, kind)
        assert type(q) is cls and q.bits == bits and q.precision == bits


@pytest.mark.parametrize("bad", [0, 33, -1, 1.5, 2.0, "2", True, False, None])
def test_for_bits_bad_values(bad):
    with pytest.raises(ValueError, match=r"1\.\.32") as e:
        Q.for_bits(bad, "activation")
    assert repr(bad) in str(e.value)


def test_for_bits_bad_kind():
    with pytest.raises(ValueError, match="'activation' or 'weight'.*'act'"):
        Q.for_bits(1, "act")
