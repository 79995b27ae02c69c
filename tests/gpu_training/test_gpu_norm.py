"""Batch norm on "cuda" (bitnet/gpu/ops/norm.py) against the CPU: the functional ops, the BatchNorm1d /
BatchNorm2d modules moved with ``model.to("cuda")`` (running statistics updated in the device buffers),
and the fused batch norm + max pool.

Tolerances. Only the order of the float64 sums differs from the CPU (Numba's reassociated loop
against NumPy's pairwise sums): float64 results agree to a few ulps of the sums, relative 1e-15 per
term, so rtol 1e-12 / atol 1e-12 (gradients are differences of O(1) terms: absolute). Float32 results
are float64 values rounded once to float32, so at most one float32 ulp apart (2^-23 relative, where
the float64 values straddle a rounding boundary): rtol 1e-6 / atol 1e-6.
"""
from __future__ import annotations

import numpy as np
import pytest

import bitnet
import bitnet.nn as nn
from bitnet.gpu.arrays import emulate, is_device_array, to_host
from bitnet.gpu.ops.norm import tiled_max_pool
from bitnet.kernels import pooling
from bitnet.ops.norm import batch_norm
from bitnet.ops.norm_pool import batch_norm_max_pool
from tests.gpu_training.compare import assert_same_on_both

TOL = {np.float64: dict(rtol=1e-12, atol=1e-12), np.float32: dict(rtol=1e-6, atol=1e-6)}


def _data(shape, dtype, seed=0, offset=3.0):
    rng = np.random.default_rng(seed)
    return (rng.standard_normal(shape) * 2 + offset).astype(dtype)  # |mean| > std: the shifted sums matter


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("shape", [(5, 3), (4, 3, 7), (3, 2, 5, 7), (2, 1, 1, 1)])
def test_batch_norm_train_matches_cpu(shape, dtype):
    c = shape[1]
    arrays = [_data(shape, dtype), _data((c,), dtype, 1, 1.0), _data((c,), dtype, 2, 0.0)]
    assert_same_on_both(lambda x, g, b: batch_norm(x, None, None, g, b, training=True, eps=1e-3),
                        arrays, **TOL[dtype])


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("shape", [(5, 3), (4, 3, 7), (3, 2, 5, 7)])
def test_batch_norm_eval_matches_cpu(shape, dtype):
    c = shape[1]
    rng = np.random.default_rng(4)
    stats = [rng.standard_normal(c).astype(dtype), (rng.random(c) + 0.5).astype(dtype)]
    arrays = [_data(shape, dtype), _data((c,), dtype, 1, 1.0), _data((c,), dtype, 2, 0.0)] + stats
    assert_same_on_both(lambda x, g, b, rm, rv: batch_norm(x, rm.data, rv.data, g, b, training=False),
                        arrays, grad_of=[True, True, True, False, False], **TOL[dtype])


def test_batch_norm_constant_channel_and_large_mean():
    """var = 0 (clamped, invstd = 1/sqrt(eps)) and a channel whose mean is 1e4 times its spread."""
    x = np.empty((6, 2, 3))
    x[:, 0] = 7.25
    x[:, 1] = 1e4 + np.random.default_rng(0).standard_normal((6, 3))
    assert_same_on_both(lambda x, g, b: batch_norm(x, None, None, g, b), [x, np.ones(2), np.zeros(2)],
                        rtol=1e-9, atol=1e-9)  # the 1e4 offset costs 4 decimal digits of the float64 sums


def _pair(cls, seed=0, **kw):
    """The same layer twice (random affine parameters): one stays on the CPU, one goes to "cuda"."""
    layers = []
    for _ in range(2):
        layer = cls(3, **kw)
        if layer.weight is not None:
            rng = np.random.default_rng(seed)
            layer.weight.data[...] = rng.random(3) + 0.5
            layer.bias.data[...] = rng.standard_normal(3)
        layers.append(layer)
    return layers


