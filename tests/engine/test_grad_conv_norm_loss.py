"""Gradients of conv2d, pooling, batch norm, softmax/cross-entropy and dropout vs central
differences in float64, plus forward checks against the independent NumPy references."""
import os
import sys

import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bitnet_gradcheck import distinct, gradcheck  # noqa: E402
import bitnet_np_reference as R  # noqa: E402

import bitnet.functional as F  # noqa: E402
from bitnet import Tensor  # noqa: E402

# (x shape, w shape, stride, padding, dilation, groups)
CONV_CASES = {
    "plain": ((2, 3, 5, 5), (4, 3, 3, 3), 1, 0, 1, 1),
    "stride2_pad1": ((2, 2, 7, 6), (3, 2, 3, 3), 2, 1, 1, 1),
    "dilation2_pad2": ((1, 2, 7, 6), (2, 2, 3, 3), 1, 2, 2, 1),
    "groups2": ((2, 4, 5, 5), (6, 2, 3, 3), (2, 1), (1, 0), 1, 2),
    "depthwise": ((2, 3, 5, 4), (3, 1, 3, 3), 1, 1, 1, 3),
    "depthwise_mult2": ((1, 2, 5, 5), (4, 1, 3, 2), 2, 1, 1, 2),
    "rect_mixed": ((1, 2, 6, 7), (3, 2, 2, 3), (1, 2), (0, 1), (2, 1), 1),
    "kernel_bigger_than_input": ((2, 1, 3, 3), (2, 1, 5, 5), 1, 2, 1, 1),
    "one_by_one_stride2": ((2, 3, 5, 5), (2, 3, 1, 1), 2, 0, 1, 1),
}


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("case", list(CONV_CASES))
def test_conv2d_grad(case, bias):
    xs, ws, stride, padding, dilation, groups = CONV_CASES[case]
    rng = np.random.default_rng(30)
    x, w, b = rng.standard_normal(xs), rng.standard_normal(ws), rng.standard_normal(ws[0])
    kw = dict(stride=stride, padding=padding, dilation=dilation, groups=groups)
    if bias:
        gradcheck(lambda x_, w_, b_: F.conv2d(x_, w_, b_, **kw), [x, w, b])
    else:
        gradcheck(lambda x_, w_: F.conv2d(x_, w_, None, **kw), [x, w])


def test_conv2d_grad_only_weight_or_only_input():
    xs, ws, stride, padding, dilation, groups = CONV_CASES["groups2"]
    rng = np.random.default_rng(31)
    x, w = rng.standard_normal(xs), rng.standard_normal(ws)
    kw = dict(stride=stride, padding=padding, dilation=dilation, groups=groups)
    gradcheck(lambda x_, w_: F.conv2d(x_, w_, **kw), [x, w], check=[0])
    gradcheck(lambda x_, w_: F.conv2d(x_, w_, **kw), [x, w], check=[1])


def test_conv2d_errors():
    x = Tensor(np.ones((1, 3, 5, 5)))
    with pytest.raises(ValueError, match="4-D input"):
        F.conv2d(Tensor(np.ones((3, 5, 5))), Tensor(np.ones((2, 3, 3, 3))))
    with pytest.raises(ValueError, match="3 channels"):
        F.conv2d(x, Tensor(np.ones((2, 2, 3, 3))))
    with pytest.raises(ValueError, match="groups"):
        F.conv2d(x, Tensor(np.ones((2, 1, 3, 3))), groups=2)
    with pytest.raises(ValueError, match="does not fit"):
        F.conv2d(x, Tensor(np.ones((2, 3, 7, 7))))


# (x shape, kernel, stride, padding)
POOL_CASES = {
    "k2s2": ((2, 3, 6, 6), 2, None, 0),
    "k2s2_odd_floor": ((1, 2, 7, 5), 2, 2, 0),
    "k3s2p1": ((2, 2, 7, 7), 3, 2, 1),
    "k3s1p1": ((1, 2, 5, 6), 3, 1, 1),
    "k32_s12_p11": ((2, 1, 6, 7), (3, 2), (1, 2), (1, 1)),
    "k3s3_stride_eq_kernel_odd": ((1, 2, 8, 7), 3, 3, 0),
    "k2s1": ((2, 2, 4, 5), 2, 1, 0),
}


