"""Engine behaviour: accumulation, reuse in a graph, no_grad, deep graphs, errors, dtypes."""
import os
import sys
import threading

import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bitnet_gradcheck import gradcheck  # noqa: E402

import bitnet  # noqa: E402
import bitnet.functional as F  # noqa: E402
from bitnet import Function, Parameter, Tensor, enable_grad, is_grad_enabled, no_grad  # noqa: E402


def test_gradcheck_helper_catches_a_wrong_gradient():
    class WrongSquare(Function):
        def forward(self, a):
            self.a = a
            return a * a

        def backward(self, g):
            return g * 2.02 * self.a  # 1% off

    x = np.random.default_rng(0).uniform(0.5, 1.5, (2, 3))
    gradcheck(lambda t: t * t, [x])
    with pytest.raises(AssertionError):
        gradcheck(WrongSquare.apply, [x])


def test_grad_accumulates_across_backward_calls():
    x = Tensor(np.array([1.0, 2.0, 3.0]), requires_grad=True)
    (x * x).sum().backward()
    np.testing.assert_array_equal(x.grad, [2, 4, 6])
    (x * 3.0).sum().backward()  # a second, separate graph
    np.testing.assert_array_equal(x.grad, [5, 7, 9])
    x.zero_grad()
    assert x.grad is None


def test_retain_graph_allows_a_second_backward_that_accumulates():
    x = Tensor(np.array([1.0, -2.0]), requires_grad=True)
    loss = (F.tanh(x) * x).sum()
    loss.backward(retain_graph=True)
    g1 = x.grad.copy()
    loss.backward()
    np.testing.assert_allclose(x.grad, 2 * g1, rtol=1e-15)


def test_retain_graph_conv_pool_bn_second_backward():
    """Every primitive must keep what its backward needs when the graph is retained."""
    rng = np.random.default_rng(1)
    x = Tensor(rng.standard_normal((2, 2, 6, 6)), requires_grad=True)
    w = Tensor(rng.standard_normal((3, 2, 3, 3)), requires_grad=True)
    g, b = Tensor(np.ones(3), requires_grad=True), Tensor(np.zeros(3), requires_grad=True)
    y = F.max_pool2d(F.batch_norm(F.conv2d(x, w, padding=1), None, None, g, b), 2)
    loss = F.cross_entropy(F.flatten(y, 1)[:, :5], np.array([0, 4]))
    loss.backward(retain_graph=True)
    first = [t.grad.copy() for t in (x, w, g, b)]
    loss.backward()
    for t, g1 in zip((x, w, g, b), first):
        np.testing.assert_allclose(t.grad, 2 * g1, rtol=1e-12, atol=1e-15)


def test_tensor_used_twice_gets_the_sum_of_both_paths():
    x = Tensor(np.array([0.5, -1.5, 2.0]), requires_grad=True)
    y = x * x + x  # x feeds Mul twice and Add once
    y.sum().backward()
    np.testing.assert_array_equal(x.grad, 2 * x.data + 1)
    # diamond with broadcasting: a = 2x; out = sum(a + a*a) reaches x through three paths
    x2 = Tensor(np.array([[1.0], [2.0]]), requires_grad=True)
    a = x2 * 2.0
    out = (a + a * a + Tensor(np.ones((2, 3)))).sum()
    out.backward()
    np.testing.assert_array_equal(x2.grad, 3 * (2 + 8 * x2.data))
    gradcheck(lambda t: (t * 2.0) * (t * 2.0) + t * 2.0, [np.array([[1.0, -0.3], [2.0, 0.7]])])


def test_only_leaves_that_require_grad_get_grads():
    a = Tensor(np.ones(3), requires_grad=True)
    b = Tensor(np.full(3, 2.0))
    mid = a * b
    (mid * mid).sum().backward()
    np.testing.assert_array_equal(a.grad, 2 * a.data * 4)
    assert b.grad is None


def test_no_grad_records_nothing():
    x = Tensor(np.ones(3), requires_grad=True)
    assert is_grad_enabled()
    with no_grad():
        assert not is_grad_enabled()
        y = F.exp(x) * 2.0 + x
        z = F.conv2d(Tensor(np.ones((1, 1, 3, 3)), requires_grad=True), Tensor(np.ones((1, 1, 2, 2))))
        with enable_grad():
            assert is_grad_enabled()
            w = x * 2.0
        assert not is_grad_enabled()
    assert is_grad_enabled()
    for t in (y, z):
        assert not t.requires_grad and t._ctx is None
    assert w.requires_grad and w._ctx is not None
    with pytest.raises(RuntimeError, match="does not require grad"):
        y.sum().backward()


