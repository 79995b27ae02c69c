"""In-place arithmetic (``p -= lr * p.grad``) and elementwise comparisons, with PyTorch's rules.

Before: ``p -= x`` fell back to ``p = p - x`` (a new tensor bound to the loop variable: the model's
parameter never changed), and ``Tensor == ndarray`` was identity (False).
"""
import numpy as np
import pytest

import bitnet
import bitnet.functional as F
from bitnet import Parameter, Tensor, nn, no_grad
from bitnet.optim import SGD


def _model_and_data():
    rng = np.random.default_rng(0)
    model = nn.Sequential(nn.Dense(5, 8, rng=1), nn.Tanh(), nn.Dense(8, 3, rng=2))
    x = rng.standard_normal((16, 5)).astype(np.float32)
    y = rng.integers(0, 3, 16)
    return model, x, y


def test_manual_sgd_loop_trains_and_equals_numpy_sgd_bit_for_bit():
    model, x, y = _model_and_data()
    params = list(model.parameters())
    ids = [id(p) for p in params]
    lr = 0.5
    losses = []
    for _ in range(5):
        model.zero_grad()
        loss = F.cross_entropy(model(Tensor(x)), y)
        loss.backward()
        losses.append(float(loss))
        expected = [p.data - lr * p.grad for p in params]  # NumPy's SGD step, float32
        with bitnet.no_grad():
            for p in model.parameters():
                p -= lr * p.grad
        for p, want in zip(model.parameters(), expected):
            np.testing.assert_array_equal(p.data, want)
            assert p.dtype == np.float32
    assert [id(p) for p in model.parameters()] == ids  # still the same Parameter objects
    assert all(isinstance(p, Parameter) and p.requires_grad for p in model.parameters())
    assert losses[-1] < losses[0] - 0.05, losses
    assert all(b < a for a, b in zip(losses, losses[1:])), losses


@pytest.mark.parametrize("op, ref", [("+=", np.add), ("-=", np.subtract), ("*=", np.multiply),
                                     ("/=", np.true_divide)])
def test_inplace_ops_update_data_keep_dtype_shape_identity(op, ref):
    a = np.random.default_rng(1).uniform(1, 2, (3, 4)).astype(np.float32)
    for other in (2.5, np.float64(0.5), np.arange(4, dtype=np.float64) + 1, Tensor(np.full((3, 1), 3.0))):
        t = Tensor(a.copy())
        data = t.data
        u = t
        exec(f"u {op} other")
        assert u is t and t.data is data and t.dtype == np.float32 and t.shape == (3, 4)
        o = other.data if isinstance(other, Tensor) else other
        np.testing.assert_array_equal(t.data, ref(a, o, dtype=np.float64).astype(np.float32)
                                      if not isinstance(other, float) else ref(a, np.float32(o)))


def test_inplace_rules():
    p = Parameter(np.ones(3, np.float32))
    with pytest.raises(RuntimeError, match=r"with bitnet\.no_grad\(\)"):
        p -= 0.1
    np.testing.assert_array_equal(p.data, 1.0)  # unchanged
    with no_grad():
        p -= 0.25
    np.testing.assert_array_equal(p.data, 0.75)
    y = p * 2.0  # a non-leaf that requires grad
    for ctx in (no_grad(), bitnet.enable_grad()):
        with ctx, pytest.raises(RuntimeError, match="non-leaf"):
            y += 1
    with pytest.raises(ValueError, match=r"\(2, 3\).*\(3,\)"):
        with no_grad():
            p += np.ones((2, 3))  # would enlarge the tensor
    t = Tensor(np.arange(3))  # int64: a float result cannot be stored
    with pytest.raises(TypeError, match="int64"):
        t /= 2
    t += 2
    np.testing.assert_array_equal(t.data, [2, 3, 4])
    c = Tensor(np.zeros(2, np.float32))  # no grad: allowed anywhere
    c += 1
    np.testing.assert_array_equal(c.data, [1, 1])


def test_inplace_after_use_makes_backward_raise_instead_of_using_stale_values():
    w = Parameter(np.array([2.0, 3.0]))
    x = Parameter(np.array([5.0, 7.0]))
    loss = (w * x).sum()  # Mul saves w's array for x's gradient
    with no_grad():
        w -= 1.0
    with pytest.raises(RuntimeError, match="modified by an in-place operation"):
        loss.backward()
    loss = (w * x).sum()  # a fresh graph sees the new values
    loss.backward()
    np.testing.assert_array_equal(x.grad, [1.0, 2.0])


def test_parameters_with_constraint_still_work_with_optimizers():
    p = Parameter(np.array([0.5, -0.9, 0.2], np.float32), constraint=lambda d: np.clip(d, -1, 1, out=d))
    opt = SGD([p], lr=1.0)
    p.grad = np.array([-2.0, 2.0, 0.1], np.float32)
    opt.step()
    np.testing.assert_array_equal(p.data, np.float32([1.0, -1.0, 0.1]))
    q = p
    with no_grad():  # a manual update does not apply the constraint (documented)
        q += 5
    assert q is p and isinstance(q, Parameter)
    np.testing.assert_array_equal(p.data, np.float32([6.0, 4.0, 5.1]))


@pytest.mark.parametrize("op, ref", [("==", np.equal), ("!=", np.not_equal), ("<", np.less),
                                     ("<=", np.less_equal), (">", np.greater), (">=", np.greater_equal)])
def test_comparisons_are_elementwise_bool_tensors_without_graph(op, ref):
    a = np.array([[1.0, np.nan, 3.0], [0.0, -1.0, 2.0]])
    b = np.array([1.0, np.nan, 2.0])
    t = Tensor(a, requires_grad=True)
    for other, o in ((Tensor(b), b), (b, b), (2.0, 2.0), ([1.0, 0.0, 3.0], np.array([1.0, 0.0, 3.0]))):
        got = eval(f"t {op} other")
        assert isinstance(got, Tensor) and got.dtype == np.bool_ and not got.requires_grad and got._ctx is None
        np.testing.assert_array_equal(got.data, ref(a, o))
    got = eval(f"b {op} t")  # ndarray on the left defers to the tensor
    assert isinstance(got, Tensor)
    np.testing.assert_array_equal(got.data, ref(b, a))


def test_reported_cases_and_relu_mask():
    a = np.array([1.0, -2.0, 3.0], np.float32)
    assert (Tensor(a) == a).all()  # was False (identity)
    h = Tensor(np.array([[0.5, -1.0], [0.0, 2.0]]))
    np.testing.assert_array_equal((h > 0).data, [[True, False], [False, True]])
    assert (h > 0).any(dim=1).data.tolist() == [True, True]


def test_identity_semantics_kept_for_hash_and_containers():
    p, q = Parameter(np.ones(3)), Parameter(np.ones(3))
    assert hash(p) == id(p) and hash(p) != hash(q)
    d = {p: "p", q: "q"}
    assert d[p] == "p" and d[q] == "q" and len({p, q}) == 2
    assert (p == None) is False and (p != None) is True  # noqa: E711 - PyTorch: not elementwise
    assert (p == "text") is False
    assert any(x is q for x in [p, q])


def test_bool_float_int_of_tensors():
    assert bool(Tensor(np.array([2.0]))) and not bool(Tensor(np.float32(0)))
    assert float(Tensor(np.array([[2.5]]))) == 2.5 and int(Tensor(np.array(7))) == 7
    with pytest.raises(RuntimeError, match="ambiguous"):
        bool(Tensor(np.ones(3)) == Tensor(np.ones(3)))
    with pytest.raises(RuntimeError, match="ambiguous"):
        float(Tensor(np.ones(2)))
