"""Optimizers, schedules and gradient clipping on parameters on "cuda": the same steps as on the CPU.

Every test builds parameters on the CPU and copies of them moved to "cuda" (``model.to("cuda")``: the
NumPy emulation of CuPy, or the real GPU with ``BITNET_TEST_CUDA=gpu``), feeds both the same gradients
and compares after every step.

Tolerances: the optimizer updates on "cuda" are the CPU's elementwise operations, in the same order and
dtype, each one a separate pass rounded to the dtype (no fused multiply-add: see
``bitnet.kernels.optim``), and +, -, *, /, sqrt are correctly rounded on both sides, so parameters and
state must agree BIT FOR BIT (``assert_array_equal``). Only ``clip_grad_norm_`` sums in another order
on a GPU (its norm is a float64 reduction): there the norm gets rtol 1e-12 (a float64 sum of n <= 10^3
terms errs by at most n * 2^-53 ~ 1e-13 relative) and the clipped gradients 1 float32 ulp (the clip
factor, rounded to float32, may land on the neighbouring float).
"""
from __future__ import annotations

import contextlib
import os

import numpy as np
import pytest

from bitnet import nn
from bitnet.gpu.arrays import emulate, is_device_array, to_device, to_host
from bitnet.nn.quantized import clip_unit
from bitnet.optim import (SGD, Adam, AdamW, Bop, CosineAnnealingLR, LinearWarmup, MultiOptimizer, MultiStepLR,
                          StepLR, WarmupCosine, bop_and_adam, clip_grad_norm_, clip_grad_value_)
from bitnet.tensor import Parameter

SHAPES = [(3, 5), (7,), (), (2, 3, 4)]


def on_cuda():
    """The "cuda" of these tests: the emulation, or the real GPU under ``BITNET_TEST_CUDA=gpu``."""
    return contextlib.nullcontext() if os.environ.get("BITNET_TEST_CUDA") == "gpu" else emulate()


class Bag(nn.Module):
    """Parameters of the given initial values (``fortran``: the first one column-major, a non-C-contiguous
    parameter), the second one constrained by ``constraint``."""

    def __init__(self, arrays, constraint=None, fortran=False):
        super().__init__()
        for i, a in enumerate(arrays):
            p = Parameter(np.asfortranarray(a) if fortran and i == 0 else a.copy())
            if i == 1:
                p.constraint = constraint
            setattr(self, f"p{i}", p)


def values(seed, dtype, shapes=SHAPES, scale=1.0):
    rng = np.random.default_rng(seed)
    return [(scale * rng.standard_normal(s)).astype(dtype) for s in shapes]


def gradients(steps, dtype, shapes=SHAPES, seed=100):
    """Per step, one gradient per parameter (None for the last one on odd steps: it must be skipped);
    with exact zeros in them."""
    out = []
    for t in range(steps):
        gs = values(seed + t, dtype, shapes, scale=0.5)
        for g in gs:
            g.reshape(-1)[::4] = 0
        if t % 2:
            gs[-1] = None
        out.append(gs)
    return out


def feed(model, grads, device):
    for p, g in zip(model.parameters(), grads):
        p.grad = None if g is None else to_device(g.copy(), device)


def host_state(opt):
    """optimizer.state as host arrays keyed by parameter position, checking device arrays are where
    their parameters are."""
    index = {id(p): i for i, p in enumerate(opt._ordered_params())}
    out = {}
    for p, s in opt.state.items():
        entry = {}
        for k, v in s.items():
            if isinstance(v, np.ndarray) or is_device_array(v):
                assert is_device_array(v) == is_device_array(p.data), f"state {k!r} not on its parameter's device"
                entry[k] = to_host(v)
            else:
                entry[k] = v
        out[index[id(p)]] = entry
    return out


def assert_same(cpu_model, gpu_model, cpu_opt=None, gpu_opt=None):
    for (name, a), b in zip(cpu_model.named_parameters(), gpu_model.parameters()):
        assert is_device_array(b.data) and b.data.dtype == a.data.dtype and b.data.shape == a.data.shape
        np.testing.assert_array_equal(to_host(b.data), a.data, err_msg=name)
    if cpu_opt is not None:
        hc, hg = host_state(cpu_opt), host_state(gpu_opt)
        assert hc.keys() == hg.keys()
        for i in hc:
            assert hc[i].keys() == hg[i].keys()
            for k in hc[i]:
                np.testing.assert_array_equal(hg[i][k], hc[i][k], err_msg=f"state[{i}][{k!r}]")


