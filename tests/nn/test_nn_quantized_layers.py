"""QActivation, QDense, QConv2d against their float twins on pre-quantized data (exactly)."""
from __future__ import annotations

import warnings

import numpy as np
import pytest

import bitnet.functional as F
from bitnet import Tensor, nn, optim


def sign(a):
    return np.where(a >= 0, 1.0, -1.0).astype(a.dtype)


@pytest.mark.parametrize("shape", [(1, 7), (5, 130)])  # K not a multiple of 64, batch 1
def test_qdense_binary_equals_dense_on_signs(shape):
    rng = np.random.default_rng(0)
    x = rng.standard_normal(shape).astype(np.float32)
    x[0, 0] = 0.0  # sign(0) = +1
    q = nn.QDense(shape[1], 9, rng=1)
    d = nn.Dense(shape[1], 9, rng=1)
    d.weight.data[...] = sign(q.weight.data)
    d.bias.data[...] = q.bias.data
    np.testing.assert_array_equal(q(Tensor(x)).data, d(Tensor(sign(x))).data)


@pytest.mark.parametrize("pad_value", [-1, 0, 1])
@pytest.mark.parametrize("geom", [  # C, O, H, W, k, stride, padding, dilation, groups, N
    (3, 4, 9, 7, 3, 1, 1, 1, 1, 1), (4, 6, 8, 8, 3, 2, 2, 1, 2, 2), (70, 5, 5, 6, 3, 1, 1, 2, 1, 2),
], ids=str)
def test_qconv2d_binary_equals_conv_on_padded_signs(geom, pad_value):
    c, o, h, w, k, s, p, d, g, n = geom
    rng = np.random.default_rng(sum(geom))
    x = rng.standard_normal((n, c, h, w)).astype(np.float32)
    x[0, 0, 0, :2] = 0.0
    q = nn.QConv2d(c, o, k, stride=s, padding=p, dilation=d, groups=g, pad_value=pad_value, rng=2)
    ws = sign(q.weight.data)
    xs = np.pad(sign(x), ((0, 0), (0, 0), (p, p), (p, p)), constant_values=pad_value)
    ref = F.conv2d(Tensor(xs), Tensor(ws), Tensor(q.bias.data), stride=s, dilation=d, groups=g).data
    np.testing.assert_array_equal(q(Tensor(x)).data, ref)


def test_default_pad_value_is_sign_of_zero_padding():
    rng = np.random.default_rng(3)
    x = rng.standard_normal((2, 3, 6, 6)).astype(np.float32)
    q = nn.QConv2d(3, 4, 3, padding=1, rng=0)
    assert q.pad_value == 1.0
    ws = sign(q.weight.data)
    zero_padded_then_signed = sign(np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1))))
    ref = F.conv2d(Tensor(zero_padded_then_signed), Tensor(ws), Tensor(q.bias.data)).data
    np.testing.assert_array_equal(q(Tensor(x)).data, ref)
    assert nn.QConv2d(3, 4, 3, padding=1, act_bit=32, rng=0).pad_value == 0.0


def test_full_precision_settings_are_exactly_the_float_twin():
    rng = np.random.default_rng(4)
    x = rng.standard_normal((3, 2, 7, 7)).astype(np.float32)
    q = nn.QConv2d(2, 3, 3, padding=1, act_bit=32, weight_bit=32, rng=5)
    f = nn.Conv2d(2, 3, 3, padding=1, rng=5)
    np.testing.assert_array_equal(q(Tensor(x)).data, f(Tensor(x)).data)
    qd, fd = nn.QDense(7, 4, act_bit=32, weight_bit=32, rng=6), nn.Dense(7, 4, rng=6)
    np.testing.assert_array_equal(qd(Tensor(x[:, 0, 0])).data, fd(Tensor(x[:, 0, 0])).data)
    np.testing.assert_array_equal(nn.QActivation(32)(Tensor(x)).data, x)


def test_kbit_layers_equal_twin_on_quantized_values():
    from bitnet import quantizers as Q
    rng = np.random.default_rng(7)
    x = rng.uniform(-0.5, 1.5, (4, 10)).astype(np.float32)
    q = nn.QDense(10, 3, act_bit=2, weight_bit=3, rng=8)
    xq = Q.get({"name": "dorefa_activation", "bits": 2})(Tensor(x)).data
    wq = Q.get({"name": "dorefa_weight", "bits": 3})(q.weight).data
    assert len(np.unique(xq)) <= 4 and len(np.unique(wq)) <= 8
    ref = F.linear(Tensor(xq), Tensor(wq), Tensor(q.bias.data)).data
    np.testing.assert_array_equal(q(Tensor(x)).data, ref)


def test_channel_scaling_is_xnor_alpha():
    rng = np.random.default_rng(9)
    x = rng.standard_normal((2, 3, 5, 5)).astype(np.float32)
    q = nn.QConv2d(3, 4, 3, scaling="channel", rng=1)
    w = q.weight.data
    alpha = np.abs(w).mean(axis=(1, 2, 3), keepdims=True)
    ref = F.conv2d(Tensor(sign(x)), Tensor((sign(w) * alpha).astype(np.float32)), Tensor(q.bias.data)).data
    np.testing.assert_allclose(q(Tensor(x)).data, ref, rtol=1e-6, atol=1e-6)


def test_latent_weights_kept_clipped_after_step_and_gradient_flows():
    q = nn.QDense(6, 3, rng=0)
    q.weight.data[0, 0] = 0.5
    before = q.weight.data.copy()
    x = Tensor(np.random.default_rng(1).standard_normal((4, 6)).astype(np.float32))
    out = q(x)
    np.testing.assert_array_equal(q.weight.data, before)  # forward never overwrites latent weights
    out.sum().backward()
    assert q.weight.grad is not None and np.any(q.weight.grad != 0)
    opt = optim.SGD(q.parameters(), lr=100.0)
    opt.step()
    assert np.abs(q.weight.data).max() <= 1.0  # clipped to [-1, 1] after the step
    assert np.any(np.abs(q.weight.data) == 1.0)


def test_unclipped_binary_kernel_warns_about_starved_weights():
    with pytest.warns(UserWarning, match="starved weights"):
        nn.QConv2d(2, 2, 3, kernel_clip=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        nn.QConv2d(2, 2, 3, weight_bit=4, kernel_clip=False)  # not binary: no warning


@pytest.mark.parametrize("kwargs,match", [
    (dict(pad_value=2), "pad_value must be -1, 0 or \\+1"),
    (dict(act_bit=0), "1..32|0"),
    (dict(weight_bit=33), "33"),
    (dict(scaling="tensor"), "scaling must be None or 'channel'"),
    (dict(scaling="channel", weight_bit=2), "binary kernel"),
    (dict(kernel_quantizer="no_such_quantizer"), "no_such_quantizer"),
])
def test_bad_arguments_are_clear_errors(kwargs, match):
    with pytest.raises((ValueError, TypeError), match=match):
        nn.QConv2d(2, 2, 3, **kwargs)


def test_explicit_quantizers_win_over_bits():
    q = nn.QDense(4, 2, act_bit=1, weight_bit=1, input_quantizer="approx_sign",
                  kernel_quantizer={"name": "dorefa_weight", "bits": 2})
    assert q.input_quantizer.get_config()["name"] == "approx_sign"
    assert q.kernel_quantizer.precision == 2
