"""bitnet.pack reads a layer by its class only where the layer's forward is its class's
(bitnet.packed.kinds), runs batches in slices only where samples are independent, and takes what
the eval model takes (dense inputs with leading axes, slices of a packed Sequential)."""
import warnings

import numpy as np
import pytest

import bitnet
from bitnet import nn, Tensor
from bitnet.nn.sync_batchnorm import SyncBatchNorm2d
from bitnet.packed.kinds import computes_as, hook_trusted
from bitnet.packed.sign_chains import find_chains


class ScaledQConv(nn.QConv2d):  # a learned gain after the binary convolution (XNOR-Net++ style)
    def __init__(self, *a, **k):
        super().__init__(*a, **k)
        self.gain = nn.Parameter(np.full((1, self.out_channels, 1, 1), 3.0, np.float32))

    def forward(self, x):
        return super().forward(x) * self.gain


class RSign(nn.QActivation):  # a shifted sign (ReActNet style)
    def __init__(self, c):
        super().__init__(1)
        self.shift = nn.Parameter(np.full((1, c, 1, 1), 0.5, np.float32))

    def forward(self, x):
        return self.quantizer(x - self.shift)


class DoubledBN(nn.BatchNorm2d):
    def forward(self, x):
        return super().forward(x) * 2.0


class DoubledConv(nn.Conv2d):
    def forward(self, x):
        return super().forward(x) * 2.0


class SeededQConv(nn.QConv2d):  # a subclass that changes construction only: still a QConv2d's forward
    pass


class Skip(nn.Sequential):  # a Sequential whose forward is not the composition of its children
    def forward(self, x):
        return super().forward(x) + x


def _x(shape, seed=0):
    return Tensor(np.random.default_rng(seed).standard_normal(shape).astype(np.float32))


def _close(model, packed, x):
    a, b = model(x).data, packed(x).data
    assert a.shape == b.shape
    np.testing.assert_allclose(b, a, rtol=0, atol=1e-5 * (np.abs(a).max() + 1))  # folded BN / BLAS rounding


def test_computes_as():
    assert computes_as(nn.QConv2d(4, 4, 3), nn.QConv2d) and computes_as(SeededQConv(4, 4, 3), nn.QConv2d)
    assert not computes_as(ScaledQConv(4, 4, 3), nn.QConv2d)
    assert not computes_as(nn.QConv2d(4, 4, 3), nn.Conv2d)  # a quantized convolution is not a float one
    assert computes_as(nn.Identity(), nn.Identity) and not computes_as(nn.Tanh(), nn.Identity)
    assert computes_as(SyncBatchNorm2d(4), nn.BatchNorm2d)  # the same forward in eval mode (declared)
    assert not computes_as(DoubledBN(4), nn.BatchNorm2d)
    assert not computes_as(nn.ReLU(), nn.Conv2d)


@pytest.mark.parametrize("make", [
    lambda: nn.Sequential(nn.Conv2d(1, 4, 3, rng=0), nn.ReLU(), ScaledQConv(4, 6, 3, rng=1)),
    lambda: nn.Sequential(nn.Conv2d(1, 4, 3, rng=0), nn.BatchNorm2d(4), RSign(4), nn.QConv2d(4, 6, 3, rng=1)),
    lambda: nn.Sequential(nn.Conv2d(1, 4, 3, rng=0), nn.QConv2d(4, 6, 3, rng=1), DoubledBN(6)),
    lambda: nn.Sequential(DoubledConv(1, 4, 3, rng=0), nn.QActivation(1), nn.QConv2d(4, 6, 3, rng=1)),
    lambda: nn.Sequential(nn.Conv2d(1, 4, 3, rng=0), Skip(nn.QConv2d(4, 4, 3, padding=1, rng=1)), nn.QConv2d(4, 6, 3)),
], ids=["gain-after-qconv", "shifted-sign", "own-batchnorm", "own-float-conv", "own-sequential"])
def test_layers_with_their_own_forward_pack_to_what_eval_computes(make):
    model = make().eval()
    for m in model.modules():  # statistics away from (0, 1), so a wrongly folded batch norm shows
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean[:] = 0.3
            m.running_var[:] = 2.0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        packed = bitnet.pack(model)
    _close(model, packed, _x((3, 1, 9, 9)))