@pytest.mark.parametrize("mode", ["max", "avg"])
@pytest.mark.parametrize("case", list(POOL_CASES))
def test_pool_grad(case, mode):
    xs, k, s, p = POOL_CASES[case]
    x = distinct(np.random.default_rng(32), xs)  # no ties: the max is differentiable
    fn = F.max_pool2d if mode == "max" else F.avg_pool2d
    gradcheck(lambda t: fn(t, k, s, p), [x])


def test_pool_errors():
    with pytest.raises(ValueError, match="4-D"):
        F.max_pool2d(Tensor(np.ones((3, 4, 4))), 2)
    with pytest.raises(ValueError, match="at most half"):
        F.avg_pool2d(Tensor(np.ones((1, 1, 4, 4))), 2, padding=2)


def test_max_pool_ties_route_the_whole_gradient_to_one_element():
    t = Tensor(np.ones((1, 1, 4, 4)), requires_grad=True)
    F.max_pool2d(t, 2).sum().backward()
    g = t.grad.reshape(2, 2, 2, 2).transpose(0, 2, 1, 3).reshape(4, 4)  # one row per window
    np.testing.assert_array_equal(np.sort(g, axis=1), [[0, 0, 0, 1]] * 4)


@pytest.mark.parametrize("shape", [(5, 3), (2, 3, 3, 4), (1, 2, 3, 3)])
def test_batch_norm_train_grad(shape):
    rng = np.random.default_rng(33)
    x = rng.standard_normal(shape) * 2 + 1
    gamma, beta = rng.uniform(0.5, 1.5, shape[1]), rng.standard_normal(shape[1])
    gradcheck(lambda x_, g_, b_: F.batch_norm(x_, None, None, g_, b_, training=True), [x, gamma, beta])


def test_batch_norm_train_grad_with_running_stats_buffers():
    """Passing running buffers must not change the gradient (they are updated on the side)."""
    rng = np.random.default_rng(34)
    x = rng.standard_normal((3, 2, 2, 3))
    gamma, beta = rng.uniform(0.5, 1.5, 2), rng.standard_normal(2)
    rm, rv = np.zeros(2), np.ones(2)
    gradcheck(lambda x_, g_, b_: F.batch_norm(x_, rm, rv, g_, b_, training=True, momentum=0.2),
              [x, gamma, beta])


@pytest.mark.parametrize("shape", [(4, 3), (2, 3, 2, 3)])
def test_batch_norm_eval_grad(shape):
    rng = np.random.default_rng(35)
    x = rng.standard_normal(shape)
    gamma, beta = rng.uniform(0.5, 1.5, shape[1]), rng.standard_normal(shape[1])
    rm, rv = rng.standard_normal(shape[1]), rng.uniform(0.5, 2.0, shape[1])
    gradcheck(lambda x_, g_, b_: F.batch_norm(x_, rm, rv, g_, b_, training=False), [x, gamma, beta])
    out = F.batch_norm(Tensor(x), rm, rv, Tensor(gamma), Tensor(beta), training=False)
    np.testing.assert_allclose(out.data, R.batch_norm_eval_ref(x, gamma, beta, rm, rv, 1e-5), rtol=1e-12, atol=1e-12)


def test_batch_norm_errors():
    g, b = Tensor(np.ones(3)), Tensor(np.zeros(3))
    with pytest.raises(ValueError, match="more than one value"):
        F.batch_norm(Tensor(np.ones((1, 3))), None, None, g, b, training=True)
    with pytest.raises(ValueError, match="3 channels"):
        F.batch_norm(Tensor(np.ones((2, 3))), None, None, Tensor(np.ones(2)), Tensor(np.ones(2)))
    with pytest.raises(ValueError, match=r"\(N, C\)"):
        F.batch_norm(Tensor(np.ones(3)), None, None, g, b)  # (N, C, L) is accepted since issue 12


@pytest.mark.parametrize("axis", [-1, 0, 1])
def test_log_softmax_and_softmax(axis):
    rng = np.random.default_rng(36)
    x = rng.standard_normal((3, 4, 2)) * 3
    out = F.log_softmax(Tensor(x), axis=axis)
    np.testing.assert_allclose(out.data, R.log_softmax_ref(x, axis), rtol=1e-13, atol=1e-13)
    gradcheck(lambda t: F.log_softmax(t, axis=axis), [x])
    gradcheck(lambda t: F.softmax(t, axis=axis), [x])


