"""Learning-rate schedulers: lr sequences against their closed forms, groups, state_dict."""
import math

import numpy as np
import pytest

from bitnet.optim import (SGD, Adam, CosineAnnealingLR, LinearWarmup, MultiStepLR, StepLR,
                          WarmupCosine)
from bitnet.tensor import Parameter


def make_opt(lrs=(0.1, 0.02)):
    groups = [{"params": [Parameter(np.ones(2))], "lr": lr} for lr in lrs]
    return SGD(groups, lr=1.0, momentum=0.9)


def sequence(sched, n):
    """lr of every group for t = 0 .. n-1 (t = 0 is right after construction)."""
    out = [sched.get_last_lr()]
    assert out[0] == [g["lr"] for g in sched.optimizer.param_groups]
    for _ in range(n - 1):
        sched.optimizer.step()
        sched.step()
        out.append(sched.get_last_lr())
        assert out[-1] == [g["lr"] for g in sched.optimizer.param_groups]
    return np.array(out)


BASES = np.array([0.1, 0.02])


def test_step_lr():
    got = sequence(StepLR(make_opt(), step_size=3, gamma=0.5), 10)
    np.testing.assert_allclose(got[:, 0], [0.1] * 3 + [0.05] * 3 + [0.025] * 3 + [0.0125],
                               rtol=1e-15)
    t = np.arange(10)[:, None]
    np.testing.assert_allclose(got, BASES * 0.5 ** (t // 3), rtol=1e-15)


def test_multistep_lr_unsorted_and_repeated_milestones():
    got = sequence(MultiStepLR(make_opt(), milestones=[5, 2, 5], gamma=0.1), 8)
    factors = np.array([1, 1, 0.1, 0.1, 0.1, 0.001, 0.001, 0.001])
    np.testing.assert_allclose(got, factors[:, None] * BASES, rtol=1e-14)


def test_cosine_annealing_closed_form():
    got = sequence(CosineAnnealingLR(make_opt(), T_max=10, eta_min=0.001), 21)
    t = np.arange(21)[:, None]
    np.testing.assert_allclose(got, 0.001 + (BASES - 0.001) * (1 + np.cos(np.pi * t / 10)) / 2,
                               rtol=1e-14)
    np.testing.assert_allclose(got[10], [0.001, 0.001], rtol=1e-14)
    np.testing.assert_allclose(got[5], (BASES + 0.001) / 2, rtol=1e-14)


def test_linear_warmup_alone():
    got = sequence(LinearWarmup(make_opt(), warmup_steps=4, start_factor=0.2), 7)
    factors = np.array([0.2, 0.4, 0.6, 0.8, 1.0, 1.0, 1.0])
    np.testing.assert_allclose(got, factors[:, None] * BASES, rtol=1e-14)


def test_linear_warmup_then_cosine():
    opt = make_opt()
    cosine = CosineAnnealingLR(opt, T_max=6)
    sched = LinearWarmup(opt, warmup_steps=3, after=cosine, start_factor=0.0)
    got = sequence(sched, 12)
    np.testing.assert_allclose(got[:3], np.array([0, 1 / 3, 2 / 3])[:, None] * BASES,
                               rtol=1e-14)
    s = np.arange(9)[:, None]
    np.testing.assert_allclose(got[3:], BASES * (1 + np.cos(np.pi * s / 6)) / 2,
                               rtol=1e-14, atol=1e-17)


def test_linear_warmup_then_step():
    opt = make_opt()
    sched = LinearWarmup(opt, 2, after=StepLR(opt, step_size=2, gamma=0.1), start_factor=0.5)
    got = sequence(sched, 7)
    factors = np.array([0.5, 0.75, 1, 1, 0.1, 0.1, 0.01])
    np.testing.assert_allclose(got, factors[:, None] * BASES, rtol=1e-14)


def test_warmup_cosine():
    got = sequence(WarmupCosine(make_opt(), warmup_steps=4, total_steps=10, eta_min=1e-4,
                                start_factor=0.0), 14)
    np.testing.assert_allclose(got[:4], np.array([0, 0.25, 0.5, 0.75])[:, None] * BASES,
                               rtol=1e-14)
    s = np.arange(7)[:, None]
    np.testing.assert_allclose(got[4:11], 1e-4 + (BASES - 1e-4) * (1 + np.cos(np.pi * s / 6)) / 2,
                               rtol=1e-14)
    np.testing.assert_allclose(got[10:], np.full((4, 2), 1e-4), rtol=1e-14)  # held after end


def test_warmup_cosine_without_warmup_equals_cosine():
    a = sequence(WarmupCosine(make_opt(), warmup_steps=0, total_steps=8), 9)
    b = sequence(CosineAnnealingLR(make_opt(), T_max=8), 9)
    np.testing.assert_allclose(a, b, rtol=1e-15, atol=1e-18)


def test_initial_lr_recorded_and_kept():
    opt = make_opt()
    StepLR(opt, step_size=1, gamma=0.5).step()
    assert [g["initial_lr"] for g in opt.param_groups] == [0.1, 0.02]
    assert [g["lr"] for g in opt.param_groups] == [0.05, 0.01]
    sched = StepLR(opt, step_size=1, gamma=0.1)  # a second scheduler starts from initial_lr
    assert sched.base_lrs == [0.1, 0.02] and sched.get_last_lr() == [0.1, 0.02]


def test_lr_is_used_by_the_optimizer():
    p = Parameter(np.zeros(1))
    opt = SGD([p], lr=1.0)
    sched = StepLR(opt, step_size=1, gamma=0.5)
    for _ in range(3):
        p.grad = np.ones(1)
        opt.step()
        sched.step()
    np.testing.assert_allclose(p.data, [-(1 + 0.5 + 0.25)])


@pytest.mark.parametrize("make", [
    lambda o: StepLR(o, 2, 0.3),
    lambda o: MultiStepLR(o, [1, 4], 0.5),
    lambda o: CosineAnnealingLR(o, 7, 1e-3),
    lambda o: LinearWarmup(o, 3, after=CosineAnnealingLR(o, 5), start_factor=0.1),
    lambda o: LinearWarmup(o, 3),
    lambda o: WarmupCosine(o, 2, 9, 1e-3),
])
def test_state_dict_round_trip(make):
    opt = make_opt()
    sched = make(opt)
    for _ in range(4):
        sched.step()
    sd = sched.state_dict()
    for v in sd.values():
        assert isinstance(v, (str, int, float, list, dict))
    rest_a = sequence(sched, 6)

    opt2 = make_opt((0.5, 0.5))  # different lrs: they come from the state dict
    sched2 = make(opt2)
    sched2.load_state_dict(sd)
    assert sched2.last_epoch == 4
    assert [g["lr"] for g in opt2.param_groups] == sd["last_lr"]
    np.testing.assert_array_equal(sequence(sched2, 6), rest_a)


def test_load_state_dict_mismatch():
    sd = StepLR(make_opt(), 2).state_dict()
    with pytest.raises(ValueError, match="is of a StepLR, expected a CosineAnnealingLR"):
        CosineAnnealingLR(make_opt(), 5).load_state_dict(sd)
    with pytest.raises(ValueError, match=r"base_lrs has 2 entries, the optimizer has 1"):
        StepLR(make_opt((0.1,)), 2).load_state_dict(sd)
    with pytest.raises(ValueError, match=r"lacks \['gamma'\]"):
        StepLR(make_opt(), 2).load_state_dict({k: v for k, v in sd.items() if k != "gamma"})
    opt = make_opt()
    warm = LinearWarmup(opt, 2, after=StepLR(opt, 2)).state_dict()
    with pytest.raises(ValueError, match="has 'after' scheduler, this LinearWarmup has none"):
        LinearWarmup(make_opt(), 2).load_state_dict(warm)


@pytest.mark.parametrize("make, exc, msg", [
    (lambda o: StepLR(o, 0), ValueError, "step_size must be an integer >= 1, got 0"),
    (lambda o: StepLR(o, 2.5), TypeError, "step_size must be an integer, got 2.5"),
    (lambda o: StepLR(o, 2, gamma=-0.1), ValueError, "gamma must be >= 0.0, got -0.1"),
    (lambda o: MultiStepLR(o, [2, -1]), ValueError, r"milestones\[i\] must be an integer >= 0"),
    (lambda o: CosineAnnealingLR(o, 0), ValueError, "T_max must be an integer >= 1, got 0"),
    (lambda o: CosineAnnealingLR(o, 5, -1.0), ValueError, "eta_min must be >= 0.0"),
    (lambda o: LinearWarmup(o, -1), ValueError, "warmup_steps must be an integer >= 0"),
    (lambda o: LinearWarmup(o, 3, start_factor=1.5), ValueError,
     r"start_factor must be in \[0.0, 1.0\], got 1.5"),
    (lambda o: LinearWarmup(o, 3, after=StepLR(make_opt(), 2)), ValueError, "same optimizer"),
    (lambda o: LinearWarmup(o, 3, after="cosine"), TypeError, "after must be a scheduler"),
    (lambda o: WarmupCosine(o, 5, 5), ValueError,
     "total_steps must exceed warmup_steps, got total_steps=5, warmup_steps=5"),
    (lambda o: StepLR("opt", 2), TypeError, "expected a bitnet Optimizer, got str"),
])
def test_bad_arguments(make, exc, msg):
    with pytest.raises(exc, match=msg):
        make(make_opt())


def test_works_with_adam_and_repr():
    opt = Adam([Parameter(np.ones(2))], lr=0.01)
    sched = CosineAnnealingLR(opt, 4)
    sched.step()
    assert math.isclose(opt.param_groups[0]["lr"], 0.01 * (1 + math.cos(math.pi / 4)) / 2)
    assert repr(sched) == "CosineAnnealingLR(T_max=4, eta_min=0.0, last_epoch=1)"
