"""The recycled-array pool: an array is handed out again only when nothing else references it."""
from __future__ import annotations

import threading

import numpy as np

from bitnet.ops import workspace as W

BIG = (W.MIN_BYTES // 4 + 5,)  # a float32 shape just above the pooling threshold


def test_dead_arrays_are_reused_live_ones_never():
    W.clear()
    a = W.empty(BIG, np.float32)
    b = W.empty(BIG, np.float32)
    assert a is not b  # a is alive
    addr = a.ctypes.data
    del a
    c = W.empty(BIG, np.float32)
    assert c.ctypes.data == addr  # reused
    view = c[::2]
    del c
    d = W.empty(BIG, np.float32)
    assert d.ctypes.data != addr  # a view still holds it (through .base)
    del view, b, d
    W.clear()


def test_shapes_dtypes_small_arrays_and_contiguity():
    W.clear()
    a = W.empty(BIG, np.float32)
    assert a.flags.c_contiguous and a.shape == BIG and a.dtype == np.float32
    assert W.empty(BIG, np.float64).dtype == np.float64
    assert W.empty((BIG[0], 1), np.float32).shape == (BIG[0], 1)
    before = W.pooled_bytes()
    small = W.empty((3, 5), np.int32)
    assert small.shape == (3, 5) and W.pooled_bytes() == before  # not pooled
    assert W.empty_like(np.zeros((4, 3)).T).flags.c_contiguous
    W.clear()


def test_pool_is_bounded_and_limit_zero_turns_it_off():
    W.clear()
    nbytes = BIG[0] * 4
    with W.limit(3 * nbytes):
        live = [W.empty(BIG, np.float32) for _ in range(5)]  # two do not fit: plain arrays
        assert W.pooled_bytes() <= 3 * nbytes
        del live
        keep = [W.empty(BIG, np.float32) for _ in range(2)]  # the first two of the key stay alive
        other = W.empty((BIG[0] + 1,), np.float32)  # evicts the dead third to fit
        assert W.pooled_bytes() <= 3 * nbytes
        assert W.empty(BIG, np.float32) is not keep[0]
        del other, keep
    with W.limit(0):
        assert W.pooled_bytes() == 0
        a = W.empty(BIG, np.float32)
        addr = a.ctypes.data
        del a
        assert W.pooled_bytes() == 0
    W.clear()


def test_pools_are_per_thread():
    W.clear()
    mine = W.empty(BIG, np.float32)
    seen = {}

    def other():
        seen["bytes_before"] = W.pooled_bytes()
        seen["array"] = W.empty(BIG, np.float32)
    t = threading.Thread(target=other)
    t.start()
    t.join()
    assert seen["bytes_before"] == 0
    assert seen["array"].ctypes.data != mine.ctypes.data
    W.clear()


def test_training_steps_give_the_same_results_with_and_without_recycling():
    import bitnet
    from bitnet import Tensor, functional as F

    def train(steps):
        model = bitnet.models.get("lenet-binary", seed=0)
        opt = bitnet.optim.Adam(model.parameters(), lr=1e-3)
        rng = np.random.default_rng(0)
        x = Tensor(rng.standard_normal((6, 1, 28, 28)).astype(np.float32))
        y = rng.integers(0, 10, 6)
        for _ in range(steps):
            opt.zero_grad()
            F.cross_entropy(model(x), y).backward()
            opt.step()
        return [p.data.copy() for p in model.parameters()]
    W.clear()
    with W.limit(0):
        fresh = train(3)
    recycled = train(3)
    for a, b in zip(fresh, recycled):
        np.testing.assert_array_equal(a, b)
    W.clear()


def test_fit_leaves_no_recycled_arrays_behind():
    """After ``fit`` the pool of the training thread is empty: a notebook does not keep a step's
    working memory once training is over."""
    import bitnet
    from bitnet import nn
    from bitnet.ops import workspace
    from bitnet.training import fit
    rng = np.random.default_rng(0)
    model = nn.Sequential(nn.Conv2d(1, 8, 3, rng=rng), nn.ReLU(), nn.Flatten(), nn.Dense(8 * 26 * 26, 3, rng=rng))
    data = [(rng.standard_normal((64, 1, 28, 28)).astype(np.float32), rng.integers(0, 3, 64)) for _ in range(2)]
    workspace.clear()
    fit(model, bitnet.optim.SGD(model.parameters(), lr=0.01), data, epochs=1, progress=False, log=None)
    assert workspace.pooled_bytes() == 0


def test_summed_and_leaf_gradients_are_arrays_of_their_own():
    """Gradients summed from several uses and leaves' gradients come from the pool: each is a new
    array holding the right values, shared with nothing (writing into one changes no other)."""
    from bitnet import Tensor
    rng = np.random.default_rng(1)
    a = Tensor(rng.standard_normal((300, 300)).astype(np.float32), requires_grad=True)
    b = Tensor(rng.standard_normal((300, 300)).astype(np.float32), requires_grad=True)
    h = a + b                     # Add.backward hands the same gradient to both inputs
    (h * 2 + h).sum().backward()  # h used twice: its gradient is a sum
    np.testing.assert_array_equal(a.grad, np.full((300, 300), 3, np.float32))
    assert a.grad is not b.grad and not np.shares_memory(a.grad, b.grad)
    a.grad[...] = 0
    np.testing.assert_array_equal(b.grad, np.full((300, 300), 3, np.float32))
