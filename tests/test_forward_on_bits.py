"""Training forward on bits (bitnet.ops.binary): a binary QConv2d / QDense whose input and weights are
+-1 runs its forward on the XNOR-popcount kernels; outputs, losses and the input's and bias's
gradients must equal the float path's bit for bit (the dot products are exact integers either way).
A dense layer's weight and input gradients, and a channels-last convolution's (whose lowered
input holds only +-1), come by table lookup (bitnet.kernels.sign_tables,
bitnet.ops.sign_backward): the same sums in another order, within their rounding bound
(tests/sign_table_bounds.py)."""
from __future__ import annotations

import numpy as np
import pytest

import bitnet
from bitnet import functional as F
from bitnet import nn
from bitnet.ops.binary import BinaryConv2d, BinaryMatMul
from bitnet.tensor import Tensor
from tests.sign_table_bounds import (conv_input_grad_bound, conv_weight_grad_bound, dense_input_grad_bound,
                                     dense_weight_grad_bound)


def _run(layer, x, on_bits, seed=0):
    """Output and gradients (input, weight, bias) of sum(out * r) for a fixed random r."""
    layer.forward_on_bits = on_bits
    layer.zero_grad()
    xt = Tensor(x.copy(), requires_grad=True)
    out = layer(xt)
    r = np.random.default_rng(seed).standard_normal(out.shape).astype(np.float32)
    (out * Tensor(r)).sum().backward()
    grads = [xt.grad, layer.weight.grad] + ([layer.bias.grad] if layer.bias is not None else [])
    return out, grads, r


@pytest.fixture
def bit_calls(monkeypatch):
    """Counts forward passes of the on-bits ops."""
    calls = []
    for op in (BinaryConv2d, BinaryMatMul):
        original = op.forward
        monkeypatch.setattr(op, "forward", lambda self, *a, _f=original, **k: calls.append(1) or _f(self, *a, **k))
    return calls


def _assert_same(layer, x, calls):
    out_bits, g_bits, r = _run(layer, x, True)
    assert len(calls) == 1  # ran on bits
    out_float, g_float, _ = _run(layer, x, False)
    assert len(calls) == 1  # and the float path did not
    assert np.array_equal(out_bits.data, out_float.data)
    conv = isinstance(layer, nn.QConv2d)
    scale = layer.kernel_scale()
    if scale is not None:  # the gradient reaching the product
        r = r * np.asarray(getattr(scale, "data", scale)).reshape((1, -1, 1, 1) if conv else (1, -1))
    tables = conv and layer.weight.shape[1] >= 16 and (layer.pad_value != 0 or not any(layer.padding))
    for i, (a, b) in enumerate(zip(g_bits, g_float)):
        assert a is not None
        if i == 1:  # the weight's: within the tables' bound (dense, and convolutions that use them)
            bound = conv_weight_grad_bound(r, layer.groups, layer.weight[0].size) if conv else dense_weight_grad_bound(r)
            assert np.all(np.abs(a.astype(np.float64) - b) <= bound)
        elif i == 0 and (tables or not conv):  # the input's, by tables (bitnet.ops.sign_backward, BinaryMatMul)
            bound = conv_input_grad_bound(r, layer.weight.shape, x.shape, layer.stride, layer.padding,
                                          layer.dilation, layer.groups) if conv else dense_input_grad_bound(r)
            assert np.all(np.abs(a.astype(np.float64) - b) <= bound)
        else:
            assert np.array_equal(a, b)


CONV = [  # cin, cout, k, stride, padding, dilation, groups, pad_value, bias
    (8, 6, 3, 1, 1, 1, 1, 1.0, True),
    (70, 16, 3, 2, 1, 1, 1, -1.0, False),
    (64, 64, 5, 1, 2, 1, 1, 0.0, True),
    (12, 8, 3, 1, 2, 2, 2, 0.0, True),
    (20, 4, (1, 3), (2, 1), (0, 1), 1, 1, -1.0, True),
    (16, 32, 3, 1, 0, 1, 1, 1.0, False),
]


