"""Leaves' gradients on a device: kept without a copy where the producing op owns them
(``Function.owned_grads``), copied otherwise, and in every case shared with nothing else."""
from __future__ import annotations

import itertools

import numpy as np
import pytest

from bitnet import Tensor, models
from bitnet.functional import cross_entropy
from bitnet.gpu import emulated
from bitnet.gpu.arrays import array_module, emulate, to_host
from bitnet.tensor import Function
from tests.gpu_training.compare import emulation_only

pytestmark = emulation_only


class Twice(Function):
    """y = 2x, backward one new array; with ``share``, y = x and backward hands out g itself."""
    devices = ("cpu", "cuda")

    def forward(self, x, share=False):
        self.share = share
        self.owned_grads = () if share else (0,)
        return x.copy() if share else x * 2

    def backward(self, g):
        self.given = g if self.share else g * 2
        return self.given


class Both(Function):
    """y = a + b; backward hands g to both inputs and declares nothing."""
    devices = ("cpu", "cuda")

    def forward(self, a, b):
        return a + b

    def backward(self, g):
        return g, g


def test_only_an_owned_gradient_skips_the_copy():
    with emulate():
        for share in (False, True):
            x = Tensor(np.arange(4.0), requires_grad=True, device="cuda")
            y = Twice.apply(x, share=share)
            ctx = y._ctx
            seed = array_module(x.data).ones_like(x.data)
            with emulated.count_device_calls() as calls:
                y.backward(seed, retain_graph=True)
            assert (x.grad is ctx.given) == (not share)
            assert [n for n, _ in calls].count("copy") == int(share)  # g itself is the seed: copied
            assert not np.shares_memory(emulated.host_view(x.grad), emulated.host_view(seed))


def test_two_leaves_given_one_array_get_one_each():
    with emulate():
        a, b = (Tensor(np.ones(3), requires_grad=True, device="cuda") for _ in range(2))
        Both.apply(a, b).sum().backward()
        assert not np.shares_memory(emulated.host_view(a.grad), emulated.host_view(b.grad))
        a.grad *= 3  # an in-place change of one (clip_grad_norm_ does this) leaves the other as it was
        np.testing.assert_array_equal(to_host(b.grad), np.ones(3))


def test_a_sum_of_contributions_is_kept_and_a_second_pass_adds_to_it():
    with emulate():
        x = Tensor(np.arange(3.0), requires_grad=True, device="cuda")
        (Twice.apply(x, share=True) + Twice.apply(x, share=True)).sum().backward()
        first = x.grad
        np.testing.assert_array_equal(to_host(first), np.full(3, 2.0))
        (Twice.apply(x) * 1.0).sum().backward()
        np.testing.assert_array_equal(to_host(x.grad), np.full(3, 4.0))
        np.testing.assert_array_equal(to_host(first), np.full(3, 2.0))  # a new array: the first unchanged


@pytest.mark.parametrize("name, shape", [("lenet-binary", (1, 28, 28)), ("resnet18-binary", (3, 32, 32))])
def test_zoo_gradients_share_memory_with_nothing_and_match_the_cpu(name, shape):
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((2,) + shape).astype(np.float32), np.array([3, 7])
    cpu = models.get(name, seed=0)
    cross_entropy(cpu(Tensor(x)), y).backward()
    with emulate():
        gpu = models.get(name, seed=0).to("cuda")
        with emulated.count_device_calls() as calls:
            cross_entropy(gpu(Tensor(x, device="cuda")), y).backward()
        params = list(gpu.parameters())
        grads = [emulated.host_view(p.grad) for p in params]
        held = grads + [emulated.host_view(p.data) for p in params]
        for (i, a), (j, b) in itertools.combinations(enumerate(held), 2):
            assert not np.shares_memory(a, b), (i, j)
        copies = [n for n, where in calls if n == "copy" and where.endswith("tensor.py:_sum")]
        assert len(copies) <= 3  # only the dense layers' bias and transposed weight (not owned)
    for (pname, p), q in zip(cpu.named_parameters(), params):
        np.testing.assert_allclose(to_host(q.grad), p.grad, rtol=2e-4, atol=2e-5, err_msg=pname)


def test_cpu_leaves_still_get_a_copy():
    x = Tensor(np.arange(4.0), requires_grad=True)
    y = Twice.apply(x)
    ctx = y._ctx
    y.backward(np.ones(4), retain_graph=True)
    assert x.grad is not ctx.given and not np.shares_memory(x.grad, ctx.given)
    np.testing.assert_array_equal(x.grad, np.full(4, 2.0))
