"""Routing binary kernels and other parameters to optimizers; MultiOptimizer; bop_and_adam."""
import numpy as np
import pytest

import bitnet.functional as F
from bitnet import models, nn
from bitnet.optim import (SGD, Adam, Bop, MultiOptimizer, WarmupCosine, binary_kernels,
                          bop_and_adam, param_groups, split_parameters)
from bitnet.tensor import Parameter, Tensor


@pytest.fixture
def lenet():
    return models.get("lenet-binary", seed=0)


def names_of(model, params):
    by_id = {id(p): n for n, p in model.named_parameters()}
    return [by_id[id(p)] for p in params]


def binary_layers(model):
    return [m for m in model.modules() if isinstance(m, (nn.QConv2d, nn.QDense))]


def test_binary_kernels_of_lenet_binary_are_the_qconv_and_qdense_weights(lenet):
    layers = binary_layers(lenet)
    assert [type(m).__name__ for m in layers] == ["QConv2d", "QDense"]
    kernels = binary_kernels(lenet)
    assert [id(p) for p in kernels] == [id(m.weight) for m in layers]
    assert names_of(lenet, kernels) == ["5.weight", "10.weight"]


def test_split_parameters_covers_every_parameter_once(lenet):
    binary, other = split_parameters(lenet)
    assert names_of(lenet, binary) == ["5.weight", "10.weight"]
    all_names = [n for n, _ in lenet.named_parameters()]
    assert names_of(lenet, other) == [n for n in all_names if n not in ("5.weight", "10.weight")]
    assert len({id(p) for p in binary + other}) == len(all_names)
    # the float first conv, the biases and the final dense stay out of the binary list
    assert "0.weight" in names_of(lenet, other) and "13.weight" in names_of(lenet, other)


def test_layers_without_binary_kernel_are_not_binary():
    model = nn.Sequential(
        nn.QDense(4, 4, weight_bit=1),                   # binary
        nn.QDense(4, 4, weight_bit=32),                  # no kernel quantizer
        nn.QDense(4, 4, weight_bit=2),                   # 2-bit kernel
        nn.QDense(4, 4, act_bit=1, weight_bit=1, scaling="channel"),  # binary, scaled
        nn.Dense(4, 4),
    )
    assert [id(p) for p in binary_kernels(model)] == [id(model[0].weight), id(model[3].weight)]
    assert binary_kernels(nn.Sequential(nn.Dense(3, 2))) == []


def test_param_groups_no_weight_decay_on_binary_kernels(lenet):
    groups = param_groups(lenet, weight_decay=5e-4)
    assert len(groups) == 2
    assert names_of(lenet, groups[0]["params"]) == ["5.weight", "10.weight"]
    assert groups[0]["weight_decay"] == 0.0 and groups[1]["weight_decay"] == 5e-4
    opt = Adam(groups, lr=1e-3)
    assert [g["weight_decay"] for g in opt.param_groups] == [0.0, 5e-4]
    # empty groups are left out
    plain = nn.Sequential(nn.Dense(3, 2))
    assert [g["weight_decay"] for g in param_groups(plain, 0.1)] == [0.1]
    with pytest.raises(ValueError, match="weight_decay must be >= 0"):
        param_groups(lenet, -1.0)


def test_multi_optimizer_rejects_a_parameter_owned_twice():
    a, b = Parameter(np.ones(3)), Parameter(np.ones(2))
    with pytest.raises(ValueError, match="(?s)one optimizer only.*shape \\(3,\\).*optimizer 0 "
                                         "\\(Bop\\) and optimizer 1 \\(Adam\\)"):
        MultiOptimizer([Bop([a]), Adam([a, b])])
    opt = SGD([a], lr=0.1)
    with pytest.raises(ValueError, match="one optimizer only"):
        MultiOptimizer([opt, opt])
    with pytest.raises(TypeError, match="item 1 is a list"):
        MultiOptimizer([Bop([a]), [b]])
    with pytest.raises(ValueError, match="no optimizers"):
        MultiOptimizer([])


def test_multi_optimizer_steps_and_zeroes_all():
    a, b = Parameter(np.array([0.5, -0.5])), Parameter(np.array([1.0]))
    multi = MultiOptimizer([Bop([a], threshold=0.0, gamma=1.0), SGD([b], lr=0.1)])
    a.grad, b.grad = np.array([1.0, 1.0]), np.array([2.0])
    assert multi.step(lambda: 7.0) == 7.0
    np.testing.assert_array_equal(a.data, [-1.0, -1.0])
    np.testing.assert_allclose(b.data, [0.8])
    multi.zero_grad()
    assert a.grad is None and b.grad is None
    assert set(multi.state) == {a, b}
    with pytest.raises(TypeError, match="inner"):
        multi.add_param_group({"params": [Parameter(np.ones(1))]})


def make_pair(seed):
    rng = np.random.default_rng(seed)
    a, b = Parameter(rng.uniform(-1, 1, (3, 4))), Parameter(rng.normal(size=(5,)))
    return a, b, MultiOptimizer([Bop([a], threshold=1e-3, gamma=0.3), Adam([b], lr=0.05)])


