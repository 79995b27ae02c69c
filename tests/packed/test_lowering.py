"""bitnet.packed.lowering and the CPU executor (bitnet.packed.cpu_steps): one reading of the module tree,
and plans for whole models, the packed ResNet included, that give the bits of the layer-by-layer run."""
from __future__ import annotations

import warnings

import numpy as np
import pytest

import bitnet
from bitnet import nn
from bitnet.packed import pack
from bitnet.packed.lowering import lower
from bitnet.packed.model import slice_size
from bitnet.tensor import Tensor, no_grad
from packed_helpers import layer_by_layer, warm


def _warm(model, seed):
    return warm(model, np.random.default_rng(seed))


def _kinds(ops):
    return [op.kind for op in ops]


def test_lenet_lowers_to_chains_and_packed_layers():
    packed = pack(_warm(bitnet.models.get("lenet-binary", seed=0), 0))
    ops = lower(packed)
    # conv, bn, tanh, pool, sign -> binary conv 2, pool, flatten, sign -> binary dense, bn folded, tanh, dense
    assert _kinds(ops) == ["sign_chain", "sign_chain", "binary_dense", "unary", "dense"]
    assert _kinds(ops[0].parts["layers"])[:3] == ["float_conv", "batchnorm", "unary"]  # what the GPU runs
    assert _kinds(ops[1].parts["layers"])[0] == "binary_conv"
    assert all(op.name for op in ops)


def test_packed_resnet_lowers_to_stem_blocks_pool_and_classifier():
    packed = pack(_warm(bitnet.models.get("resnet18-binary", image_size=8, seed=0), 1))
    ops = lower(packed)
    assert _kinds(ops) == ["cl_conv"] + ["residual_block"] * 8 + ["global_pool", "dense"]
    shortcuts = [_kinds(op.parts["shortcut"]) for op in ops[1:9]]
    assert shortcuts == [[], [], ["cl_shortcut"], [], ["cl_shortcut"], [], ["cl_shortcut"], []]
    assert ops[1].name == "stages.0" and ops[1].parts["conv1"][0].name == "stages.0.conv1"


def test_unpacked_resnet_blocks_lower_from_their_forward_program():
    packed = pack(_warm(bitnet.models.get("resnet18-binary", image_size=8, full_precision_stages=(1,), seed=0), 3))
    ops = lower(packed)
    # float stem (conv, bn, relu); a float block: relu(bn2(conv2(relu(bn1(conv1(x))))) + x)
    assert _kinds(ops[:5]) == ["float_conv", "batchnorm", "unary", "add", "unary"]
    assert _kinds(ops[3].parts["a"]) == ["float_conv", "batchnorm", "unary", "float_conv", "batchnorm"]
    assert ops[3].parts["b"] == [] and ops[4].module is None and ops[4].params == {"op": "relu"}
    assert ops[3].parts["a"][0].name == "stages.0.conv1"
    downsampling = lower(pack(_warm(bitnet.models.get("resnet18", seed=0), 4)).stages[2])
    assert _kinds(downsampling[0].parts["b"]) == ["float_conv", "batchnorm"]  # the 1x1 stride-2 shortcut


def test_a_forward_program_that_cannot_be_read_is_refused():
    class Block(nn.Module):
        def __init__(self, program):
            super().__init__()
            self.conv, self.scale, self.program = nn.Conv2d(2, 2, 1), 2.0, program

        @property
        def forward_program(self):
            return self.program

        def forward(self, x):
            return self.conv(x)
    for program, what in ((("conv", ("gelu",)), "cannot read \\('gelu',\\)"), (("scale",), "names a float"),
                          (("conv", ("add", ("conv",))), "cannot read")):
        with pytest.raises(ValueError, match=what):
            lower(Block(program))
    assert _kinds(lower(Block(("conv", ("relu",))))) == ["float_conv", "unary"]


def test_a_layer_whose_class_has_its_own_forward_is_a_module_op():
    class Shifted(nn.ReLU):
        def forward(self, x):
            return super().forward(x) - 1.0
    rng = np.random.default_rng(2)
    model = nn.Sequential(nn.Conv2d(1, 4, 3, rng=rng), Shifted(), nn.Flatten(), nn.Dense(4 * 16, 2, rng=rng)).eval()
    ops = lower(pack(model))
    assert _kinds(ops) == ["float_conv", "module", "flatten", "dense"]
    assert ops[1].name == "1"


