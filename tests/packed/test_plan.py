"""bitnet.packed.plan: a packed Sequential's forward recorded once per input shape must give the
bits of the layer-by-layer run (its first call), and must step aside wherever it would not."""
import numpy as np
import pytest

import bitnet
from bitnet import nn
from bitnet.packed import pack
from bitnet.packed.plan import MAX_PLANS
from bitnet.tensor import Tensor, no_grad
from packed_helpers import layer_by_layer, warm


_warm = warm


def _models(rng):
    q = dict(act_bit=1, weight_bit=1)
    yield "lenet-binary", _warm(bitnet.models.get("lenet-binary", seed=1), rng), (1, 28, 28)
    yield "no chains", _warm(nn.Sequential(  # packed conv without pooling, relu, k-bit layer, float tail
        nn.QConv2d(3, 16, 3, padding=1, rng=rng, **q), nn.BatchNorm2d(16), nn.ReLU(),
        nn.QConv2d(16, 8, 3, stride=2, rng=rng, act_bit=2, weight_bit=2), nn.Flatten(),
        nn.QDense(8 * 4 * 4, 20, rng=rng, **q), nn.BatchNorm1d(20), nn.Tanh(), nn.Dense(20, 4, rng=rng)), rng), (3, 10, 10)
    yield "nested", _warm(nn.Sequential(
        nn.Sequential(nn.Conv2d(2, 8, 3, rng=rng), nn.BatchNorm2d(8), nn.HardTanh(), nn.MaxPool2d(2),
                      nn.QActivation(1), nn.QConv2d(8, 8, 3, padding=1, rng=rng, **q), nn.BatchNorm2d(8)),
        nn.Flatten(), nn.Dense(8 * 16, 3, bias=False, rng=rng)), rng), (2, 10, 10)


@pytest.mark.parametrize("batch", [1, 3, 40])
def test_plans_give_the_bits_of_the_layer_by_layer_run(batch):
    rng = np.random.default_rng(batch)
    for name, model, shape in _models(rng):
        packed = pack(model)
        x = Tensor(rng.standard_normal((batch,) + shape).astype(np.float32))
        want = layer_by_layer(packed, x)
        with no_grad():
            first = packed(x).data     # recording: the executor's unbound steps
            second = packed(x).data    # the plan's bound steps
            third = packed(x.data).data
        for got in (first, second, third):
            np.testing.assert_array_equal(got, want, err_msg=name)
        seqs = [m for m in packed.modules() if hasattr(m, "_plans")]
        assert any(p.steps is not None for s in seqs for p in s._plans.values()), name


def test_a_packed_model_builds_no_graph():
    packed = pack(_warm(bitnet.models.get("lenet-binary", seed=0), np.random.default_rng(0)))
    assert not any(p.requires_grad for p in packed.parameters())
    x = Tensor(np.random.default_rng(1).standard_normal((2, 1, 28, 28)).astype(np.float32))
    out1, out2 = packed(x), packed(x)  # grad mode on (the default)
    assert not out1.requires_grad and not out2.requires_grad
    np.testing.assert_array_equal(out1.data, out2.data)


def test_hooks_and_new_children_make_it_run_layer_by_layer():
    rng = np.random.default_rng(2)
    packed = pack(_warm(bitnet.models.get("lenet-binary", seed=2), rng))
    x = Tensor(rng.standard_normal((2, 1, 28, 28)).astype(np.float32))
    with no_grad():
        base = packed(x).data
        packed(x)
        seen = []
        handle = packed[12].register_forward_hook(lambda m, i, o: seen.append(o.shape))  # the Tanh
        np.testing.assert_array_equal(packed(x).data, base)
        assert seen == [(2, 1000)]
        handle.remove()
        packed._modules["12"] = nn.Identity()  # a new child: the old plan no longer applies
        changed = packed(x).data
    assert not np.array_equal(changed, base)
    with no_grad():
        np.testing.assert_array_equal(changed, packed(x).data)


def test_load_state_dict_makes_plans_again():
    rng = np.random.default_rng(3)
    q = dict(act_bit=1, weight_bit=1)

    def net():
        return _warm(nn.Sequential(nn.QDense(30, 16, rng=rng, **q), nn.BatchNorm1d(16), nn.Tanh(),
                                   nn.Dense(16, 5, rng=rng)), rng)
    packed, other = pack(net()), pack(net())
    x = Tensor(rng.standard_normal((4, 30)).astype(np.float32))
    with no_grad():
        packed(x), packed(x)
        packed.load_state_dict(other.state_dict())
        np.testing.assert_array_equal(packed(x).data, other(x).data)
        np.testing.assert_array_equal(packed(x).data, other(x).data)


