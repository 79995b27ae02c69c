"""XNOR-Net scaling (``scaling="channel"``, magnitude_aware_sign) computed as ``alpha * (integer dot)``:
the float path leaves exact zeros where the dot product is 0, so it agrees in sign with the forward on
bits and with the packed model everywhere (a sum of +-alpha terms in float32 left 1-ulp residues)."""
from __future__ import annotations

import numpy as np
import pytest

import bitnet
from bitnet import nn
from bitnet.tensor import Tensor


def _sign(a):
    return np.where(a < 0, -1, 1)


def _float_path(model):
    for m in model.modules():
        if hasattr(m, "forward_on_bits"):
            m.forward_on_bits = False
    return model


@pytest.mark.parametrize("cin", [8, 10, 64])
def test_scaled_layer_is_exactly_zero_where_the_dot_is_zero(cin):
    layer = _float_path(nn.QConv2d(cin, 16, 1, scaling="channel", bias=False, rng=0)).eval()
    x = np.random.default_rng(1).standard_normal((4, cin, 6, 5)).astype(np.float32)
    with bitnet.no_grad():
        y = layer(Tensor(x)).data
        dots = bitnet.pack(layer).dots(Tensor(x))
    alpha = np.abs(layer.weight.data).reshape(16, -1).mean(axis=1)
    assert (dots == 0).sum() > 0 or cin % 2  # an even K has zero dots
    assert np.array_equal(y == 0, dots == 0)
    assert np.array_equal(y, (dots.astype(np.float32) * alpha[None, :, None, None]).astype(np.float32))


def test_scaled_network_float_packed_and_bits_agree_in_sign():
    def net():
        return nn.Sequential(nn.QConv2d(8, 16, 1, scaling="channel", bias=False, rng=2),
                             nn.QConv2d(16, 12, 3, padding=1, scaling="channel", bias=False, rng=3),
                             nn.Flatten(), nn.QDense(12 * 5 * 5, 10, scaling="channel", rng=4))
    x = Tensor(np.random.default_rng(5).standard_normal((16, 8, 5, 5)).astype(np.float32))
    outs = {}
    with bitnet.no_grad():
        for name, model in (("float", _float_path(net())), ("bits", net())):
            acts = []
            for m in model:
                m.register_forward_hook(lambda mod, i, o, acts=acts: acts.append(o.data.copy()))
            model.eval()(x)
            outs[name] = acts
        packed = bitnet.pack(net(), micro_batch=None)  # whole batches: the hooks see every sample at once
        acts = []
        for m in packed:
            m.register_forward_hook(lambda mod, i, o, acts=acts: acts.append(np.asarray(o.data).copy()))
        packed(x)
        outs["packed"] = acts
    for a, b in zip(outs["float"], outs["bits"]):
        assert np.array_equal(a, b)
    for a, b in zip(outs["float"], outs["packed"]):  # the next binary layer sees the same signs
        assert np.array_equal(_sign(a), _sign(b.reshape(a.shape)))
