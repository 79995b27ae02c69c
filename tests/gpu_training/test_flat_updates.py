"""Optimizers on "cuda" update a group's parameters together (``bitnet.optim.flat``): the same bits as
the per-parameter update on the CPU, a fixed small number of kernel launches, parameters and
gradients never replaced, state kept as views of one flat array, layouts forgotten when unused.

Bits are compared exactly: the updates are elementwise (see ``bitnet.optim.flat``), and the
per-parameter comparisons of test_gpu_optim.py cover every optimizer option; these tests cover what
is particular to the concatenation (buckets, constraints, views, counts)."""
from __future__ import annotations

import numpy as np
import pytest

from bitnet import nn
from bitnet.gpu.arrays import emulate, is_device_array, to_device, to_host
from bitnet.gpu.emulated import count_device_calls
from bitnet.nn.quantized import clip_unit
from bitnet.optim import SGD, Adam, Bop, Optimizer
from bitnet.tensor import Parameter
from tests.gpu_training.compare import emulation_only

SHAPES = [(4, 3), (5,), (), (2, 2, 3), (7, 1), (3,), (1,), (2, 5), (6,), (3, 3)]  # 10 parameters


def halve(data):
    """A constraint that is not flagged elementwise: the flat update must run it per parameter."""
    data *= data.dtype.type(0.5)


class Bag(nn.Module):
    def __init__(self, seed, constraints=None, dtypes=None):
        super().__init__()
        rng = np.random.default_rng(seed)
        for i, shape in enumerate(SHAPES):
            dtype = (dtypes or {}).get(i, np.float32)
            p = Parameter((2 * rng.standard_normal(shape)).astype(dtype))
            p.constraint = (constraints or {}).get(i)
            setattr(self, f"p{i}", p)


def grads(step, model, missing=()):
    rng = np.random.default_rng(1000 + step)
    return [None if i in missing else rng.standard_normal(p.shape).astype(p.data.dtype)
            for i, p in enumerate(model.parameters())]


def run(make, steps, constraints=None, dtypes=None, missing=lambda t: ()):
    """``steps`` steps on the CPU and on "cuda", compared bit for bit after each; returns both."""
    cpu, gpu = Bag(0, constraints, dtypes), Bag(0, constraints, dtypes).to("cuda")
    opt_c, opt_g = make(cpu.parameters()), make(gpu.parameters())
    for t in range(steps):
        for model, device, opt in ((cpu, "cpu", opt_c), (gpu, "cuda", opt_g)):
            for p, g in zip(model.parameters(), grads(t, model, missing(t))):
                p.grad = None if g is None else to_device(g, device)
            opt.step()
        for i, (a, b) in enumerate(zip(cpu.parameters(), gpu.parameters())):
            np.testing.assert_array_equal(to_host(b.data), a.data, err_msg=f"step {t}, p{i}")
        np.testing.assert_equal(opt_g.state_dict(), opt_c.state_dict())
    return cpu, gpu, opt_c, opt_g


MAKERS = {"adam": lambda ps: Adam(ps, lr=0.05, weight_decay=0.01, amsgrad=True),
          "sgd": lambda ps: SGD(ps, lr=0.1, momentum=0.9, nesterov=True),
          "bop": lambda ps: Bop(ps, threshold=0.05, gamma=0.3)}


@pytest.mark.parametrize("name", sorted(MAKERS))
def test_constraints_in_runs_and_alone_give_the_cpu_bits(name):
    # clip_unit on p0, p2, p5 (not adjacent: the bucket is reordered to clip them in one run), a
    # constraint not flagged elementwise on p3 and p5's neighbour p6
    constraints = {0: clip_unit, 2: clip_unit, 5: clip_unit, 3: halve, 6: halve}
    with emulate():
        _, gpu, _, _ = run(MAKERS[name], 4, constraints)
    assert np.abs(to_host(gpu.p2.data)).max() <= 1.0


def test_buckets_by_dtype_and_step_count_give_the_cpu_bits():
    # p1, p4 in float64 (a bucket of their own); p7 and p8 lose their gradients on odd steps (their
    # step counts fall behind: another bucket); p9 has none at all (no state)
    with emulate():
        _, _, _, opt = run(MAKERS["adam"], 5, dtypes={1: np.float64, 4: np.float64},
                           missing=lambda t: {9} | ({7, 8} if t % 2 else set()))
    steps = [opt.state[p]["step"] if p in opt.state else None for p in opt.param_groups[0]["params"]]
    assert steps == [5, 5, 5, 5, 5, 5, 5, 3, 3, None]


def _step_calls(model, opt, steps):
    counts = []
    for t in range(steps):
        for p, g in zip(model.parameters(), grads(t, model)):
            p.grad = to_device(g, "cuda")
        with count_device_calls() as calls:
            opt.step()
        counts.append(len(calls))
    return counts, [n for n, _ in calls]


