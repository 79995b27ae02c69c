"""Post-accumulate gradient hooks and backward callbacks (bitnet.tensor): what data-parallel training
starts its gradient reductions from."""
from __future__ import annotations

import numpy as np
import pytest

import bitnet
from bitnet import functional as F, nn
from bitnet.tensor import queue_callback


def _net():
    return nn.Sequential(nn.Dense(6, 8, rng=0), nn.Tanh(), nn.Dense(8, 8, rng=1), nn.Tanh(), nn.Dense(8, 3, rng=2))


def _loss(model, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((5, 6)).astype(np.float32)
    y = rng.integers(0, 3, 5)
    return F.cross_entropy(model(bitnet.Tensor(x)), y)


def test_hooks_fire_once_per_parameter_while_backward_runs_with_unchanged_gradients():
    plain = _net()
    _loss(plain).backward()
    model = _net()
    params = list(model.parameters())
    index = {id(p): i for i, p in enumerate(params)}
    events = []

    def hook(p):
        # how many of the other parameters already hold a gradient when this one is final
        events.append((index[id(p)], sum(q.grad is not None for q in params), p.grad.copy()))
    for p in params:
        p.register_post_accumulate_grad_hook(hook)
    _loss(model).backward()
    assert sorted(i for i, _, _ in events) == list(range(len(params)))  # each exactly once
    order = [i for i, _, _ in events]
    # the last layer's parameters are final first, while the first layer's gradients do not exist yet
    assert order.index(4) < order.index(0) and order.index(5) < order.index(1)
    first = events[0]
    assert first[1] <= 2, f"the first hook saw {first[1]} gradients: it did not fire during backward"
    for i, _, g in events:  # exactly the gradients of a backward without hooks
        np.testing.assert_array_equal(g, list(plain.parameters())[i].grad)
        np.testing.assert_array_equal(params[i].grad, g)


def test_shared_parameter_hook_sees_the_summed_gradient_once():
    w = bitnet.Parameter(np.array([1.5, -2.0], np.float32))
    seen = []
    w.register_post_accumulate_grad_hook(lambda p: seen.append(p.grad.copy()))
    x = bitnet.Tensor(np.array([3.0, 4.0], np.float32))
    ((w * x).sum() + (w * w).sum()).backward()
    assert len(seen) == 1
    np.testing.assert_array_equal(seen[0], np.array([3.0, 4.0], np.float32) + 2 * w.data)


def test_callback_runs_after_all_hooks_before_backward_returns_and_handles_remove():
    model = _net()
    log = []

    def hook(p):
        if not log:
            queue_callback(lambda: log.append(("done", all(q.grad is not None for q in model.parameters()))))
        log.append("hook")
    handles = [p.register_post_accumulate_grad_hook(hook) for p in model.parameters()]
    _loss(model).backward()
    assert log[-1] == ("done", True) and log.count("hook") == len(handles) and len(log) == len(handles) + 1
    for h in handles:
        h.remove()
        h.remove()  # twice: nothing happens
    log.clear()
    model.zero_grad()
    _loss(model).backward()
    assert log == []


def test_queue_callback_outside_backward_is_an_error():
    with pytest.raises(RuntimeError, match="outside backward"):
        queue_callback(lambda: None)
    with pytest.raises(TypeError, match="expected a callable"):
        bitnet.Parameter(np.zeros(2, np.float32)).register_post_accumulate_grad_hook(3)


def test_accumulation_over_two_backward_passes_calls_the_hook_with_the_running_sum():
    w = bitnet.Parameter(np.array([2.0], np.float32))
    seen = []
    w.register_post_accumulate_grad_hook(lambda p: seen.append(float(p.grad[0])))
    (w * 3.0).sum().backward()
    (w * 5.0).sum().backward()
    assert seen == [3.0, 8.0]
