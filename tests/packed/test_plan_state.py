"""A packed model's plans and the model's state: copies, loads into parts of the model, modules that keep
what they are given, integer inputs, training mode, and declarations that cannot be read or do not describe the forward.
Each case is compared with the layer-by-layer run (``packed_helpers.layer_by_layer``), exactly."""
from __future__ import annotations

import copy

import numpy as np
import pytest

import bitnet
from bitnet import nn
from bitnet.packed import pack
from bitnet.tensor import no_grad
from packed_helpers import layer_by_layer, warm

Q = dict(act_bit=1, weight_bit=1)


def _resnet(seed):
    return pack(warm(bitnet.models.get("resnet18-binary", image_size=8, seed=seed), np.random.default_rng(seed)))


def _x(seed, shape=(2, 3, 8, 8)):
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def test_the_reference_runs_no_plan(monkeypatch):
    from bitnet.packed import plan
    packed, x = _resnet(0), _x(0)
    with no_grad():
        packed(x), packed(x)
    runs = []
    monkeypatch.setattr(plan._Plan, "__call__", lambda self, a: runs.append(a))
    layer_by_layer(packed, x)
    assert runs == [] and any(m.__dict__.get("_plans") for m in packed.modules())  # set aside, given back


@pytest.mark.parametrize("part", ["", "stages", "stages.3", "stages.3.conv1", "stages.2.shortcut", "fc"])
def test_loading_the_state_of_a_part_renews_the_plans_above_it(part):
    a, b, x = _resnet(1), _resnet(2), _x(1)
    with no_grad():
        a(x), a(x)
        before = a(x).data
        dict(a.named_modules())[part].load_state_dict(dict(b.named_modules())[part].state_dict())
        after = a(x).data
    assert not np.array_equal(after, before)
    np.testing.assert_array_equal(after, layer_by_layer(a, x))


def test_a_copy_of_a_packed_model_that_has_run_is_its_own():
    packed, x = _resnet(3), _x(3)
    with no_grad():
        packed(x), packed(x)
        twin, repacked = copy.deepcopy(packed), bitnet.pack(packed)
        twin.fc.weight.data[...] = 0
        twin.fc.bias.data[...] = 7
        np.testing.assert_array_equal(twin(x).data, np.full((2, 10), 7, np.float32))  # not the original's plan
        np.testing.assert_array_equal(repacked(x).data, packed(x).data)


def test_a_module_that_keeps_its_input_keeps_its_own_arrays():
    class Tap(nn.Module):
        def forward(self, x):
            self.kept = x
            return x
    rng = np.random.default_rng(4)
    packed = pack(warm(nn.Sequential(nn.QConv2d(3, 8, 3, rng=rng, **Q), nn.BatchNorm2d(8), Tap(), nn.Flatten(),
                                     nn.QDense(8 * 16, 4, rng=rng, **Q)), rng))
    x1, x2 = _x(5, (2, 3, 6, 6)), _x(6, (2, 3, 6, 6))
    with no_grad():
        packed(x1), packed(x1)
        kept = packed[2].kept
        seen = kept.data.copy()
        packed(x2)
    np.testing.assert_array_equal(kept.data, seen)  # not overwritten by the next call
    assert not np.array_equal(packed[2].kept.data, seen)


@pytest.mark.parametrize("dtype", [np.uint8, np.int64, np.float64])
def test_inputs_of_other_dtypes_take_the_layers_conversions(dtype):
    rng = np.random.default_rng(7)
    packed = pack(nn.Sequential(nn.Tanh(), nn.Flatten(), nn.QDense(12, 3, rng=rng, **Q), nn.Tanh()).eval())
    x = (rng.standard_normal((2, 3, 2, 2)) * 3).astype(dtype)
    want = layer_by_layer(packed, x)
    with no_grad():
        for _ in range(3):
            np.testing.assert_array_equal(packed(x).data, want)


def test_dropout_put_back_in_training_mode_drops_as_its_forward_does():
    rng = np.random.default_rng(8)
    packed = pack(nn.Sequential(nn.QConv2d(3, 8, 3, rng=rng, **Q), nn.Flatten(), nn.Dropout(0.5, rng=1),
                                nn.Dense(8 * 16, 4, rng=rng)).eval()).train()
    drop, x = packed[2], _x(9, (2, 3, 6, 6))
    for _ in range(3):
        state = copy.deepcopy(drop.rng.bit_generator.state)
        with no_grad():
            got = packed(x).data
        drop.rng.bit_generator.state = state
        np.testing.assert_array_equal(got, layer_by_layer(packed, x))


def test_a_forward_program_that_cannot_be_read_is_refused_when_packing():
    class Block(nn.Module):
        forward_program = ("conv", ("gelu",))

        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(2, 2, 1)

        def forward(self, x):
            return self.conv(x)
    with pytest.raises(ValueError, match=r"Block.forward_program: cannot read \('gelu',\)"):
        pack(nn.Sequential(Block(), nn.ReLU()).eval())


@pytest.mark.parametrize("micro_batch", [32, None])
def test_an_empty_batch_gives_an_empty_output(micro_batch):
    for name, shape in (("lenet-binary", (1, 28, 28)), ("resnet18-binary", (3, 32, 32))):
        packed = pack(bitnet.models.get(name, seed=0).eval(), micro_batch=micro_batch)
        with no_grad():
            for dtype in (np.float32, np.float64):
                out = packed(np.zeros((0,) + shape, dtype)).data
                assert out.shape == (0, 10) and out.dtype == packed(np.zeros((1,) + shape, dtype)).data.dtype


def test_a_forward_program_that_does_not_describe_the_forward_is_caught():
    """The plan follows the declaration (relu); the forward applies tanh: the first call per input
    shape compares the two, warns, names the declaration and gives the forward's values."""
    from bitnet import functional as F

    class Block(nn.Module):
        forward_program = ("conv", ("relu",))

        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3, rng=np.random.default_rng(0))

        def forward(self, x):
            return F.tanh(self.conv(x))
    packed = pack(nn.Sequential(Block(), nn.Flatten(), nn.QDense(4 * 36, 3, rng=np.random.default_rng(1), **Q)).eval())
    x = _x(10, (2, 3, 8, 8))
    want = layer_by_layer(packed, x)
    with no_grad():
        with pytest.warns(RuntimeWarning, match=r"other values than its layers' own forward.*Block\.forward_program"):
            first = packed(x).data
        import warnings
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            second = packed(x).data  # remembered: layer by layer, no second warning
    np.testing.assert_array_equal(first, want)
    np.testing.assert_array_equal(second, want)


def test_declarations_that_describe_the_forward_pass_the_check_silently():
    import warnings
    packed, x = _resnet(5), _x(5)
    with no_grad(), warnings.catch_warnings():
        warnings.simplefilter("error")
        first, second = packed(x).data, packed(x).data
    assert any(p.steps is not None for m in packed.modules() for p in m.__dict__.get("_plans", {}).values())
    np.testing.assert_array_equal(first, layer_by_layer(packed, x))
    np.testing.assert_array_equal(second, first)
