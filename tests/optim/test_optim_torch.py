"""Agreement with torch.optim on identical float64 data (skipped when PyTorch is absent)."""
import math
import warnings

import numpy as np
import pytest

from bitnet import optim
from bitnet.tensor import Parameter

torch = pytest.importorskip("torch")

SHAPES = [(4, 3), (5,), (2, 2, 3)]
RTOL, ATOL = 1e-12, 1e-14


def twin_params(seed=0):
    rng = np.random.default_rng(seed)
    arrays = [rng.standard_normal(s) for s in SHAPES]
    ours = [Parameter(a.copy()) for a in arrays]
    theirs = [torch.tensor(a.copy(), dtype=torch.float64, requires_grad=True) for a in arrays]
    return ours, theirs


def grads_at(step, ours, seed=1):
    """Gradients that depend on the current parameters (0.3 p + noise), as float64 arrays."""
    rng = np.random.default_rng(seed * 1000 + step)
    return [0.3 * p.data + rng.standard_normal(p.shape) for p in ours]


def set_grads(step, ours, theirs, skip=None):
    for i, (p, t, g) in enumerate(zip(ours, theirs, grads_at(step, ours))):
        if i == skip:
            p.grad, t.grad = None, None
        else:
            p.grad, t.grad = g.copy(), torch.tensor(g.copy())


def assert_same(ours, theirs):
    for p, t in zip(ours, theirs):
        assert p.data.dtype == np.float64
        np.testing.assert_allclose(p.data, t.detach().numpy(), rtol=RTOL, atol=ATOL)


def groups(params, split_lr):
    if split_lr is None:
        return params
    return [{"params": params[:1]}, {"params": params[1:], "lr": split_lr}]


OPTIMIZERS = [
    ("SGD", dict(lr=0.1)),
    ("SGD", dict(lr=0.05, momentum=0.9)),
    ("SGD", dict(lr=0.05, momentum=0.9, nesterov=True)),
    ("SGD", dict(lr=0.05, momentum=0.8, dampening=0.3)),
    ("SGD", dict(lr=0.05, momentum=0.9, weight_decay=0.01, nesterov=True)),
    ("SGD", dict(lr=0.05, momentum=0.5, dampening=0.2, weight_decay=0.1)),
    ("Adam", dict(lr=0.01)),
    ("Adam", dict(lr=0.02, betas=(0.8, 0.95), eps=1e-6)),
    ("Adam", dict(lr=0.01, weight_decay=0.1)),
    ("Adam", dict(lr=0.01, amsgrad=True, weight_decay=0.05)),
    ("Adam", dict(lr=0.01, weight_decay=0.1, decoupled_weight_decay=True)),
    ("AdamW", dict(lr=0.01)),
    ("AdamW", dict(lr=0.01, weight_decay=0.3, amsgrad=True)),
]


@pytest.mark.parametrize("split_lr", [None, 0.003])
@pytest.mark.parametrize("name, cfg", OPTIMIZERS)
def test_optimizer_matches_torch(name, cfg, split_lr):
    ours, theirs = twin_params()
    opt = getattr(optim, name)(groups(ours, split_lr), **cfg)
    topt = getattr(torch.optim, name)(groups(theirs, split_lr), foreach=False, **cfg)
    for step in range(12):
        set_grads(step, ours, theirs, skip=1 if step % 4 == 0 else None)
        opt.step()
        topt.step()
        assert_same(ours, theirs)


@pytest.mark.parametrize("name, cfg", [OPTIMIZERS[4], OPTIMIZERS[9], OPTIMIZERS[12]])
def test_state_round_trip_matches_torch(name, cfg):
    """Save after 4 steps, load into fresh optimizer + parameters, continue: still equal."""
    ours, theirs = twin_params()
    opt = getattr(optim, name)(ours, **cfg)
    topt = getattr(torch.optim, name)(theirs, foreach=False, **cfg)
    for step in range(4):
        set_grads(step, ours, theirs)
        opt.step()
        topt.step()
    ours2 = [Parameter(p.data.copy()) for p in ours]
    opt2 = getattr(optim, name)(ours2, lr=0.5)
    opt2.load_state_dict(opt.state_dict())
    tsd = topt.state_dict()
    for i, entry in opt.state_dict()["state"].items():  # same indexing and state names
        for k, v in entry.items():
            tv = tsd["state"][i][k]
            np.testing.assert_allclose(v, tv.numpy() if hasattr(tv, "numpy") else tv, rtol=RTOL)
    for step in range(4, 9):
        set_grads(step, ours2, theirs)
        opt2.step()
        topt.step()
        assert_same(ours2, theirs)