def test_log_softmax_large_logits_are_stable():
    x = np.array([[1000.0, 0.0, -1000.0]])
    out = F.log_softmax(Tensor(x))
    np.testing.assert_allclose(out.data, [[0.0, -1000.0, -2000.0]])
    gradcheck(F.log_softmax, [np.array([[500.0, 499.0, -3.0]])])


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("ls", [0.0, 0.1, 0.35])
def test_cross_entropy(reduction, ls):
    rng = np.random.default_rng(37)
    logits = rng.standard_normal((5, 4)) * 2
    t = np.array([0, 3, 3, 1, 2])
    out = F.cross_entropy(Tensor(logits), t, reduction=reduction, label_smoothing=ls)
    np.testing.assert_allclose(out.data, R.cross_entropy_ref(logits, t, reduction, ls), rtol=1e-13, atol=1e-13)
    gradcheck(lambda z: F.cross_entropy(z, t, reduction=reduction, label_smoothing=ls), [logits])


def test_cross_entropy_float32_and_tensor_targets():
    rng = np.random.default_rng(38)
    logits = rng.standard_normal((4, 3)).astype(np.float32)
    t = Tensor(np.array([2, 0, 1, 1]))
    z = Tensor(logits, requires_grad=True)
    loss = F.cross_entropy(z, t)
    assert loss.dtype == np.float32 and loss.shape == ()
    loss.backward()
    assert z.grad.dtype == np.float32
    p = np.exp(R.log_softmax_ref(logits, 1))
    p[np.arange(4), t.data] -= 1
    np.testing.assert_allclose(z.grad, p / 4, rtol=1e-5, atol=1e-7)


def test_cross_entropy_errors():
    z = Tensor(np.zeros((3, 4)))
    with pytest.raises(ValueError, match=r"\[0, 3\]"):
        F.cross_entropy(z, np.array([0, 4, 1]))
    with pytest.raises(ValueError, match="integer targets"):
        F.cross_entropy(z, np.array([0.0, 1.0, 1.0]))
    with pytest.raises(ValueError, match="reduction"):
        F.cross_entropy(z, np.array([0, 1, 1]), reduction="avg")
    with pytest.raises(ValueError, match="label_smoothing"):
        F.cross_entropy(z, np.array([0, 1, 1]), label_smoothing=1.0)


@pytest.mark.parametrize("p", [0.2, 0.5])
def test_dropout_grad_uses_the_forward_mask(p):
    x = np.random.default_rng(39).standard_normal((4, 6))
    # a fresh generator with the same seed on every call: central differences see the same mask
    gradcheck(lambda t: F.dropout(t, p, rng=np.random.default_rng(5)), [x])
    t = Tensor(x, requires_grad=True)
    y = F.dropout(t, p, rng=np.random.default_rng(5))
    y.backward(np.ones(x.shape))
    kept = y.data != 0
    assert 0 < kept.sum() < x.size
    np.testing.assert_allclose(t.grad, kept / (1 - p), rtol=1e-15)
    np.testing.assert_allclose(y.data, x * kept / (1 - p), rtol=1e-15)


def test_dropout_scaling_keeps_the_expectation():
    p, n = 0.3, 200_000
    x = Tensor(np.full(n, 2.0, np.float32))
    y = F.dropout(x, p, rng=np.random.default_rng(0)).data
    assert y.dtype == np.float32
    kept = y != 0
    # kept values are exactly x / (1 - p); fraction dropped ~ p; mean ~ x (std of mean ~ 0.003)
    np.testing.assert_allclose(y[kept], np.float32(2.0) / np.float32(1 - p), rtol=1e-6)
    assert abs((~kept).mean() - p) < 0.005
    assert abs(y.mean() - 2.0) < 0.015


def test_dropout_identity_and_errors():
    x = Tensor(np.ones((2, 3)))
    assert F.dropout(x, 0.5, training=False) is x
    assert F.dropout(x, 0.0, rng=np.random.default_rng(0)) is x
    with pytest.raises(TypeError, match="Generator"):
        F.dropout(x, 0.5, rng=None)
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        F.dropout(x, 1.0, rng=np.random.default_rng(0))
