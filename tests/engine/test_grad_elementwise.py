"""Gradients of the elementwise primitives and matmul against float64 central differences."""
import os
import sys
import zlib

import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bitnet_gradcheck import away_from, gradcheck  # noqa: E402

import bitnet.functional as F  # noqa: E402
from bitnet import Tensor  # noqa: E402

# pairs of shapes that broadcast in every way: equal, leading axes, size-1 axes on either side
BROADCAST_SHAPES = [
    ((3, 4), (3, 4)),
    ((3, 1, 4), (2, 1)),
    ((2, 1), (3, 1, 4)),
    ((2, 3, 4), (4,)),
    ((1, 3, 1), (2, 1, 5)),
    ((5,), ()),
    ((), (2, 3)),
]


@pytest.mark.parametrize("op", ["add", "sub", "mul", "div"])
@pytest.mark.parametrize("shapes", BROADCAST_SHAPES, ids=str)
def test_binary_ops_broadcasting(op, shapes):
    rng = np.random.default_rng(zlib.crc32(repr((op, shapes)).encode()))
    a = rng.standard_normal(shapes[0])
    # keep denominators away from 0 so the quotient is smooth
    b = away_from(rng, shapes[1], points=(0.0,), margin=0.5) if op == "div" else rng.standard_normal(shapes[1])
    gradcheck(getattr(F, op), [a, b])


@pytest.mark.parametrize("op", ["add", "sub", "mul", "div"])
def test_binary_operators_with_constants(op):
    """a (op) constant and constant (op) a, through the Python operators."""
    rng = np.random.default_rng(1)
    a = away_from(rng, (3, 4), margin=0.5)
    const = rng.uniform(0.5, 2.0, size=(4,))
    sym = {"add": "__add__", "sub": "__sub__", "mul": "__mul__", "div": "__truediv__"}[op]
    rsym = sym.replace("__", "__r", 1)
    gradcheck(lambda t: getattr(t, sym)(1.7), [a])
    gradcheck(lambda t: getattr(t, rsym)(1.7), [a])
    gradcheck(lambda t: getattr(t, sym)(const), [a])
    gradcheck(lambda t: getattr(t, rsym)(const), [a])


def test_neg():
    gradcheck(F.neg, [np.random.default_rng(2).standard_normal((2, 3, 2))])
    gradcheck(lambda t: -t, [np.random.default_rng(3).standard_normal((4,))])


@pytest.mark.parametrize("p", [2, 3, 0.5, -1.5, 1.0, 0])
def test_pow_positive_base(p):
    x = np.random.default_rng(4).uniform(0.3, 2.0, size=(3, 4))
    gradcheck(lambda t: F.pow(t, p), [x])
    gradcheck(lambda t: t ** p, [x])


@pytest.mark.parametrize("p", [2, 3])
def test_pow_integer_exponent_negative_base(p):
    x = away_from(np.random.default_rng(5), (2, 5), margin=0.1)
    gradcheck(lambda t: F.pow(t, p), [x])


def test_pow_rejects_tensor_exponent():
    with pytest.raises(TypeError, match="exponent"):
        F.pow(Tensor(np.ones(2)), Tensor(np.ones(2)))


def test_exp_log_tanh_sigmoid():
    rng = np.random.default_rng(6)
    x = rng.standard_normal((3, 2, 4)) * 2
    gradcheck(F.exp, [x])
    gradcheck(F.tanh, [x])
    gradcheck(F.sigmoid, [x])
    gradcheck(F.log, [rng.uniform(0.2, 3.0, size=(3, 5))])
    gradcheck(lambda t: t.exp().log(), [x])  # composition


def test_sigmoid_extreme_inputs_are_finite_and_exact():
    x = np.array([-800.0, -40.0, 0.0, 40.0, 800.0])
    t = Tensor(x, requires_grad=True)
    y = F.sigmoid(t)
    ref = np.array([0.0, np.exp(-40.0) / (1 + np.exp(-40.0)), 0.5, 1 / (1 + np.exp(-40.0)), 1.0])
    np.testing.assert_allclose(y.data, ref, rtol=1e-15, atol=0)
    y.sum().backward()
    assert np.all(np.isfinite(t.grad))
    np.testing.assert_allclose(t.grad, ref * (1 - ref), rtol=1e-12, atol=0)


def test_relu_away_from_zero():
    x = away_from(np.random.default_rng(7), (4, 5), points=(0.0,), margin=0.05)
    gradcheck(F.relu, [x])
    t = Tensor(x, requires_grad=True)
    F.relu(t).sum().backward()
    np.testing.assert_array_equal(t.grad, (x > 0).astype(float))


@pytest.mark.parametrize("lo, hi", [(-1.0, 1.0), (-0.5, 0.7)])
def test_hardtanh_away_from_bounds(lo, hi):
    x = away_from(np.random.default_rng(8), (5, 4), points=(lo, hi), margin=0.05)
    assert ((x < lo) | (x > hi)).any() and ((x > lo) & (x < hi)).any()
    gradcheck(lambda t: F.hardtanh(t, lo, hi), [x])
    np.testing.assert_array_equal(F.hardtanh(Tensor(x), lo, hi).data, np.clip(x, lo, hi))


@pytest.mark.parametrize("lo, hi", [(-1.0, 1.0), (-0.5, None), (None, 0.3)])
def test_clip_away_from_bounds(lo, hi):
    pts = tuple(b for b in (lo, hi) if b is not None)
    x = away_from(np.random.default_rng(9), (5, 4), points=pts, margin=0.05)
    gradcheck(lambda t: F.clip(t, lo, hi), [x])
    gradcheck(lambda t: t.clip(lo, hi), [x])
    ref = np.clip(x, -np.inf if lo is None else lo, np.inf if hi is None else hi)
    np.testing.assert_array_equal(F.clip(Tensor(x), lo, hi).data, ref)