def test_binary_layer_with_own_forward_stays_float_and_is_named():
    model = nn.Sequential(nn.Conv2d(1, 4, 3, rng=0), ScaledQConv(4, 6, 3, rng=1), SeededQConv(6, 6, 3, rng=2)).eval()
    with pytest.warns(UserWarning, match=r"bitnet.pack: 1 stay in float.*overrides the forward"):
        packed = bitnet.pack(model)
    assert packed.packed_layers == ["2"]  # the subclass without a forward of its own runs on bits
    assert type(packed[1]) is ScaledQConv
    _close(model, packed, _x((2, 1, 11, 11)))


def test_sync_batchnorm_folds_like_batchnorm():
    model = nn.Sequential(nn.Conv2d(1, 4, 3, rng=0), nn.QConv2d(4, 6, 3, rng=1), SyncBatchNorm2d(6)).eval()
    model[2].running_mean[:] = 0.5
    packed = bitnet.pack(model)
    assert isinstance(packed[2], nn.Identity)  # folded into the packed layer
    _close(model, packed, _x((2, 1, 9, 9)))


def test_float_qconv_padding_with_ones_is_no_chain_source():
    model = nn.Sequential(nn.QConv2d(1, 4, 3, padding=1, act_bit=32, weight_bit=32, pad_value=1, rng=0),
                          nn.QActivation(1), nn.QConv2d(4, 6, 3, rng=1)).eval()
    packed = bitnet.pack(model)
    assert packed._sign_chains == []
    _close(model, packed, _x((3, 1, 6, 6)))
    zero_padded = nn.Sequential(nn.QConv2d(1, 4, 3, padding=1, act_bit=32, weight_bit=32, pad_value=0, rng=0),
                                nn.QActivation(1), nn.QConv2d(4, 6, 3, rng=1)).eval()
    assert len(find_chains(bitnet.pack(zero_padded))) == 1  # it computes F.conv2d: still one


def test_residual_block_with_own_forward_is_not_packed_by_its_hook():
    from bitnet.models.resnet import BasicBlock

    class Scaled(BasicBlock):
        def forward(self, x):
            return super().forward(x) * 0.5

    block = Scaled(8, 8, binary=True, rng=np.random.default_rng(0)).eval()
    assert hook_trusted(BasicBlock(8, 8, binary=True), "to_packed") and not hook_trusted(block, "to_packed")
    from bitnet.packed.blocks import PackedResidualBlock
    assert isinstance(bitnet.pack(BasicBlock(8, 8, binary=True)), PackedResidualBlock)  # the hook, where trusted
    packed = bitnet.pack(block)
    assert isinstance(packed, Scaled) and packed.packed_layers == ["conv1", "conv2"]  # packed layer by layer
    assert not any(isinstance(m, PackedResidualBlock) for m in packed.modules())
    _close(block, packed, _x((2, 8, 6, 6)))


def test_batch_statistics_turn_slicing_off():
    model = nn.Sequential(nn.Conv2d(1, 4, 3, rng=0), nn.QConv2d(4, 6, 3, rng=1),
                          nn.BatchNorm2d(6, track_running_stats=False)).eval()
    packed = bitnet.pack(model, micro_batch=8)
    assert packed.micro_batch is None
    _close(model, packed, _x((40, 1, 8, 8)))


@pytest.mark.parametrize("shape", [(2, 4, 6), (6,), (40, 6), (1, 6)])
def test_packed_dense_takes_leading_axes(shape):
    model = nn.Sequential(nn.Dense(6, 7, rng=0), nn.QDense(7, 5, rng=1)).eval()
    packed = bitnet.pack(model)
    _close(model, packed, _x(shape))
    _close(model, packed, _x(shape, seed=1))  # again: the plan recorded for this shape


def test_slice_of_a_packed_model_runs():
    model = bitnet.models.get("lenet-binary", seed=0).eval()
    packed = bitnet.pack(model)
    x = _x((40, 1, 28, 28))
    for sl in (slice(0, 4), slice(2, None)):
        part = x if sl.start == 0 else model[0:sl.start](x)
        _close(model[sl], packed[sl], part)


def test_wrong_image_size_names_features():
    packed = bitnet.pack(bitnet.models.get("lenet-binary", seed=0).eval())
    with pytest.raises(ValueError, match=r"expects 1024 features \(16 packed words a row\), got packed rows of shape "
                                         r"\(3, 9\).*size the model was built for"):
        packed(np.zeros((3, 1, 24, 24), np.float32))