def run_both(make_opt, arrays, steps, dtype, constraint=None, fortran=False):
    """``steps`` steps of ``make_opt(params)`` on the CPU and on "cuda", compared after each."""
    cpu = Bag(arrays, constraint, fortran)
    gpu = Bag(arrays, constraint, fortran).to("cuda")
    opt_c, opt_g = make_opt(cpu.parameters()), make_opt(gpu.parameters())
    for gs in gradients(steps, dtype, [a.shape for a in arrays]):
        feed(cpu, gs, "cpu")
        feed(gpu, gs, "cuda")
        opt_c.step()
        opt_g.step()
        assert_same(cpu, gpu, opt_c, opt_g)
    return cpu, gpu, opt_c, opt_g


SGD_OPTIONS = [dict(), dict(momentum=0.9), dict(momentum=0.9, dampening=0.3), dict(momentum=0.8, nesterov=True),
               dict(weight_decay=0.1), dict(momentum=0.9, nesterov=True, weight_decay=0.05)]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("options", SGD_OPTIONS, ids=lambda o: ",".join(o) or "plain")
def test_sgd_steps_are_the_same_on_cuda(options, dtype):
    with on_cuda():
        run_both(lambda ps: SGD(ps, lr=0.1, **options), values(0, dtype), 5, dtype)


ADAM_OPTIONS = [(Adam, dict()), (Adam, dict(weight_decay=0.1)), (Adam, dict(amsgrad=True)),
                (Adam, dict(amsgrad=True, weight_decay=0.05, betas=(0.5, 0.9), eps=1e-3)),
                (AdamW, dict()), (AdamW, dict(weight_decay=0.3, amsgrad=True)),
                (Adam, dict(decoupled_weight_decay=True, weight_decay=0.2))]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("cls,options", ADAM_OPTIONS, ids=lambda o: o.__name__ if isinstance(o, type) else
                         ",".join(o) or "plain")
def test_adam_steps_are_the_same_on_cuda(cls, options, dtype):
    with on_cuda():
        *_, opt_g = run_both(lambda ps: cls(ps, lr=0.01, **options), values(1, dtype), 5, dtype)
    assert all(type(s["step"]) is int for s in opt_g.state.values())  # counted on the host, no sync


def test_adam_on_a_non_contiguous_parameter():
    with on_cuda():
        run_both(lambda ps: Adam(ps, lr=0.01, weight_decay=0.1, amsgrad=True), values(2, np.float32), 4,
                 np.float32, fortran=True)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("threshold,gamma", [(0.0, 1e-4), (1e-8, 1e-4), (0.05, 0.3), (0.2, 1.0)])
def test_bop_steps_are_the_same_on_cuda(threshold, gamma, dtype):
    arrays = values(3, dtype)
    arrays[0].reshape(-1)[::3] = 0  # sign(0) = +1 on both devices
    with on_cuda():
        cpu, gpu, _, _ = run_both(lambda ps: Bop(ps, threshold=threshold, gamma=gamma), arrays, 6, dtype)
    flipped = sum(int(np.sum(np.sign(to_host(p.data)) != np.where(a >= 0, 1, -1)))
                  for p, a in zip(gpu.parameters(), arrays))
    if threshold < 0.2:
        assert flipped > 0  # the comparison saw flips, not only sign(w)


def test_constraint_runs_on_the_device():
    arrays = values(4, np.float32, scale=3.0)
    with on_cuda():
        _, gpu, _, _ = run_both(lambda ps: SGD(ps, lr=2.0, momentum=0.5), arrays, 3, np.float32,
                                constraint=clip_unit)
    w = to_host(gpu.p1.data)
    assert np.abs(w).max() == 1.0 and np.abs(to_host(gpu.p0.data)).max() > 1  # p1 only is clipped