@pytest.mark.parametrize("scaling", [None, "channel"])
@pytest.mark.parametrize("cfg", CONV, ids=lambda c: "-".join(map(str, c)))
def test_binary_conv_forward_on_bits_equals_float_path(cfg, scaling, bit_calls):
    cin, cout, k, s, p, d, g, pad_value, bias = cfg
    layer = nn.QConv2d(cin, cout, k, stride=s, padding=p, dilation=d, groups=g, pad_value=pad_value, bias=bias,
                       scaling=scaling, rng=1)
    if bias:
        layer.bias.data[:] = np.random.default_rng(2).normal(size=cout).astype(np.float32)
    x = np.random.default_rng(cin).standard_normal((3, cin, 9, 8)).astype(np.float32)
    x[0, 0, :2, :2] = 0.0  # sign(0) = +1 on both paths
    assert layer.runs_on_bits()
    _assert_same(layer, x, bit_calls)


@pytest.mark.parametrize("scaling", [None, "channel"])
@pytest.mark.parametrize("k", [5, 64, 100, 300])
def test_binary_dense_forward_on_bits_equals_float_path(k, scaling, bit_calls):
    layer = nn.QDense(k, 37, scaling=scaling, rng=3)
    layer.bias.data[:] = np.random.default_rng(4).normal(size=37).astype(np.float32)
    x = np.random.default_rng(k).standard_normal((6, k)).astype(np.float32)
    _assert_same(layer, x, bit_calls)


def test_which_layers_run_on_bits():
    assert nn.QConv2d(4, 4, 3, rng=0).runs_on_bits()
    assert nn.QDense(4, 4, input_quantizer="approx_sign", kernel_quantizer="swish_sign", rng=0).runs_on_bits()
    assert nn.QConv2d(4, 4, 3, scaling="channel", rng=0).runs_on_bits()  # alpha * (integer dot)
    assert not nn.QDense(4, 4, act_bit=2, rng=0).runs_on_bits()
    assert not nn.QDense(4, 4, act_bit=32, rng=0).runs_on_bits()
    layer = nn.QDense(4, 4, rng=0)
    layer.forward_on_bits = False
    assert not layer.runs_on_bits() and nn.QDense(4, 4, rng=0).runs_on_bits()  # per layer, nothing global


def test_lenet_binary_training_steps_agree_on_bits_and_in_float(bit_calls):
    """Three SGD steps of lenet-binary, on bits and in float. The losses of a step differ only through
    the weights of the steps before; a weight differs by lr times the rounding of its gradient
    (below 1e-6 of the gradient's terms here, tests/sign_table_bounds.py), so the losses and weights
    agree to 1e-5 relative; a weight within that distance of 0 (a sign flip) would break this, and
    none is (seeded data)."""
    rng = np.random.default_rng(0)
    x = Tensor(rng.standard_normal((16, 1, 28, 28)).astype(np.float32))
    y = Tensor(rng.integers(0, 10, 16))
    runs = []
    for on_bits in (True, False):
        model = bitnet.models.get("lenet-binary", seed=0)
        for m in model.modules():
            if hasattr(m, "forward_on_bits"):
                m.forward_on_bits = on_bits
        opt = bitnet.optim.SGD(model.parameters(), lr=0.1)
        losses = []
        for _ in range(3):
            opt.zero_grad()
            loss = F.cross_entropy(model(x), y)
            loss.backward()
            opt.step()
            losses.append(loss.item())
        runs.append((losses, [p.data.copy() for p in model.parameters()]))
    assert len(bit_calls) == 3 * 2  # QConv2d and QDense, three steps, only in the first run
    assert runs[0][0][0] == runs[1][0][0]  # the first step's loss: the same weights, exact dot products
    np.testing.assert_allclose(runs[0][0], runs[1][0], rtol=1e-5)
    for a, b in zip(runs[0][1], runs[1][1]):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
