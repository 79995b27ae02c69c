"""``Sequential``'s fused runs (``bitnet.nn.fusion``): batch norm -> [tanh ->] max pool as one op
gives the values of the layers one by one, gradients within float rounding of them and of a float64
reference, and runs only where it may (training statistics, tiling windows, no hooks)."""
from __future__ import annotations

import numpy as np
import pytest

from bitnet import Tensor, nn
from bitnet import functional as F
from tests.engine.bitnet_gradcheck import gradcheck


def _net(act, k=2, dtype=np.float32, seed=0, **pool):
    rng = np.random.default_rng(seed)
    layers = [nn.Conv2d(2, 3, 3, rng=rng), nn.BatchNorm2d(3)]
    if act:
        layers.append(nn.Tanh())
    layers += [nn.MaxPool2d(k, **pool), nn.Flatten()]
    net = nn.Sequential(*layers)
    for p in net.parameters():
        p.data = p.data.astype(dtype)
    bn = net[1]
    bn.weight.data[:] = np.array([1.5, -0.7, 0.3], dtype)  # a negative scale: the max is a min of x
    bn.bias.data[:] = np.array([0.2, -0.1, 0.4], dtype)
    return net


def _run(net, x, g, fuse):
    net.fuse = fuse
    t = Tensor(x, requires_grad=True)
    y = net(t)
    y.backward(g)
    return y.data, t.grad, [p.grad for p in net.parameters()], net[1].running_mean.copy(), net[1].running_var.copy()


@pytest.mark.parametrize("act", [False, True])
@pytest.mark.parametrize("shape", [(3, 2, 9, 11), (1, 2, 6, 6), (5, 2, 7, 7)], ids=str)
def test_fused_matches_the_layers_and_a_float64_reference(act, shape):
    rng = np.random.default_rng(1)
    x = (rng.standard_normal(shape) * 2).astype(np.float32)
    out_shape = _net(act)(Tensor(x)).shape
    g = rng.standard_normal(out_shape).astype(np.float32)
    fused = _run(_net(act), x, g, True)
    plain = _run(_net(act), x, g, False)
    exact = _run(_net(act, dtype=np.float64), x.astype(np.float64), g.astype(np.float64), False)
    np.testing.assert_array_equal(fused[0], plain[0])  # the same values
    np.testing.assert_array_equal(fused[3], plain[3])  # running statistics
    np.testing.assert_array_equal(fused[4], plain[4])
    for f, p, e in zip([fused[1]] + fused[2], [plain[1]] + plain[2], [exact[1]] + exact[2]):
        # float32 rounding of both paths: the fused one is no further from float64 than float32 allows
        scale = np.abs(e).max() + 1e-30
        assert np.abs(f - e).max() <= max(4 * np.abs(p - e).max(), 1e-5 * scale)
        np.testing.assert_allclose(f, p, rtol=1e-4, atol=1e-5 * scale)


def test_fused_op_gradcheck_float64():
    from bitnet.ops.norm_pool import batch_norm_max_pool
    rng = np.random.default_rng(2)
    x = rng.permutation(np.arange(2 * 3 * 4 * 6)).reshape(2, 3, 4, 6) * 0.05 - 1.0  # distinct values
    gamma, beta = np.array([1.2, -0.8, 0.5]), np.array([0.1, 0.0, -0.3])
    for act in (None, "tanh"):
        gradcheck(lambda a, w, b: batch_norm_max_pool(a, None, None, w, b, act=act), [x, gamma, beta])


def test_fusion_runs_only_where_it_may():
    x = Tensor(np.random.default_rng(3).standard_normal((2, 2, 8, 8)).astype(np.float32))
    from bitnet.ops.norm_pool import BatchNormMaxPool

    def fused(net):
        y = net(x)
        node = y._ctx.parents[0]._ctx  # Flatten's input
        return isinstance(node, BatchNormMaxPool)
    assert fused(_net(True)) and fused(_net(False))
    assert not fused(_net(True).eval())
    assert not fused(_net(True, stride=1))
    assert fused(_net(True, k=3, ceil_mode=True))  # 6x6 maps: 3x3 windows tile them; ...
    net = _net(True, k=4, ceil_mode=True)  # ... 4x4 on 6x6 leaves a partial window
    assert not fused(net)
    net = _net(True)
    net[2].register_forward_hook(lambda *a: None)
    assert not fused(net)
    net = _net(True)
    net.fuse = False
    assert not fused(net)


def test_fused_momentum_none_counts_batches_once():
    net = _net(True)
    net[1].momentum = None
    x = Tensor(np.random.default_rng(4).standard_normal((2, 2, 8, 8)).astype(np.float32))
    net(x)
    net(x)
    assert int(net[1].num_batches_tracked) == 2