def test_plans_per_shape_are_bounded():
    packed = pack(_warm(bitnet.models.get("lenet-binary", seed=4), np.random.default_rng(4)), micro_batch=None)
    with no_grad():
        for n in range(1, MAX_PLANS + 4):
            packed(Tensor(np.zeros((n, 1, 28, 28), np.float32)))
    assert 0 < len(packed._plans) <= MAX_PLANS


def test_a_plan_is_recorded_once_no_hook_is_left():
    rng = np.random.default_rng(5)
    packed = pack(_warm(bitnet.models.get("lenet-binary", seed=5), rng))
    x = Tensor(rng.standard_normal((2, 1, 28, 28)).astype(np.float32))
    seen = []
    handle = packed[0].register_forward_hook(lambda m, i, o: seen.append(1))
    with no_grad():
        base = packed(x).data
        assert seen == [1] and not packed._plans  # nothing recorded while a hook is there
        handle.remove()
        np.testing.assert_array_equal(packed(x).data, base)
        np.testing.assert_array_equal(packed(x).data, base)
    assert [p.steps is not None for p in packed._plans.values()] == [True]


def test_feature_maps_are_planned_and_what_a_plan_cannot_pass_runs_layer_by_layer():
    from bitnet.packed.featuremap import FeatureMap

    class ChannelsLast(nn.Module):  # hands over a FeatureMap: the plan passes it on channels-last
        def forward(self, x):
            return FeatureMap.from_tensor(x)

    class Pair(nn.Module):  # returns a tuple: no plan
        def forward(self, x):
            return x, x

    class First(nn.Module):
        def forward(self, x):
            return x[0]
    rng = np.random.default_rng(6)
    tail = [nn.QConv2d(4, 8, 3, rng=rng, act_bit=1, weight_bit=1), nn.Flatten(), nn.Dense(8 * 9, 2, rng=rng)]
    x = Tensor(rng.standard_normal((3, 4, 5, 5)).astype(np.float32))
    for head, planned in (([ChannelsLast()], True), ([Pair(), First()], False)):
        packed = pack(nn.Sequential(*head, *tail).eval())
        with no_grad():
            want = layer_by_layer(packed, x)
            outs = [packed(x).data for _ in range(3)]
        assert [p.steps is not None for p in packed._plans.values()] == [planned]
        for out in outs:
            np.testing.assert_array_equal(out, want)


def test_bound_plans_reuse_their_arrays_but_never_hand_them_out():
    """The second call of a shape runs the plan's bound steps (arrays made once, reused): each result
    is the caller's own array, with the bits of the layer-by-layer run for its input."""
    rng = np.random.default_rng(7)
    packed = pack(_warm(bitnet.models.get("lenet-binary", seed=1), rng))
    xs = [rng.standard_normal((2, 1, 28, 28)).astype(np.float32) for _ in range(3)]
    with no_grad():
        want = [layer_by_layer(packed, x) for x in xs]  # (chains included)
        packed(xs[0])  # records the plan
        got = [packed(x).data for x in xs]
    plan = next(iter(packed._plans.values()))
    assert plan.bound is not None and any(getattr(s, "nbytes", 0) > 0 for s in plan.bound)
    for g, w in zip(got, want):
        np.testing.assert_array_equal(g, w)  # the first result was not overwritten by the later calls
    assert len({id(g) for g in got}) == 3 and not any(np.shares_memory(got[0], g) for g in got[1:])


@pytest.mark.parametrize("name, kwargs, shape", [("lenet-binary", {}, (1, 28, 28)),
                                                  ("resnet18-binary", {"image_size": 8}, (3, 8, 8))])
