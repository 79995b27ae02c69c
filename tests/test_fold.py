"""bitnet.packed.fold: which batch norms fold into binary layers, and the folded affine map."""
from __future__ import annotations

import numpy as np
import pytest

import bitnet
from bitnet import nn
from bitnet.packed import batchnorm_pairs, fold_batchnorm
from bitnet.tensor import Tensor, no_grad


def _randomize_bn(bn, rng):
    n = bn.num_features
    bn.weight.data[:] = rng.uniform(-2, 2, n).astype(np.float32)   # negative gammas too
    bn.bias.data[:] = rng.normal(size=n).astype(np.float32)
    bn.running_mean[:] = rng.normal(scale=5, size=n).astype(np.float32)
    bn.running_var[:] = rng.uniform(0.1, 30, n).astype(np.float32)


def test_pairs_of_the_zoo_models():
    assert batchnorm_pairs(bitnet.models.get("lenet-binary", seed=0)) == [("5", "6"), ("10", "11")]
    assert batchnorm_pairs(bitnet.models.get("lenet", seed=0)) == []
    pairs = batchnorm_pairs(bitnet.models.get("resnet18-binary", seed=0))
    assert len(pairs) == 16 and ("stages.7.conv2", "stages.7.bn2") in pairs
    assert all(not p[0].startswith("stem") and "shortcut" not in p[0] for p in pairs)
    assert len(batchnorm_pairs(bitnet.models.get("resnet18-binary", full_precision_stages=(1, 4), seed=0))) == 8


def test_only_adjacent_binary_layers_and_running_statistics_fold():
    m = nn.Sequential(nn.QDense(8, 4, rng=0), nn.Identity(), nn.BatchNorm1d(4),        # not adjacent
                      nn.QDense(4, 4, rng=0), nn.BatchNorm1d(4, track_running_stats=False),  # batch stats
                      nn.QDense(4, 4, weight_bit=2, rng=0), nn.BatchNorm1d(4),          # 2-bit kernel
                      nn.QDense(4, 4, rng=0), nn.BatchNorm1d(4))
    assert batchnorm_pairs(m) == [("7", "8")]


@pytest.mark.parametrize("scaling,bias", [(None, True), ("channel", True), ("channel", False), (None, False)])
def test_folded_affine_equals_layer_then_batchnorm(scaling, bias):
    rng = np.random.default_rng(3)
    layer = nn.QConv2d(5, 7, 3, padding=1, bias=bias, scaling=scaling, rng=1)
    if bias:
        layer.bias.data[:] = rng.normal(size=7).astype(np.float32)
    bn = nn.BatchNorm2d(7)
    _randomize_bn(bn, rng)
    x = rng.normal(size=(2, 5, 6, 6)).astype(np.float32)
    layer.eval(), bn.eval()
    with no_grad():
        expected = bn(layer(Tensor(x))).data.astype(np.float64)
        # the integer dot products: sign(x) padded with +1, convolved with sign(W); no bias, no scale
        xs = bitnet.functional.pad(Tensor(np.where(x >= 0, 1.0, -1.0).astype(np.float32)), ((1, 1), (1, 1)),
                                   value=1.0)
        ws = Tensor(np.where(layer.weight.data >= 0, 1.0, -1.0).astype(np.float32))
        d = bitnet.functional.conv2d(xs, ws, None, 1, 0, 1, 1).data
    assert np.array_equal(d, np.round(d))
    scale, shift = fold_batchnorm(layer, bn)
    assert scale.dtype == shift.dtype == np.float32
    got = scale[:, None, None].astype(np.float64) * d + shift[:, None, None]
    # float32 rounding of both computations: a few ulps of the largest magnitude involved
    bound = 8 * np.finfo(np.float32).eps * (np.abs(expected) + np.abs(scale[:, None, None] * d) + 1)
    assert np.all(np.abs(got - expected) <= bound)


def test_fold_without_batchnorm_gives_scale_and_bias():
    layer = nn.QDense(10, 3, scaling="channel", rng=0)
    layer.bias.data[:] = [1, 2, 3]
    scale, shift = fold_batchnorm(layer)
    np.testing.assert_allclose(scale, np.abs(layer.weight.data).mean(axis=1), rtol=1e-6)
    assert shift.tolist() == [1, 2, 3]


def test_mismatched_batchnorm_is_refused():
    with pytest.raises(ValueError, match="4 features, 3 channels"):
        fold_batchnorm(nn.QDense(10, 3, rng=0), nn.BatchNorm1d(4))