def test_no_grad_restores_state_after_an_exception():
    with pytest.raises(ZeroDivisionError):
        with no_grad():
            1 / 0
    assert is_grad_enabled()
    with no_grad():
        with pytest.raises(ValueError):
            with enable_grad():
                raise ValueError
        assert not is_grad_enabled()
    assert is_grad_enabled()
    assert (Tensor(np.ones(2), requires_grad=True) * 2.0).requires_grad


def test_no_grad_is_per_thread():
    seen = []
    with no_grad():
        t = threading.Thread(target=lambda: seen.append(is_grad_enabled()))
        t.start()
        t.join()
    assert seen == [True]


def test_deep_chain_does_not_hit_the_recursion_limit():
    n = 5000
    assert sys.getrecursionlimit() < 2 * n  # a recursive sort would fail
    x = Tensor(np.array([1.0, 2.0]), requires_grad=True)
    y = x
    for _ in range(n):
        y = y + 1.0
    y.sum().backward()
    np.testing.assert_array_equal(x.grad, [1.0, 1.0])
    np.testing.assert_array_equal(y.data, x.data + n)
    # a deep chain that reuses the leaf at every step: d/dx of x*(x*(...)) style products
    z = x
    for _ in range(n):
        z = z * 1.0 + x * 0.0
    z.sum().backward()
    np.testing.assert_array_equal(x.grad, [2.0, 2.0])
    del y, z  # dropping a deep retained chain must not crash either
    w = x
    for _ in range(n):
        w = w + 1.0
    del w


def test_backward_errors():
    x = Tensor(np.ones((2, 3)), requires_grad=True)
    y = x * 2.0
    with pytest.raises(RuntimeError, match=r"scalar.*\(2, 3\)"):
        y.backward()
    with pytest.raises(ValueError, match="does not match"):
        y.backward(np.ones((3, 2)))
    with pytest.raises(RuntimeError, match="does not require grad"):
        Tensor(np.ones(())).backward()
    y.backward(np.ones((2, 3)))  # explicit gradient works
    np.testing.assert_array_equal(x.grad, np.full((2, 3), 2.0))
    # size-1 non-0-d outputs count as scalars
    z = Tensor(np.ones((1, 1)), requires_grad=True)
    (z * 3.0).backward()
    np.testing.assert_array_equal(z.grad, [[3.0]])


@pytest.mark.parametrize("op", [
    lambda t: t + 1, lambda t: 1 + t, lambda t: t - 0.5, lambda t: 0.5 - t, lambda t: t * 2.5,
    lambda t: 2.5 * t, lambda t: t / 3.0, lambda t: 3.0 / t, lambda t: t ** 2, lambda t: t ** 0.5,
    lambda t: -t, lambda t: F.clip(t, 0.1, 0.9), lambda t: F.hardtanh(t, -0.5, 0.5),
    lambda t: F.where(t.data > 0.5, t, 0.0), lambda t: F.sigmoid(t), lambda t: F.tanh(t),
    lambda t: F.exp(t), lambda t: F.log(t), lambda t: F.relu(t), lambda t: t.mean(),
    lambda t: t.sum(), lambda t: t.max(axis=0), lambda t: t.min(), lambda t: F.log_softmax(t),
    lambda t: t @ np.ones(3), lambda t: t[0] @ np.ones(3), lambda t: t.sum() * 2.0,
    lambda t: t.mean() + 1.0, lambda t: F.sigmoid(t.sum()),
], ids=lambda f: "op")
def test_float32_stays_float32_with_python_scalars(op):
    t = Tensor(np.random.default_rng(2).uniform(0.1, 1.0, (2, 3)).astype(np.float32), requires_grad=True)
    out = op(t)
    assert out.dtype == np.float32, out.dtype
    out.sum().backward() if out.ndim else out.backward()
    assert t.grad.dtype == np.float32


@pytest.mark.parametrize("op", [lambda t: t * 2.0, lambda t: t + 1.0, lambda t: F.exp(t),
                                lambda t: -t, lambda t: t.sum(axis=0) * 2.0, lambda t: t @ t.T,
                                lambda t: t.sum(), lambda t: t.mean(), lambda t: t.max()],
                         ids=["mul", "add", "exp", "neg", "sum_mul", "matmul", "sum", "mean", "max"])
def test_float64_stays_float64(op):
    t = Tensor(np.random.default_rng(3).uniform(0.1, 1.0, (2, 3)), requires_grad=True)
    assert op(t).dtype == np.float64


@pytest.mark.parametrize("op", [lambda t: t[0, 0] * t[1, 1], lambda t: t[0, 0] + 1.0,
                                lambda t: F.exp(t[0, 0]), lambda t: -t[0, 0], lambda t: t.sum() * 2.0,
                                lambda t: t.min(), lambda t: t[0] @ t[1], lambda t: F.sigmoid(t.sum())],
                         ids=["mul", "add", "exp", "neg", "sum_mul", "min", "dot", "sigmoid_of_sum"])