@emulation_only
def test_a_step_launches_a_fixed_number_of_kernels():
    # Adam (no weight decay, no amsgrad) on 10 float32 parameters: P gathered and written back by one
    # kernel each (bitnet.kernels.cuda_flat, from the table of their addresses), G gathered by one
    # concatenate (CuPy: one kernel for more than 8 small arrays), the step itself one kernel
    # (bitnet.kernels.cuda_adam): 4, whatever the number of steps; the first step also fills m and v
    # with zeros and copies the offsets of the table to the device
    with emulate():
        model = Bag(0).to("cuda")
        counts, names = _step_calls(model, Adam(model.parameters(), lr=0.01), 3)
    assert counts[1:] == [1 + 1 + 1 + 1] * 2 and counts[0] == 4 + 2 + 1
    assert names.count("adam_step") == 1
    assert [names.count(n) for n in ("flat_gather", "flat_scatter", "concatenate", "setitem")] == [1, 1, 1, 0]


@emulation_only
def test_a_parameter_that_is_not_contiguous_is_gathered_and_written_back_by_copies():
    with emulate():
        model = Bag(0).to("cuda")
        model.p0.data = model.p0.data.T  # a (3, 4) view of a (4, 3) array: not C-contiguous
        model.p0.grad = None
        counts, names = _step_calls(model, SGD(model.parameters(), lr=0.1), 2)
    assert [names.count(n) for n in ("flat_gather", "flat_scatter", "concatenate", "setitem")] == [0, 0, 2, 10]


def test_parameters_and_gradients_stay_the_same_arrays_and_state_is_views_of_one_array():
    with emulate():
        model = Bag(0).to("cuda")
        opt = SGD(model.parameters(), lr=0.1, momentum=0.9)
        params = list(model.parameters())
        for t in range(2):
            for p, g in zip(params, grads(t, model)):
                p.grad = to_device(g, "cuda")
            datas, gs = [p.data for p in params], [p.grad for p in params]
            before = [to_host(g) for g in gs]
            opt.step()
            assert all(p.data is d and p.grad is g for p, d, g in zip(params, datas, gs))
            for g, b in zip(gs, before):
                np.testing.assert_array_equal(to_host(g), b)  # gradients not modified
        bufs = [opt.state[p]["momentum_buffer"] for p in params]
        assert all(is_device_array(b) and b.shape == p.data.shape for b, p in zip(bufs, params))
        flat = opt._flat.layouts[next(iter(opt._flat.layouts))].flat["momentum_buffer"]
        assert flat.size == sum(p.data.size for p in params)
        for b in bufs:  # every buffer a view into the flat one: writing it shows there
            b[...] = 7.0
        np.testing.assert_array_equal(to_host(flat), np.full(flat.size, 7.0, np.float32))


def test_replaced_state_and_moved_models_are_gathered_again():
    ref = Bag(0)
    ref_opt = MAKERS["adam"](ref.parameters())
    with emulate():
        model = Bag(0).to("cuda")
        opt = MAKERS["adam"](model.parameters())
        for t in range(6):
            if t == 2:  # a checkpoint loaded back: new state arrays, the kept flat ones dropped
                opt.load_state_dict(opt.state_dict())
                assert not opt._flat.layouts
            if t == 3:  # state replaced by hand (one entry): gathered again at the next step
                p = model.p4
                opt.state[p]["exp_avg"] = opt.state[p]["exp_avg"].copy()
            model.to("cpu" if t == 4 else "cuda")
            for m, opt_, device in ((ref, ref_opt, "cpu"), (model, opt, "cpu" if t == 4 else "cuda")):
                for p, g in zip(m.parameters(), grads(t, m)):
                    p.grad = to_device(g, device)
                opt_.step()
            if t == 4:
                assert not opt._flat.layouts  # parameters on the CPU: no device layout kept
            for a, b in zip(ref.parameters(), model.parameters()):
                np.testing.assert_array_equal(to_host(b.data), a.data, err_msg=f"step {t}")
        np.testing.assert_equal(opt.state_dict(), ref_opt.state_dict())


class Normalized(Optimizer):
    """An optimizer whose update is not elementwise (each parameter scaled by its own norm): it must be
    given one parameter at a time, in its own shape."""

    def __init__(self, params):
        super().__init__(params, dict(lr=0.1))

    def _update(self, data, grad, state, group):
        assert data.shape == grad.shape and data.shape in SHAPES
        norm = float((grad * grad).sum()) ** 0.5
        data -= data.dtype.type(group["lr"] / max(norm, 1e-12)) * grad


def test_an_optimizer_not_declared_elementwise_gets_one_parameter_at_a_time():
    with emulate():
        run(lambda ps: Normalized(ps), 2)


@emulation_only
def test_parameters_sharing_an_elementwise_constraint_are_clipped_in_one_launch():
    # p0, p2, p5 clipped to [-1, 1]: the bucket puts them next to each other, one clip for all three
    with emulate():
        model = Bag(0, {0: clip_unit, 2: clip_unit, 5: clip_unit, 3: halve}).to("cuda")
        opt = SGD(model.parameters(), lr=0.1)
        for p, g in zip(model.parameters(), grads(0, model)):
            p.grad = to_device(g, "cuda")
        with count_device_calls() as calls:
            opt.step()
    names = [n for n, _ in calls]
    assert names.count("clip") == 1 and names.count("multiply") == 2  # halve on p3 alone; lr * G
