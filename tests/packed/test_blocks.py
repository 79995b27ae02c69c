"""bitnet.packed.blocks: channels-last feature maps, the fused float stem and downsampling shortcut, the
packed residual block; and the channels-last average pool kernel they use."""
from __future__ import annotations

import numpy as np
import pytest

import bitnet
from bitnet import nn
from bitnet.kernels.pooling import avg_pool_forward, avg_pool_nhwc
from bitnet.packed import ChannelsLastConv2d, ChannelsLastShortcut, FeatureMap, PackedConv2d, PackedResidualBlock
from bitnet.tensor import Tensor, no_grad

F32_EPS = float(np.finfo(np.float32).eps)


def _warm_bn(bn, rng):
    bn.running_mean[:] = rng.normal(size=bn.num_features).astype(np.float32)
    bn.running_var[:] = rng.uniform(0.5, 2.0, bn.num_features).astype(np.float32)
    bn.weight.data[:] = rng.uniform(-1.5, 1.5, bn.num_features).astype(np.float32)
    bn.bias.data[:] = rng.normal(size=bn.num_features).astype(np.float32)
    return bn.eval()


def _eval(module, x):
    with no_grad():
        return module(Tensor(x)).data


def test_feature_map_is_an_nchw_view_of_its_channels_last_data():
    x = np.random.default_rng(0).standard_normal((2, 3, 4, 5)).astype(np.float32)
    fm = FeatureMap.from_tensor(Tensor(x))
    assert fm.nhwc.shape == (2, 4, 5, 3) and fm.nhwc.flags.c_contiguous and fm.bits is None
    assert np.array_equal(fm.data, x) and np.shares_memory(fm.data, fm.nhwc)
    assert FeatureMap.from_tensor(fm) is fm
    with pytest.raises(ValueError, match=r"expected a feature map \(N, C, H, W\), got shape \(2, 3\)"):
        FeatureMap.from_tensor(np.zeros((2, 3), np.float32))


@pytest.mark.parametrize("shape,k,ceil", [((2, 8, 6, 5), 2, False), ((1, 9, 9, 3), 3, False), ((3, 4, 4, 70), 1, False),
                                          ((2, 7, 5, 3), 2, True), ((1, 8, 10, 4), 3, True), ((2, 8, 6, 5), 2, True)])