def test_float64_stays_float64_for_0d_results(op):
    """Gradient checks run in float64: no op may silently round a float64 result to float32, in
    particular not a 0-d result (NumPy returns those as numpy scalars, not 0-d arrays)."""
    t = Tensor(np.array([[0.3, 0.7, 0.2], [0.4, 0.9, 0.1]]), requires_grad=True)
    out = op(t)
    assert out.shape == ()
    assert out.dtype == np.float64, out.dtype


def test_pow_with_numpy_scalar_exponent_keeps_float32():
    """np.float64 is a Python float subclass; like add/mul (which cast scalars to the tensor's
    dtype), pow must not promote a float32 tensor to float64."""
    t = Tensor(np.ones(3, np.float32), requires_grad=True)
    assert (t + np.float64(2.0)).dtype == np.float32
    assert (t ** np.float64(2.0)).dtype == np.float32


def test_python_lists_and_floats_default_to_float32_arrays_keep_dtype():
    assert Tensor([1.0, 2.0]).dtype == np.float32
    assert Tensor(3.5).dtype == np.float32
    assert bitnet.tensor([[1.5]]).dtype == np.float32
    assert Tensor(np.ones(2, np.float64)).dtype == np.float64
    assert Tensor([1, 2]).dtype.kind == "i"
    assert Tensor(np.ones(2), dtype=np.float32).dtype == np.float32


def test_integer_tensors_cannot_require_grad():
    with pytest.raises(TypeError, match="floating-point"):
        Tensor(np.arange(3), requires_grad=True)
    with pytest.raises(TypeError, match="floating-point"):
        Tensor([1, 2, 3], requires_grad=True)
    with pytest.raises(TypeError):
        Tensor(np.array([True, False]), requires_grad=True)
    # integer results of ops on integer tensors do not require grad; Parameters become float32
    i = Tensor(np.arange(3))
    assert not (i + i).requires_grad and (i + i).dtype.kind == "i"
    assert Parameter(np.arange(3)).dtype == np.float32 and Parameter(np.arange(3)).requires_grad


def test_detach_cuts_the_graph():
    x = Tensor(np.ones(2), requires_grad=True)
    d = (x * 2.0).detach()
    assert not d.requires_grad and d._ctx is None
    (x * d).sum().backward()
    np.testing.assert_array_equal(x.grad, [2.0, 2.0])


def test_second_backward_through_a_freed_graph_raises():
    """Without retain_graph the graph is freed; a second backward must not silently do nothing
    (x.grad would stay at the first result while the user expects an accumulated gradient)."""
    x = Tensor(np.ones(2), requires_grad=True)
    y = (x * 2.0).sum()
    y.backward()
    with pytest.raises(RuntimeError, match="retain_graph"):
        y.backward()
    np.testing.assert_array_equal(x.grad, [2.0, 2.0])


def test_mean_of_integer_tensor_does_not_truncate():
    assert F.mean(Tensor(np.arange(4))).item() == 1.5
    np.testing.assert_array_equal(Tensor(np.array([[1, 2], [4, 4]])).mean(axis=1).data, [1.5, 4.0])


def test_float32_network_pipeline_keeps_float32_grads():
    rng = np.random.default_rng(4)
    f32 = lambda shape: rng.standard_normal(shape).astype(np.float32)  # noqa: E731
    x, w, b = (Tensor(f32(s), requires_grad=True) for s in ((2, 4, 6, 6), (4, 2, 3, 3), (4,)))
    g, be = Tensor(np.ones(4, np.float32), requires_grad=True), Tensor(np.zeros(4, np.float32), requires_grad=True)
    rm, rv = np.zeros(4, np.float32), np.ones(4, np.float32)
    for training in (True, False):
        y = F.avg_pool2d(F.max_pool2d(F.batch_norm(F.conv2d(x, w, b, groups=2, padding=1), rm, rv, g, be,
                                                    training=training), 2), 1)
        y = F.dropout(F.relu(F.flatten(y, 1)), 0.2, rng=np.random.default_rng(0))
        loss = F.cross_entropy(y[:, :5], np.array([1, 2]), label_smoothing=0.1)
        assert y.dtype == np.float32 and loss.dtype == np.float32
        loss.backward()
        for t in (x, w, b, g, be):
            assert t.grad.dtype == np.float32 and t.grad.shape == t.shape
    assert rm.dtype == np.float32 and rv.dtype == np.float32


def test_ndarray_on_the_left_dispatches_to_tensor():
    t = Tensor(np.ones(3, np.float32), requires_grad=True)
    for r in (np.ones(3) + t, np.ones(3) * t, np.ones(3) - t, np.ones(3) / t):
        assert isinstance(r, Tensor) and r.requires_grad and r.dtype == np.float32
    (np.full(3, 2.0) * t).sum().backward()
    np.testing.assert_array_equal(t.grad, [2, 2, 2])