def test_threads_sharing_a_packed_model_get_their_own_results(name, kwargs, shape):
    import threading
    rng = np.random.default_rng(8)
    packed = pack(_warm(bitnet.models.get(name, seed=1, **kwargs), rng))
    xs = [rng.standard_normal((1,) + shape).astype(np.float32) for _ in range(4)]
    want = [layer_by_layer(packed, x) for x in xs]
    errors = []

    def worker(i):
        with no_grad():
            for _ in range(200):
                if not np.array_equal(packed(xs[i]).data, want[i]):
                    errors.append(i)
                    return
    threads = [threading.Thread(target=worker, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors


def test_plans_too_large_to_bind_allocate_per_call(monkeypatch):
    from bitnet.packed import plan as plan_module
    monkeypatch.setattr(plan_module, "BOUND_MAX_BYTES", 1000)
    rng = np.random.default_rng(9)
    packed = pack(_warm(bitnet.models.get("lenet-binary", seed=1), rng))
    x = rng.standard_normal((3, 1, 28, 28)).astype(np.float32)
    with no_grad():
        first, second = packed(x).data, packed(x).data
    assert next(iter(packed._plans.values())).bound is None
    np.testing.assert_array_equal(first, second)


# -- a packed model's arrays replaced by assignment ---------------------------------------------------

def _fresh(packed, x):
    """``packed(x)`` from a copy of it, whose chains, plans and prepared calls are all made anew."""
    import copy
    return layer_by_layer(copy.deepcopy(packed), x)


def _new(a, rng):
    return (a * 1.5 + rng.normal(0, 0.3, a.shape)).astype(a.dtype)


CHANGES = {  # what a user may assign in a packed binary LeNet, and the cache that once kept the old array
    "0.weight.data": lambda p, rng: setattr(p[0].weight, "data", _new(p[0].weight.data, rng)),  # a sign chain
    "1.weight": lambda p, rng: setattr(p[1], "weight", nn.Parameter(_new(p[1].weight.data, rng))),  # a chain
    "1.running_var": lambda p, rng: setattr(p[1], "running_var", p[1].running_var * 3.0),  # a chain (a buffer)
    "5.scale": lambda p, rng: setattr(p[5], "scale", _new(p[5].scale, rng)),  # the packed conv's prepared calls
    "13.weight.data": lambda p, rng: setattr(p[13].weight, "data", _new(p[13].weight.data, rng)),  # the plan
}


@pytest.mark.parametrize("mode", ["planned", "layer by layer", "a copy"])
@pytest.mark.parametrize("change", sorted(CHANGES))
def test_an_array_replaced_by_assignment_is_read_at_the_next_call(change, mode):
    """``p.data = new``, a new Parameter or a new buffer: the next call reads it, as a fresh copy of
    the packed model does (plans, sign chains and a packed layer's prepared calls had kept the old
    array). Writing into an array in place is not watched (docs: load_state_dict or pack again)."""
    import copy
    rng = np.random.default_rng(11)
    packed = pack(_warm(bitnet.models.get("lenet-binary", seed=11), rng))
    x = rng.standard_normal((3, 1, 28, 28)).astype(np.float32)
    if mode != "planned":  # chains still run where no hook is, the Sequential layer by layer
        packed[12].register_forward_hook(lambda m, i, o: None)
    with no_grad():
        if mode == "a copy":  # a copy of a model that ran: its modules tell the copy's containers
            packed(x)
            packed = copy.deepcopy(packed)
        before = packed(x).data
        packed(x)
        CHANGES[change](packed, rng)
        after = packed(x).data
        again = packed(x).data
    want = _fresh(packed, x)
    assert not np.array_equal(want, before), change  # the change changes the output
    np.testing.assert_array_equal(after, want, err_msg=change)
    np.testing.assert_array_equal(again, want, err_msg=change)


@pytest.mark.parametrize("change", ["fc.weight.data", "stages.2.conv1.shift", "stages.2.shortcut.weight_t"])
def test_a_packed_resnet_reads_a_replaced_array(change):
    rng = np.random.default_rng(12)
    packed = pack(_warm(bitnet.models.get("resnet18-binary", image_size=8, seed=12), rng))
    x = rng.standard_normal((2, 3, 8, 8)).astype(np.float32)
    *path, name = change.replace(".data", "").split(".")
    module = packed.get_submodule(".".join(path)) if hasattr(packed, "get_submodule") else \
        dict(packed.named_modules())[".".join(path)]
    with no_grad():
        before = packed(x).data
        packed(x)
        if change.endswith(".data"):
            module.weight.data = _new(module.weight.data, rng)
        else:
            setattr(module, name, _new(getattr(module, name), rng))
        after = packed(x).data
    want = _fresh(packed, x)
    assert not np.array_equal(want, before)
    np.testing.assert_array_equal(after, want)