def test_state_is_created_on_the_device_and_zero_grad_keeps_it_there():
    with on_cuda():
        model = Bag(values(5, np.float32)).to("cuda")
        opt = Adam(model.parameters(), amsgrad=True)
        feed(model, gradients(1, np.float32)[0], "cuda")
        opt.step()
        for s in opt.state.values():
            assert all(is_device_array(s[k]) for k in ("exp_avg", "exp_avg_sq", "max_exp_avg_sq"))
        opt.zero_grad(set_to_none=False)
        assert all(is_device_array(p.grad) and not to_host(p.grad).any() for p in model.parameters())
        opt.zero_grad()
        assert all(p.grad is None for p in model.parameters())


@pytest.mark.parametrize("name", ["sgd", "adam", "bop"])
def test_state_dict_round_trip_across_devices(name):
    make = {"sgd": lambda ps: SGD(ps, lr=0.1, momentum=0.9, nesterov=True),
            "adam": lambda ps: AdamW(ps, lr=0.01, amsgrad=True),
            "bop": lambda ps: Bop(ps, threshold=0.01, gamma=0.2)}[name]
    arrays, grads = values(6, np.float32), gradients(6, np.float32)
    with on_cuda():
        # reference: 6 steps on the CPU
        ref = Bag(arrays)
        ref_opt = make(ref.parameters())
        for gs in grads:
            feed(ref, gs, "cpu")
            ref_opt.step()
        # 3 steps on cuda, checkpoint (host arrays), 3 steps on the CPU from it, and the reverse
        for first, second in (("cuda", "cpu"), ("cpu", "cuda")):
            a = Bag(arrays).to(first)
            opt_a = make(a.parameters())
            for gs in grads[:3]:
                feed(a, gs, first)
                opt_a.step()
            sd = opt_a.state_dict()
            for entry in sd["state"].values():
                assert all(not is_device_array(v) for v in entry.values())
                assert all(type(v) is np.ndarray for v in entry.values() if not isinstance(v, int))
            b = Bag([to_host(p.data) for p in a.parameters()]).to(second)
            opt_b = make(b.parameters())
            opt_b.load_state_dict(sd)
            assert all(is_device_array(v) == (second == "cuda") for s in opt_b.state.values() for v in s.values()
                       if not isinstance(v, int))
            for gs in grads[3:]:
                feed(b, gs, second)
                opt_b.step()
            for p, q in zip(ref.parameters(), b.parameters()):
                np.testing.assert_array_equal(to_host(q.data), p.data)
            np.testing.assert_equal(opt_b.state_dict(), ref_opt.state_dict())


def test_load_state_dict_errors_are_the_same_on_cuda_and_change_nothing():
    with on_cuda():
        model = Bag(values(7, np.float32)).to("cuda")
        opt = Adam(model.parameters())
        feed(model, gradients(1, np.float32)[0], "cuda")
        opt.step()
        sd = opt.state_dict()
        sd["state"][0]["exp_avg"] = np.zeros((4, 4), np.float32)
        sd["state"][1]["exp_avg_sq"] = -np.ones(7, np.float32)
        before = opt.state_dict()
        with pytest.raises(ValueError, match=r"(?s)state\[0\]\['exp_avg'\]: shape \(4, 4\).*state\[1\]"):
            opt.load_state_dict(sd)
        np.testing.assert_equal(opt.state_dict(), before)
        assert all(is_device_array(v) for s in opt.state.values() for k, v in s.items() if k != "step")


@pytest.mark.parametrize("make", [lambda ps: Adam(ps, lr=0.01, amsgrad=True),
                                  lambda ps: SGD(ps, lr=0.1, momentum=0.9), lambda ps: Bop(ps, 0.01, 0.3)],
                         ids=["adam", "sgd", "bop"])
def test_state_follows_the_parameters_when_the_model_moves(make):
    arrays, grads = values(8, np.float32), gradients(6, np.float32)
    with on_cuda():
        ref = Bag(arrays)
        ref_opt = make(ref.parameters())
        moved = Bag(arrays)
        opt = make(moved.parameters())
        for t, gs in enumerate(grads):
            device = ["cpu", "cpu", "cuda", "cuda", "cpu", "cuda"][t]
            moved.to(device)
            feed(ref, gs, "cpu")
            feed(moved, gs, device)
            ref_opt.step()
            opt.step()
            host_state(opt)  # every state array beside its parameter
            for p, q in zip(ref.parameters(), moved.parameters()):
                np.testing.assert_array_equal(to_host(q.data), p.data)
        np.testing.assert_equal(opt.state_dict(), ref_opt.state_dict())


