"""PyTorch spellings on tensors and in bitnet.functional: numel, factories, argmax/argmin, view,
softmax(dim=), dim=/keepdim= beside axis=/keepdims=, cat, clip_grad_norm_'s Tensor result."""
import os
import sys

import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bitnet_gradcheck import gradcheck  # noqa: E402

import bitnet  # noqa: E402
import bitnet.functional as F  # noqa: E402
from bitnet import Parameter, Tensor  # noqa: E402
from bitnet.optim import clip_grad_norm_  # noqa: E402


def test_numel_and_size_property():
    t = Tensor(np.ones((2, 3, 4)))
    assert t.numel() == 24 == t.size and isinstance(t.numel(), int)


def test_factories():
    assert bitnet.zeros(2, 3).shape == (2, 3) and bitnet.zeros((2, 3)).dtype == np.float32
    np.testing.assert_array_equal(bitnet.ones(4).data, np.ones(4, np.float32))
    assert bitnet.zeros(2, dtype=np.float64, requires_grad=True).requires_grad
    a = bitnet.randn(3, 4, rng=7)
    np.testing.assert_array_equal(a.data, np.random.default_rng(7).standard_normal((3, 4), dtype=np.float32))
    g = np.random.default_rng(8)
    r = bitnet.rand(5, rng=g, dtype=np.float64)
    np.testing.assert_array_equal(r.data, np.random.default_rng(8).random(5))
    assert not np.array_equal(bitnet.rand(5, rng=g).data, r.data.astype(np.float32))  # g advanced
    assert bitnet.randn(2).shape == (2,)  # rng=None: a fresh generator
    assert bitnet.zeros_like(a).shape == (3, 4) and bitnet.ones_like(np.zeros(2, np.int64)).dtype == np.int64
    assert bitnet.arange(4).data.tolist() == [0, 1, 2, 3] and bitnet.arange(4).dtype == np.int64
    np.testing.assert_array_equal(bitnet.arange(1, 2, 0.5).data, np.float32([1.0, 1.5]))
    with pytest.raises(TypeError, match="Generator"):
        bitnet.randn(2, rng="seed")
    with pytest.raises(TypeError, match="non-negative ints"):
        bitnet.zeros(2.5)


def test_argmax_argmin():
    x = np.array([[1.0, 5.0, 5.0], [np.nan, 0.0, -3.0]])
    t = Tensor(x, requires_grad=True)
    for f, npf in ((F.argmax, np.argmax), (F.argmin, np.argmin)):
        for kw, axis, keep in (({}, None, False), ({"dim": 1}, 1, False), ({"axis": 0}, 0, False),
                               ({"dim": 1, "keepdim": True}, 1, True)):
            got = f(t, **kw)
            assert got.dtype == np.int64 and not got.requires_grad
            np.testing.assert_array_equal(got.data, npf(x, axis=axis, keepdims=keep))
    assert t.argmax(dim=1).data.tolist() == [1, 0]  # first maximum on ties; NaN counts as the max
    assert t.argmin(1).data.tolist() == [0, 0]
    with pytest.raises(ValueError, match="out of range"):
        t.argmax(dim=2)


def test_view_reshape():
    x = np.arange(12.0).reshape(3, 4)
    t = Tensor(x)
    assert t.view(4, 3).shape == (4, 3) and t.view((2, -1)).shape == (2, 6)
    gradcheck(lambda a: a.view(2, 6) * 2.0, [x])


@pytest.mark.parametrize("name", ["sum", "mean", "max", "min"])
def test_reductions_take_dim_and_keepdim(name):
    x = np.random.default_rng(1).permutation(24).reshape(2, 3, 4) / 5.0
    ref = getattr(np, name)(x, axis=1, keepdims=True)
    np.testing.assert_array_equal(getattr(F, name)(Tensor(x), dim=1, keepdim=True).data, ref)
    np.testing.assert_array_equal(getattr(Tensor(x), name)(dim=1, keepdim=True).data, ref)
    np.testing.assert_array_equal(getattr(Tensor(x), name)(dim=(0, 2)).data, getattr(np, name)(x, axis=(0, 2)))
    np.testing.assert_array_equal(getattr(Tensor(x), name)(1).data, getattr(np, name)(x, axis=1))
    gradcheck(lambda t: getattr(t, name)(dim=2), [x])
    with pytest.raises(TypeError, match="both axis=1.*dim=2"):
        getattr(F, name)(Tensor(x), axis=1, dim=2)
    with pytest.raises(TypeError, match="both keepdims"):
        getattr(Tensor(x), name)(dim=1, keepdims=True, keepdim=True)


def test_softmax_log_softmax_take_dim():
    x = np.random.default_rng(2).standard_normal((3, 4))
    for dim in (0, 1, -1):
        e = np.exp(x - x.max(axis=dim, keepdims=True))
        ref = e / e.sum(axis=dim, keepdims=True)
        np.testing.assert_allclose(F.softmax(Tensor(x), dim=dim).data, ref, rtol=1e-14)
        np.testing.assert_allclose(Tensor(x).softmax(dim=dim).data, ref, rtol=1e-14)
        np.testing.assert_allclose(F.log_softmax(Tensor(x), dim=dim).data, np.log(ref), rtol=1e-13, atol=1e-15)
        np.testing.assert_allclose(Tensor(x).log_softmax(dim).data, np.log(ref), rtol=1e-13, atol=1e-15)
        gradcheck(lambda t: F.softmax(t, dim=dim), [x])
    np.testing.assert_array_equal(F.softmax(Tensor(x)).data, F.softmax(Tensor(x), dim=-1).data)
    with pytest.raises(TypeError, match="both"):
        F.softmax(Tensor(x), axis=0, dim=1)


def test_cat_concatenate_stack_take_dim():
    a, b = np.ones((2, 3)), np.zeros((2, 1))
    np.testing.assert_array_equal(F.cat([Tensor(a), Tensor(b)], dim=1).data, np.concatenate([a, b], 1))
    np.testing.assert_array_equal(F.cat([Tensor(a), Tensor(b)], 1).data, np.concatenate([a, b], 1))
    np.testing.assert_array_equal(F.concatenate([Tensor(a), Tensor(b)], dim=-1).data, np.concatenate([a, b], 1))
    np.testing.assert_array_equal(F.stack([Tensor(a), Tensor(a)], dim=2).data, np.stack([a, a], 2))
    gradcheck(lambda s, t: F.cat([s, t], dim=1), [a, b])
    with pytest.raises(TypeError, match="both"):
        F.stack([Tensor(a)], axis=0, dim=1)
    with pytest.raises(ValueError, match="shape"):
        F.stack([Tensor(a), Tensor(b)], dim=0)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_clip_grad_norm_returns_a_0d_tensor_in_the_grads_dtype(dtype):
    ps = [Parameter(np.zeros(2, dtype)), Parameter(np.zeros(1, dtype))]
    ps[0].grad, ps[1].grad = np.array([3.0, 0.0], dtype), np.array([4.0], dtype)
    total = clip_grad_norm_(ps, 1.0)
    assert isinstance(total, Tensor) and total.shape == () and total.dtype == dtype
    assert total.item() == 5.0 and float(total) == 5.0 and not total.requires_grad
    empty = clip_grad_norm_([Parameter(np.zeros(2))], 1.0)
    assert isinstance(empty, Tensor) and empty.dtype == np.float32 and float(empty) == 0.0