def _step(layer, x, w, device):
    """Forward and backward of sum(layer(x) * w) on ``device``; (out, dx[, dgamma, dbeta]) on the host."""
    xt = bitnet.Tensor(x, requires_grad=True, device=device)
    out = layer(xt)
    assert out.device == device
    (out * bitnet.Tensor(w, device=device)).sum().backward()
    grads = [xt.grad] + ([layer.weight.grad, layer.bias.grad] if layer.weight is not None else [])
    for p in layer.parameters():
        p.grad = None
    return [to_host(out.data)] + [to_host(g) for g in grads]


@pytest.mark.parametrize("cls,shape", [(nn.BatchNorm2d, (4, 3, 5, 6)), (nn.BatchNorm1d, (7, 3)),
                                       (nn.BatchNorm1d, (4, 3, 9))])
@pytest.mark.parametrize("kw", [{}, {"momentum": None}, {"momentum": 0.3, "affine": False},
                                {"track_running_stats": False}, {"eps": 1e-2, "momentum": 1.0}])
def test_batch_norm_modules_on_cuda_train_then_eval(cls, shape, kw):
    cpu, gpu = _pair(cls, **kw)
    rng = np.random.default_rng(7)
    with emulate():
        gpu.to("cuda")
        if gpu.track_running_stats:
            assert is_device_array(gpu.running_mean) and is_device_array(gpu.running_var)
        mean_buffer = gpu.running_mean
        for step in range(4):
            x = (rng.standard_normal(shape) * (step + 1) + step).astype(np.float32)
            w = rng.standard_normal(shape).astype(np.float32)
            for a, b in zip(_step(gpu, x, w, "cuda"), _step(cpu, x, w, "cpu")):
                np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6)
            if cpu.track_running_stats:  # updated in place, in the module's own device buffers
                assert gpu.running_mean is mean_buffer and is_device_array(gpu.running_mean)
                np.testing.assert_allclose(to_host(gpu.running_mean), cpu.running_mean, rtol=1e-6, atol=1e-7)
                np.testing.assert_allclose(to_host(gpu.running_var), cpu.running_var, rtol=1e-6, atol=1e-7)
                assert gpu.running_mean.dtype == cpu.running_mean.dtype == np.float32
                assert not np.allclose(cpu.running_mean, 0)  # the statistics did move
        if kw.get("momentum", 0.1) is None:
            assert int(to_host(gpu.num_batches_tracked)) == int(cpu.num_batches_tracked) == 4
        cpu.eval()
        gpu.eval()
        x = rng.standard_normal(shape).astype(np.float32)
        w = rng.standard_normal(shape).astype(np.float32)
        for a, b in zip(_step(gpu, x, w, "cuda"), _step(cpu, x, w, "cpu")):
            np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6)


def test_batch_norm_errors_are_clear_on_cuda():
    with emulate():
        layer = nn.BatchNorm2d(3).to("cuda")
        with pytest.raises(ValueError, match="more than one value per channel"):
            layer(bitnet.Tensor(np.ones((1, 3, 1, 1), np.float32), device="cuda"))
        with pytest.raises(ValueError, match=r"expects input \(N, C, H, W\) with C=3"):
            layer(bitnet.Tensor(np.ones((2, 4, 2, 2), np.float32), device="cuda"))
        x = bitnet.Tensor(np.random.default_rng(0).standard_normal((2, 3, 2, 2)), device="cuda")
        with pytest.raises(RuntimeError, match=r"running_mean .shape \(3,\). is on the cpu.*model.to\('cuda'\)"):
            batch_norm(x, np.zeros(3), np.ones(3), training=True)
        with pytest.raises(RuntimeError, match="running_mean .* is on the cpu"):
            batch_norm(x, np.zeros(3), np.ones(3), training=False)