def test_a_gradient_on_another_device_is_a_clear_error():
    with on_cuda():
        model = Bag(values(9, np.float32)).to("cuda")
        opt = SGD(model.parameters(), lr=0.1)
        model.p0.grad = np.ones(model.p0.shape, np.float32)
        with pytest.raises(RuntimeError, match=r"SGD.step: a parameter of shape \(3, 5\) is on cuda but its "
                                               r"gradient is on cpu"):
            opt.step()
        host = Bag(values(9, np.float32))
        opt = Adam(host.parameters())
        host.p1.grad = to_device(np.ones(7, np.float32), "cuda")
        with pytest.raises(RuntimeError, match=r"Adam.step: .* shape \(7,\) is on cpu but its gradient is on cuda"):
            opt.step()


def binary_model(seed):
    rng = np.random.default_rng(seed)
    return nn.Sequential(nn.QDense(6, 5, rng=rng), nn.BatchNorm1d(5), nn.Dense(5, 3, rng=rng))


def test_bop_and_adam_with_a_schedule_on_a_binary_model():
    grads_rng = np.random.default_rng(11)
    with on_cuda():
        cpu, gpu = binary_model(0), binary_model(0).to("cuda")
        opts = [bop_and_adam(m, lr=0.01, threshold=1e-3, gamma=0.2, weight_decay=0.01) for m in (cpu, gpu)]
        scheds = [WarmupCosine(o, warmup_steps=2, total_steps=6) for o in opts]
        assert isinstance(opts[1], MultiOptimizer) and [type(o) for o in opts[1].optimizers] == [Bop, Adam]
        for _ in range(6):
            gs = [grads_rng.standard_normal(p.shape).astype(np.float32) for p in cpu.parameters()]
            for m, device, opt, sched in zip((cpu, gpu), ("cpu", "cuda"), opts, scheds):
                feed(m, gs, device)
                opt.step()
                sched.step()
            assert opts[0].param_groups[0]["lr"] == opts[1].param_groups[0]["lr"]
            assert_same(cpu, gpu, opts[0].optimizers[0], opts[1].optimizers[0])
            assert_same(cpu, gpu, opts[0].optimizers[1], opts[1].optimizers[1])
        assert set(np.unique(to_host(gpu[0].weight.data))) <= {-1.0, 1.0}  # Bop keeps +-1 kernels
        sd = opts[1].state_dict()
        again = bop_and_adam(binary_model(0).to("cuda"))
        again.load_state_dict(sd)
        np.testing.assert_equal(again.state_dict(), opts[0].state_dict())


@pytest.mark.parametrize("make_sched", [lambda o: StepLR(o, step_size=2, gamma=0.5),
                                        lambda o: MultiStepLR(o, milestones=[1, 3], gamma=0.1),
                                        lambda o: CosineAnnealingLR(o, T_max=4, eta_min=0.01),
                                        lambda o: LinearWarmup(o, 2, after=CosineAnnealingLR(o, T_max=3))],
                         ids=["step", "multistep", "cosine", "warmup"])
def test_schedulers_drive_an_optimizer_on_cuda(make_sched):
    arrays, grads = values(12, np.float32), gradients(5, np.float32)
    with on_cuda():
        cpu, gpu = Bag(arrays), Bag(arrays).to("cuda")
        opts = [SGD(m.parameters(), lr=0.5, momentum=0.9) for m in (cpu, gpu)]
        scheds = [make_sched(o) for o in opts]
        for gs in grads:
            for m, device, opt, sched in zip((cpu, gpu), ("cpu", "cuda"), opts, scheds):
                feed(m, gs, device)
                opt.step()
                sched.step()
            assert scheds[0].state_dict() == scheds[1].state_dict()
            assert_same(cpu, gpu, *opts)