CASES = {
    "resnet18-binary": dict(image_size=8),
    "float resnet18": dict(image_size=8, full_precision_stages=(1, 2, 3, 4)),
    "binary shortcuts": dict(image_size=8, shortcut="binary"),
    "stage 1 float": dict(image_size=8, full_precision_stages=(1,)),
    "odd maps": dict(image_size=10),
}


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("micro_batch", [None, 2])
def test_resnet_plans_give_the_bits_of_the_layer_by_layer_run(case, micro_batch):
    seed = sorted(CASES).index(case)
    model = _warm(bitnet.models.get("resnet18-binary", seed=seed, **CASES[case]), seed)
    packed = pack(model, micro_batch=micro_batch)
    size = CASES[case]["image_size"]
    rng = np.random.default_rng(seed)
    xs = [rng.standard_normal((3, 3, size, size)).astype(np.float32) for _ in range(3)]
    step = slice_size(3, micro_batch) or 3  # (a row's float GEMM rounds by the rows beside it)
    with no_grad():
        want = [np.concatenate([layer_by_layer(packed, x[i:i + step]) for i in range(0, 3, step)]) for x in xs]
        got = [packed(xs[0]).data] + [packed(x).data for x in xs]  # records, then runs the plan (bound)
    for g, w in zip(got, [want[0]] + want):
        np.testing.assert_array_equal(g, w, err_msg=case)
    plans = list(packed._plans.values())
    assert plans and all(p.steps is not None and p.bound is not None for p in plans)
    assert not any(np.shares_memory(got[1], g) for g in got[2:])  # bound arrays are never handed out


def test_resnet_plan_steps_aside_for_hooks_and_new_children():
    packed = pack(_warm(bitnet.models.get("resnet18-binary", image_size=8, seed=5), 5))
    x = np.random.default_rng(5).standard_normal((2, 3, 8, 8)).astype(np.float32)
    with no_grad():
        base = packed(x).data
        packed(x)
        seen = []
        handle = packed.stages[3].conv2.register_forward_hook(lambda m, i, o: seen.append(o.shape))
        np.testing.assert_array_equal(packed(x).data, base)
        assert len(seen) == 1  # the hooked layer ran as a module
        handle.remove()
        packed.stages._modules["7"] = nn.Identity()  # a child deep inside: the old plan no longer applies
        changed = packed(x).data
    np.testing.assert_array_equal(changed, layer_by_layer(packed, x))
    assert not np.array_equal(changed, base)


@pytest.mark.parametrize("case", ["resnet18-binary", "binary shortcuts"])
def test_every_module_of_a_packed_resnet_runs_its_hooks(case):
    """A hook on any module below fires once per forward, with the bits of the plan: the binary
    shortcut's Sequential (packed conv, Identity) once ran its conv directly, and hooks on the
    Sequential and its Identity never fired."""
    seed = sorted(CASES).index(case)
    packed = pack(_warm(bitnet.models.get("resnet18-binary", seed=seed, **CASES[case]), seed))
    x = np.random.default_rng(seed).standard_normal((2, 3, 8, 8)).astype(np.float32)
    with no_grad():
        planned = packed(x).data
        fired = []
        names = [n for n, _ in packed.named_modules() if n]
        for n, m in packed.named_modules():
            if n:
                m.register_forward_hook(lambda m, i, o, n=n: fired.append(n))
        hooked = packed(x).data
    np.testing.assert_array_equal(hooked, planned)
    assert sorted(fired) == sorted(names)
    assert case == "resnet18-binary" or any(n.endswith("shortcut.1") for n in names)


def test_bad_input_gets_the_layers_own_error():
    packed = pack(_warm(bitnet.models.get("resnet18-binary", image_size=8, seed=8), 8))
    with no_grad(), pytest.raises(ValueError, match="expects 3 channels"):
        packed(np.zeros((1, 4, 8, 8), np.float32))
    assert not packed._plans


def test_a_plan_that_fails_where_the_layers_run_says_so_once_and_runs_layer_by_layer(monkeypatch):
    from bitnet.packed import cpu_steps
    packed = pack(_warm(bitnet.models.get("resnet18-binary", image_size=8, seed=9), 9))
    x = np.random.default_rng(9).standard_normal((2, 3, 8, 8)).astype(np.float32)
    want = layer_by_layer(packed, x)

    def broken(op, act, bind):
        raise RuntimeError("a step that cannot be built")
    monkeypatch.setitem(cpu_steps._BUILDERS, "residual_block", broken)
    with no_grad():
        with pytest.warns(RuntimeWarning, match="could not be planned .*a step that cannot be built"):
            first = packed(x).data
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # said once: the next call runs layer by layer at once
            second = packed(x).data
    np.testing.assert_array_equal(first, want)
    np.testing.assert_array_equal(second, want)
    assert [p.steps for p in packed._plans.values()] == [None]