def test_multi_optimizer_state_dict_round_trip():
    rng = np.random.default_rng(3)
    grads = [(rng.normal(size=(3, 4)) * 0.01, rng.normal(size=5)) for _ in range(10)]
    a, b, multi = make_pair(0)

    def run(a, b, opt, gs):
        for ga, gb in gs:
            a.grad, b.grad = ga, gb
            opt.step()

    run(a, b, multi, grads[:5])
    sd = multi.state_dict()
    assert set(sd) == {"optimizers"} and len(sd["optimizers"]) == 2
    a2, b2, multi2 = make_pair(1)
    a2.data[...], b2.data[...] = a.data, b.data
    multi2.load_state_dict(sd)
    run(a, b, multi, grads[5:])
    run(a2, b2, multi2, grads[5:])
    np.testing.assert_array_equal(a2.data, a.data)
    np.testing.assert_array_equal(b2.data, b.data)


def test_multi_optimizer_load_state_dict_validates():
    a, b, multi = make_pair(0)
    sd = multi.state_dict()
    with pytest.raises(ValueError, match="holds 1 optimizer\\(s\\), this MultiOptimizer has 2"):
        multi.load_state_dict({"optimizers": sd["optimizers"][:1]})
    with pytest.raises(ValueError, match="key 'optimizers'"):
        multi.load_state_dict(sd["optimizers"][0])
    # swapped order: Adam's state into Bop fails, and nothing is changed
    b.grad = np.ones(5)
    multi.step()
    before = multi.state_dict()
    with pytest.raises(ValueError, match="optimizer 0 \\(Bop\\)"):
        multi.load_state_dict({"optimizers": sd["optimizers"][::-1]})
    after = multi.state_dict()
    assert after["optimizers"][1]["state"][0]["step"] == before["optimizers"][1]["state"][0]["step"]


def test_scheduler_over_multi_optimizer_sets_lr_of_all_groups():
    a, b, c = (Parameter(np.ones(2)) for _ in range(3))
    multi = MultiOptimizer([Adam([{"params": [a]}, {"params": [b], "lr": 0.2}], lr=0.1),
                            SGD([c], lr=1.0)])
    sched = WarmupCosine(multi, warmup_steps=2, total_steps=10, start_factor=0.5)
    assert [g["lr"] for g in multi.param_groups] == [0.05, 0.1, 0.5]
    inner = [g["lr"] for opt in multi.optimizers for g in opt.param_groups]
    assert inner == [0.05, 0.1, 0.5]  # the inner optimizers' groups were changed
    for _ in range(6):
        sched.step()
    want = sched.lr_at(6)
    assert [g["lr"] for opt in multi.optimizers for g in opt.param_groups] == want
    assert want[0] < 0.1 and want[1] < 0.2 and want[2] < 1.0


def test_scheduler_over_bop_and_adam_schedules_adam_and_skips_bop(lenet):
    opt = bop_and_adam(lenet, lr=1e-3, gamma=1e-3)
    bop, adam = opt.optimizers
    assert opt.param_groups == adam.param_groups  # Bop has no lr, so no group to schedule
    assert len(opt.all_param_groups) == 2
    sched = WarmupCosine(opt, warmup_steps=1, total_steps=4)
    assert adam.param_groups[0]["lr"] == pytest.approx(1e-4)
    sched.step()
    assert adam.param_groups[0]["lr"] == pytest.approx(1e-3)
    assert bop.param_groups[0]["gamma"] == 1e-3 and "lr" not in bop.param_groups[0]


def test_bop_and_adam_routes_and_checks(lenet):
    opt = bop_and_adam(lenet, lr=2e-3, threshold=1e-6, gamma=1e-3, weight_decay=1e-4)
    bop, adam = opt.optimizers
    assert isinstance(bop, Bop) and isinstance(adam, Adam)
    assert names_of(lenet, bop._ordered_params()) == ["5.weight", "10.weight"]
    assert len(adam._ordered_params()) == len(list(lenet.parameters())) - 2
    assert bop.param_groups[0]["threshold"] == 1e-6 and bop.param_groups[0]["gamma"] == 1e-3
    assert adam.param_groups[0]["lr"] == 2e-3 and adam.param_groups[0]["weight_decay"] == 1e-4
    with pytest.raises(ValueError, match="no binary kernels"):
        bop_and_adam(models.get("lenet", seed=0))
    only_binary = nn.Sequential(nn.QDense(4, 3, bias=False))
    assert [type(o) for o in bop_and_adam(only_binary).optimizers] == [Bop]


def test_training_lenet_binary_with_bop_and_adam(lenet):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(16, 1, 28, 28)).astype(np.float32)
    y = rng.integers(0, 10, size=16)
    opt = bop_and_adam(lenet, lr=1e-2, threshold=1e-7, gamma=1e-2)
    binary, other = split_parameters(lenet)
    start_binary = [np.where(p.data >= 0, 1.0, -1.0) for p in binary]
    start_other = [p.data.copy() for p in other]
    losses = []
    for _ in range(4):
        opt.zero_grad()
        loss = F.cross_entropy(lenet(Tensor(x)), y)
        loss.backward()
        opt.step()
        losses.append(float(loss.data))
        for p in binary:
            assert set(np.unique(p.data).tolist()) <= {-1.0, 1.0}
    assert all(np.isfinite(losses))
    flipped = sum(int((p.data != s).sum()) for p, s in zip(binary, start_binary))
    assert flipped > 0
    changed = [not np.array_equal(p.data, s) for p, s in zip(other, start_other)]
    assert all(changed), [n for n, c in zip(names_of(lenet, other), changed) if not c]
    assert losses[-1] < losses[0]
