"""sign(NaN) = +1 on every path: the float quantizers, the training forward on bits, the packed model
(bit = x < 0, and NaN is not below 0). One convention, so a NaN never makes the paths disagree."""
from __future__ import annotations

import numpy as np

import bitnet
from bitnet import nn, quantizers as Q
from bitnet.kernels.bits import pack_reference, unpack_reference
from bitnet.tensor import Tensor


def test_sign_quantizers_send_nan_to_plus_one():
    x = np.array([np.nan, -np.nan, 0.0, -0.0, -2.0, 3.0], np.float32)
    for name in ("ste_sign", "approx_sign", "swish_sign"):
        assert Q.get(name)(x).data.tolist() == [1, 1, 1, 1, -1, 1], name
    assert Q.get("ste_heaviside")(x).data.tolist() == [1, 1, 1, 1, 0, 1]
    assert unpack_reference(pack_reference(x), x.size).tolist() == [1, 1, 1, 1, -1, 1]


def test_nan_inputs_give_the_same_outputs_float_bits_and_packed():
    def net():
        return nn.Sequential(nn.QConv2d(6, 8, 3, padding=1, rng=0), nn.Flatten(), nn.QDense(8 * 4 * 4, 5, rng=1))
    x = np.random.default_rng(2).standard_normal((3, 6, 4, 4)).astype(np.float32)
    x[0, :, 1, 1] = np.nan
    x[2, 3] = np.nan
    outs = []
    with bitnet.no_grad():
        for on_bits in (False, True):
            model = net().eval()
            for m in model.modules():
                if hasattr(m, "forward_on_bits"):
                    m.forward_on_bits = on_bits
            outs.append(model(Tensor(x)).data)
        outs.append(bitnet.pack(net())(Tensor(x)).data)
    assert np.all(np.isfinite(outs[0]))  # the NaNs were binarized, not propagated
    assert np.array_equal(outs[0], outs[1])
    np.testing.assert_allclose(outs[2], outs[0], rtol=1e-5, atol=1e-4)  # folding: float rounding only