def _pool_reference(z, kh, kw):
    n, c, h, w = z.shape
    out = np.empty((n, c, h // kh, w // kw), z.dtype)
    argmax = np.empty(out.shape, np.int32)
    pooling.max_pool_forward(np.ascontiguousarray(z), kh, kw, kh, kw, 0, 0, out, argmax)
    return out, argmax


@pytest.mark.parametrize("kernel", [(2, 2), (3, 2), (1, 3)])
def test_tiled_max_pool_picks_the_cpu_winner_with_ties_and_nans(kernel):
    rng = np.random.default_rng(1)
    z = rng.integers(0, 3, (2, 3, 7, 8)).astype(np.float32)  # many ties: the first maximum wins
    z[0, 0, rng.random((7, 8)) < 0.3] = np.nan  # NaNs: the last NaN of a window wins
    want, argmax = _pool_reference(z, *kernel)
    with emulate() as xp:
        out, tap = tiled_max_pool(xp.asarray(z), *kernel)
    kh, kw = kernel
    oh, ow = want.shape[2:]
    flat = ((np.arange(oh) * kh)[:, None] + to_host(tap) // kw) * z.shape[3] + (np.arange(ow) * kw)[None, :] \
        + to_host(tap) % kw
    np.testing.assert_array_equal(to_host(out), want)
    np.testing.assert_array_equal(flat, argmax)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("shape,kernel", [((3, 4, 6, 6), (2, 2)), ((2, 3, 7, 5), (2, 2)), ((2, 2, 6, 5), (3, 2))])
@pytest.mark.parametrize("act", [None, "tanh"])
def test_batch_norm_max_pool_matches_cpu(shape, kernel, act, dtype):
    rng = np.random.default_rng(2)
    x = rng.integers(-2, 3, shape).astype(dtype)  # ties inside windows: the gradient goes where the CPU sends it
    x[0] += rng.standard_normal(shape[1:]).astype(dtype)
    c = shape[1]
    arrays = [x, _data((c,), dtype, 1, 1.0), _data((c,), dtype, 2, 0.0)]
    assert_same_on_both(lambda x, g, b: batch_norm_max_pool(x, None, None, g, b, kernel=kernel, act=act),
                        arrays, **TOL[dtype])


def test_fused_sequential_on_cuda_updates_running_statistics():
    """BatchNorm2d -> Tanh -> MaxPool2d inside Sequential runs the fused op on "cuda" too."""
    def model():
        m = nn.Sequential(nn.BatchNorm2d(3), nn.Tanh(), nn.MaxPool2d(2))
        m[0].weight.data[...] = [0.5, 1.5, 2.0]
        return m
    cpu, gpu = model(), model()
    rng = np.random.default_rng(3)
    with emulate():
        gpu.to("cuda")
        for step in range(3):
            x = (rng.standard_normal((4, 3, 6, 7)) + step).astype(np.float32)
            w = rng.standard_normal((4, 3, 3, 3)).astype(np.float32)
            outs = []
            for m, device in ((cpu, "cpu"), (gpu, "cuda")):
                xt = bitnet.Tensor(x, requires_grad=True, device=device)
                y = m(xt)
                (y * bitnet.Tensor(w, device=device)).sum().backward()
                outs.append([to_host(y.data), to_host(xt.grad), to_host(m[0].weight.grad)])
                m[0].weight.grad = m[0].bias.grad = None
            for a, b in zip(*outs):
                np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(to_host(gpu[0].running_mean), cpu[0].running_mean, rtol=1e-6, atol=1e-7)
        np.testing.assert_allclose(to_host(gpu[0].running_var), cpu[0].running_var, rtol=1e-6, atol=1e-7)


def test_cuda_inputs_dispatch_to_these_classes():
    from bitnet.gpu import dispatch
    from bitnet.gpu.ops import norm as gpu
    from bitnet.ops.norm import BatchNormEval, BatchNormTrain
    from bitnet.ops.norm_pool import BatchNormMaxPool
    assert dispatch.implementation(BatchNormTrain) is gpu.BatchNormTrainGPU
    assert dispatch.implementation(BatchNormEval) is gpu.BatchNormEvalGPU
    assert dispatch.implementation(BatchNormMaxPool) is gpu.BatchNormMaxPoolGPU