def test_boundary_gradient_conventions():
    """Exactly on a bound: clip passes the gradient (inclusive), hardtanh blocks it (exclusive)."""
    x = np.array([-2.0, -1.0, -0.5, 0.0, 0.5, 1.0, 2.0])
    t = Tensor(x, requires_grad=True)
    F.clip(t, -1.0, 1.0).sum().backward()
    np.testing.assert_array_equal(t.grad, [0, 1, 1, 1, 1, 1, 0])
    t = Tensor(x, requires_grad=True)
    F.hardtanh(t).sum().backward()
    np.testing.assert_array_equal(t.grad, [0, 0, 1, 1, 1, 0, 0])
    # same conventions in float32
    t = Tensor(x.astype(np.float32), requires_grad=True)
    F.hardtanh(t, -0.5, 0.5).sum().backward()
    np.testing.assert_array_equal(t.grad, [0, 0, 0, 1, 0, 0, 0])


@pytest.mark.parametrize("shapes", [((3, 4), (3, 4), (3, 4)), ((3, 1, 4), (2, 1), (3, 2, 4)),
                                    ((2, 1), (3, 1, 4), (1, 2, 1)), ((4,), (), (2, 4))], ids=str)
def test_where(shapes):
    rng = np.random.default_rng(10)
    a, b = rng.standard_normal(shapes[0]), rng.standard_normal(shapes[1])
    cond = rng.random(shapes[2]) > 0.5
    gradcheck(lambda x, y: F.where(cond, x, y), [a, b])
    np.testing.assert_array_equal(F.where(cond, Tensor(a), Tensor(b)).data, np.where(cond, a, b))


def test_where_with_scalar_branch():
    rng = np.random.default_rng(11)
    a = rng.standard_normal((3, 4))
    cond = a > 0
    gradcheck(lambda x: F.where(cond, x, 0.0), [a])
    gradcheck(lambda x: F.where(cond, 2.0, x), [a])


MATMUL_SHAPES = [
    ((3, 4), (4, 5)),          # 2-D
    ((4,), (4, 5)),            # vector @ matrix
    ((3, 4), (4,)),            # matrix @ vector
    ((4,), (4,)),              # inner product -> 0-d
    ((2, 3, 4), (4, 2)),       # batched @ 2-D
    ((3, 4), (2, 4, 2)),       # 2-D @ batched
    ((2, 1, 3, 4), (5, 4, 2)),  # batch broadcasting (2,1) with (5,)
    ((4,), (2, 4, 3)),         # vector @ batched
    ((2, 3, 4), (4,)),         # batched @ vector
]


@pytest.mark.parametrize("shapes", MATMUL_SHAPES, ids=str)
def test_matmul(shapes):
    rng = np.random.default_rng(12)
    a, b = rng.standard_normal(shapes[0]), rng.standard_normal(shapes[1])
    out = F.matmul(Tensor(a), Tensor(b))
    np.testing.assert_allclose(out.data, a @ b, rtol=1e-13, atol=1e-13)
    assert out.shape == np.shape(a @ b)
    gradcheck(F.matmul, [a, b])
    gradcheck(lambda x, y: x @ y, [a, b])


def test_matmul_shape_errors():
    with pytest.raises(ValueError, match="inner dimensions"):
        F.matmul(Tensor(np.ones((2, 3))), Tensor(np.ones((4, 2))))
    with pytest.raises(ValueError, match="at least 1 dimension"):
        F.matmul(Tensor(np.ones(())), Tensor(np.ones((2,))))


@pytest.mark.parametrize("xshape", [(4, 3), (2, 3, 3), (3,)])
@pytest.mark.parametrize("bias", [True, False])
def test_linear(xshape, bias):
    rng = np.random.default_rng(13)
    x, w, b = rng.standard_normal(xshape), rng.standard_normal((5, 3)), rng.standard_normal(5)
    if bias:
        gradcheck(F.linear, [x, w, b])
        ref = x @ w.T + b
        out = F.linear(Tensor(x), Tensor(w), Tensor(b))
    else:
        gradcheck(F.linear, [x, w])
        ref = x @ w.T
        out = F.linear(Tensor(x), Tensor(w))
    np.testing.assert_allclose(out.data, ref, rtol=1e-13, atol=1e-13)


def test_linear_wrong_features():
    with pytest.raises(ValueError, match="expects 3"):
        F.linear(Tensor(np.ones((2, 4))), Tensor(np.ones((5, 3))))


@pytest.mark.parametrize("shape", [(3, 5), (2, 4, 5), (5,)])
@pytest.mark.parametrize("bias", [True, False])
def test_linear_without_a_graph_gives_the_same_bits(shape, bias):
    """Under no_grad (or with no input needing a gradient) linear skips the graph; the result must
    be the graph path's, bit for bit, and carry no gradient."""
    rng = np.random.default_rng(0)
    x = Tensor(rng.standard_normal(shape).astype(np.float32), requires_grad=True)
    w = Tensor(rng.standard_normal((7, 5)).astype(np.float32), requires_grad=True)
    b = Tensor(rng.standard_normal(7).astype(np.float32), requires_grad=True) if bias else None
    with_graph = F.linear(x, w, b)
    assert with_graph.requires_grad
    from bitnet import no_grad
    with no_grad():
        plain = F.linear(x, w, b)
    constants = F.linear(Tensor(x.data), Tensor(w.data), None if b is None else Tensor(b.data))
    for y in (plain, constants):
        assert not y.requires_grad and y.dtype == with_graph.dtype
        np.testing.assert_array_equal(y.data, with_graph.data)