def clip_case(dtype, seed=13):
    shapes = [(31, 17), (5,), (), (4, 3, 2)]
    grads = values(seed, dtype, shapes)
    grads[2] = None  # skipped
    return shapes, grads


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("norm_type", [2.0, 1.0, np.inf, 3.5, 0.5])
@pytest.mark.parametrize("max_norm", [0.5, 1e6], ids=["clips", "keeps"])
def test_clip_grad_norm_on_cuda(max_norm, norm_type, dtype):
    shapes, grads = clip_case(dtype)
    with on_cuda():
        cpu, gpu = Bag(values(0, dtype, shapes)), Bag(values(0, dtype, shapes)).to("cuda")
        feed(cpu, grads, "cpu")
        feed(gpu, grads, "cuda")
        total_c = clip_grad_norm_(cpu.parameters(), max_norm, norm_type)
        total_g = clip_grad_norm_(gpu.parameters(), max_norm, norm_type)
        assert total_g.device == "cuda" and total_g.dtype == total_c.dtype == dtype and total_g.shape == ()
        # rtol: a float64 norm summed in another order (module docstring), then rounded to dtype once
        rtol = 1e-12 if dtype == np.float64 else 2.0 ** -24
        np.testing.assert_allclose(float(total_g), float(total_c), rtol=rtol)
        eps = np.finfo(dtype).eps  # one ulp: the clip factor rounded to dtype (module docstring)
        for p, q in zip(cpu.parameters(), gpu.parameters()):
            assert (p.grad is None) == (q.grad is None)
            if p.grad is not None:
                assert is_device_array(q.grad) and q.grad.dtype == dtype
                np.testing.assert_allclose(to_host(q.grad), p.grad, rtol=eps, atol=0)
        if max_norm > 1e3:  # no clipping: the gradients are untouched (multiplied by exactly 1)
            for p, g in zip(gpu.parameters(), grads):
                if g is not None:
                    np.testing.assert_array_equal(to_host(p.grad), g)
        else:
            clipped = clip_grad_norm_(gpu.parameters(), 1e6, norm_type)
            np.testing.assert_allclose(float(clipped), max_norm, rtol=1e-5)


def test_clip_grad_norm_of_a_nonfinite_norm_on_cuda():
    shapes, grads = clip_case(np.float32)
    grads[0][3, 4] = np.nan
    with on_cuda():
        cpu, gpu = Bag(values(0, np.float32, shapes)), Bag(values(0, np.float32, shapes)).to("cuda")
        feed(cpu, grads, "cpu")
        feed(gpu, grads, "cuda")
        assert np.isnan(float(clip_grad_norm_(cpu.parameters(), 0.1)))
        assert np.isnan(float(clip_grad_norm_(gpu.parameters(), 0.1)))
        for p, q in zip(cpu.parameters(), gpu.parameters()):  # nan < 1 is false: nothing scaled, on both
            if p.grad is not None:
                np.testing.assert_array_equal(to_host(q.grad), p.grad)
        with pytest.raises(RuntimeError, match="total 2.0-norm of the gradients is nan"):
            clip_grad_norm_(gpu.parameters(), 0.1, error_if_nonfinite=True)
        with pytest.raises(RuntimeError, match=r"clip_grad_norm_: 1 gradient\(s\) are on cuda and 1 on cpu"):
            clip_grad_norm_([cpu.p0, gpu.p0], 0.1)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_clip_grad_value_on_cuda(dtype):
    shapes, grads = clip_case(dtype)
    with on_cuda():
        cpu, gpu = Bag(values(0, dtype, shapes)), Bag(values(0, dtype, shapes)).to("cuda")
        feed(cpu, grads, "cpu")
        feed(gpu, grads, "cuda")
        clip_grad_value_(cpu.parameters(), 0.3)
        clip_grad_value_(gpu.parameters(), 0.3)
        for p, q in zip(cpu.parameters(), gpu.parameters()):
            if p.grad is not None:
                assert is_device_array(q.grad) and q.grad.dtype == dtype
                np.testing.assert_array_equal(to_host(q.grad), p.grad)
        assert np.abs(to_host(gpu.p0.grad)).max() == dtype(0.3)