def torch_lrs(topt, tsched, n):
    out = [tsched.get_last_lr()]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for _ in range(n - 1):
            topt.step()
            tsched.step()
            out.append(tsched.get_last_lr())
    return np.array(out)


def our_lrs(sched, n):
    out = [sched.get_last_lr()]
    for _ in range(n - 1):
        sched.step()
        out.append(sched.get_last_lr())
    return np.array(out)


def sched_pair(make_ours, make_theirs):
    ours, theirs = twin_params()
    opt = optim.SGD(groups(ours, 0.01), lr=0.1)
    topt = torch.optim.SGD(groups(theirs, 0.01), lr=0.1)
    return make_ours(opt), topt, make_theirs(topt)


S = torch.optim.lr_scheduler


@pytest.mark.parametrize("make_ours, make_theirs", [
    (lambda o: optim.StepLR(o, 3, 0.5), lambda o: S.StepLR(o, 3, 0.5)),
    (lambda o: optim.MultiStepLR(o, [2, 5, 5, 9], 0.3),
     lambda o: S.MultiStepLR(o, [2, 5, 5, 9], 0.3)),
    (lambda o: optim.CosineAnnealingLR(o, 10, 1e-3), lambda o: S.CosineAnnealingLR(o, 10, 1e-3)),
    (lambda o: optim.LinearWarmup(o, 5, start_factor=0.25),
     lambda o: S.LinearLR(o, 0.25, 1.0, total_iters=5)),
    (lambda o: optim.LinearWarmup(o, 4, after=optim.CosineAnnealingLR(o, 10, 1e-4),
                                  start_factor=0.1),
     lambda o: S.SequentialLR(o, [S.LinearLR(o, 0.1, 1.0, total_iters=4),
                                  S.CosineAnnealingLR(o, 10, 1e-4)], milestones=[4])),
    (lambda o: optim.LinearWarmup(o, 3, after=optim.StepLR(o, 4, 0.5), start_factor=0.5),
     lambda o: S.SequentialLR(o, [S.LinearLR(o, 0.5, 1.0, total_iters=3),
                                  S.StepLR(o, 4, 0.5)], milestones=[3])),
])
def test_scheduler_matches_torch(make_ours, make_theirs):
    sched, topt, tsched = sched_pair(make_ours, make_theirs)
    np.testing.assert_allclose(our_lrs(sched, 15), torch_lrs(topt, tsched, 15),
                               rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("norm_type", [1.0, 2.0, 3.5, math.inf])
@pytest.mark.parametrize("max_norm", [0.5, 1e3])
def test_clip_grad_norm_matches_torch(norm_type, max_norm):
    ours, theirs = twin_params()
    set_grads(0, ours, theirs, skip=1)
    total = optim.clip_grad_norm_(ours, max_norm, norm_type)
    ttotal = torch.nn.utils.clip_grad_norm_(theirs, max_norm, norm_type, foreach=False)
    assert math.isclose(total, float(ttotal), rel_tol=1e-12)
    for p, t in zip(ours, theirs):
        if p.grad is None:
            assert t.grad is None
        else:
            np.testing.assert_allclose(p.grad, t.grad.numpy(), rtol=1e-12, atol=1e-15)


def test_clip_grad_value_matches_torch():
    ours, theirs = twin_params()
    set_grads(0, ours, theirs)
    optim.clip_grad_value_(ours, 0.7)
    torch.nn.utils.clip_grad_value_(theirs, 0.7, foreach=False)
    for p, t in zip(ours, theirs):
        np.testing.assert_array_equal(p.grad, t.grad.numpy())