def test_channels_last_avg_pool_gives_the_same_bits_as_the_nchw_kernel(shape, k, ceil):
    """Floor mode, and ceil mode (a last window clipped where k does not divide the map, divided by
    the elements it holds): the NCHW kernel's bits, which are PyTorch's pool without padding."""
    x = np.random.default_rng(1).standard_normal(shape).astype(np.float32)  # (N, H, W, C)
    n, h, w, c = shape
    oh, ow = (-(-h // k), -(-w // k)) if ceil else (h // k, w // k)
    out = np.full((n, oh, ow, c), np.nan, np.float32)
    avg_pool_nhwc(x, k, out)
    ref = np.empty((n, c, oh, ow), np.float32)
    avg_pool_forward(np.ascontiguousarray(x.transpose(0, 3, 1, 2)), k, k, k, k, 0, 0, ref)
    assert np.array_equal(out, ref.transpose(0, 2, 3, 1))
    if ceil and h % k:  # the clipped last row of windows: the mean of what it holds
        np.testing.assert_allclose(out[:, -1, 0], x[:, (oh - 1) * k:, :k].mean(axis=(1, 2)), rtol=1e-6)


@pytest.mark.parametrize("stride,padding,relu", [(1, 1, True), (2, 0, False), (1, 2, True)])
def test_channels_last_stem_matches_conv_batchnorm_relu(stride, padding, relu):
    rng = np.random.default_rng(stride + padding)
    mods = [nn.Conv2d(3, 16, 3, stride=stride, padding=padding, bias=True, rng=0), _warm_bn(nn.BatchNorm2d(16), rng)]
    if relu:
        mods.append(nn.ReLU())
    seq = nn.Sequential(*mods).eval()
    stem = ChannelsLastConv2d.from_sequential(seq)
    assert stem is not None and stem.relu == relu
    x = rng.standard_normal((2, 3, 11, 10)).astype(np.float32)
    got, ref = _eval(stem, x), _eval(seq, x)
    assert got.shape == ref.shape
    # float32 sums of 27 products, folded in float64 then rounded: a few ulps of the terms' size
    bound = 64 * F32_EPS * (np.abs(ref).max() + 1)
    assert np.abs(got - ref).max() <= bound


def test_only_supported_forms_are_fused():
    rng = np.random.default_rng(2)
    bn = _warm_bn(nn.BatchNorm2d(4), rng)
    assert ChannelsLastConv2d.from_sequential(nn.Sequential(nn.Conv2d(4, 4, 3, groups=2, rng=0), bn)) is None
    assert ChannelsLastConv2d.from_sequential(nn.Sequential(nn.Conv2d(4, 4, 3, dilation=2, rng=0), bn)) is None
    assert ChannelsLastConv2d.from_sequential(nn.Sequential(nn.Conv2d(4, 4, 3, rng=0), bn, nn.Tanh())) is None
    assert ChannelsLastConv2d.from_sequential(nn.Sequential(bn, nn.Conv2d(4, 4, 3, rng=0))) is None
    assert ChannelsLastShortcut.from_modules(nn.Sequential(nn.MaxPool2d(2), nn.Conv2d(4, 8, 1, rng=0), bn)) is None
    assert ChannelsLastShortcut.from_modules(nn.Sequential(nn.AvgPool2d(2), nn.Conv2d(4, 4, 3, rng=0), bn)) is None


@pytest.mark.parametrize("pool,ceil,size", [(1, False, (8, 6)), (2, False, (8, 6)), (2, True, (8, 6)), (2, True, (7, 5))])
def test_channels_last_shortcut_matches_pool_conv_batchnorm(pool, ceil, size):
    rng = np.random.default_rng(pool)
    seq = nn.Sequential(nn.AvgPool2d(2, ceil_mode=ceil) if pool == 2 else nn.Identity(),
                        nn.Conv2d(64, 32, 1, bias=False, rng=0), _warm_bn(nn.BatchNorm2d(32), rng)).eval()
    sc = ChannelsLastShortcut.from_modules(seq)
    assert sc is not None and sc.pool == pool and sc.ceil_mode == ceil
    x = rng.standard_normal((2, 64, *size)).astype(np.float32)
    got = sc(FeatureMap.from_tensor(Tensor(x))).data
    ref = _eval(seq, x)
    assert got.shape == ref.shape and np.abs(got - ref).max() <= 256 * F32_EPS * (np.abs(ref).max() + 1)
    with pytest.raises(ValueError, match="does not split into 2x2"):
        ChannelsLastShortcut(2, np.ones((3, 3)), np.ones(3), np.zeros(3))(FeatureMap.from_tensor(np.zeros((1, 3, 3, 4), np.float32)))


def test_packed_resnet_uses_the_fused_blocks_and_hands_signs_over():
    model = bitnet.models.get("resnet18-binary", image_size=16, seed=0).eval()
    packed = bitnet.pack(model)
    blocks = list(packed.stages._modules.values())
    assert isinstance(packed.stem, ChannelsLastConv2d)
    assert all(isinstance(b, PackedResidualBlock) for b in blocks)
    sc = ChannelsLastShortcut
    assert [type(b.shortcut) for b in blocks] == [type(None), type(None), sc, type(None), sc, type(None), sc, type(None)]
    assert len(packed.packed_layers) == 16 and all(isinstance(dict(packed.named_modules())[n], PackedConv2d)
                                                   for n in packed.packed_layers)
    # every binary convolution after the first gets its input's signs from the previous epilogue
    seen = []
    hooks = [dict(packed.named_modules())[n].register_forward_hook(
        lambda m, i, o: seen.append(isinstance(i[0], FeatureMap) and i[0].bits is not None))
        for n in packed.packed_layers]
    x = Tensor(np.random.default_rng(0).standard_normal((2, 3, 16, 16)).astype(np.float32))
    with no_grad():
        y = packed(x)
    for h in hooks:
        h.remove()
    assert seen == [False] + [True] * 15
    assert y.shape == (2, 10)


def test_float_first_stage_keeps_the_float_stem():
    model = bitnet.models.get("resnet18-binary", image_size=8, full_precision_stages=(1,), seed=0).eval()
    packed = bitnet.pack(model)
    assert isinstance(packed.stem, nn.Sequential)
    assert sum(isinstance(b, PackedResidualBlock) for b in packed.stages._modules.values()) == 6
