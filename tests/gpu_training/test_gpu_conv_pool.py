"""conv2d, max_pool2d and avg_pool2d on (emulated) "cuda" against the CPU's Numba kernels
(bitnet/gpu/ops/conv_pool.py): outputs and input gradients, every option, odd shapes."""
from __future__ import annotations

import numpy as np
import pytest

import bitnet
import bitnet.functional as F
from bitnet.gpu.arrays import emulate, to_host
from bitnet.gpu.ops import conv_pool as G
from tests.gpu_training.compare import assert_same_on_both

# Tolerances. conv2d sums K = Cg*KH*KW products per output (<= 72 here), and its gradients sum
# N*OH*OW (dW) or up to KH*KW*O/G (dx) products, in GEMM order on "cuda" and BLAS order on the CPU:
# the two orders differ by at most ~K * eps * sum|terms|. With inputs ~N(0, 1) that is below 1e-13
# for float64 (eps 2.2e-16) and 1e-4 for float32 (eps 1.2e-7); atol covers sums that cancel to ~0.
F64 = dict(rtol=1e-12, atol=1e-12)
F32 = dict(rtol=2e-5, atol=2e-5)


def _rand(shape, dtype=np.float64, seed=0):
    return np.random.default_rng(seed).standard_normal(shape).astype(dtype)


CONV_CASES = [
    # (N, C, H, W), (O, Cg, KH, KW), stride, padding, dilation, groups, bias
    ((1, 3, 7, 9), (4, 3, 3, 3), (1, 1), (0, 0), (1, 1), 1, True),
    ((2, 3, 7, 9), (5, 3, 3, 2), (2, 2), (1, 1), (1, 1), 1, True),
    ((2, 2, 9, 8), (3, 2, 3, 3), (2, 1), (2, 1), (2, 2), 1, False),
    ((3, 4, 6, 7), (6, 2, 3, 3), (1, 2), (1, 2), (1, 1), 2, True),
    ((2, 4, 7, 5), (4, 1, 3, 3), (1, 1), (1, 1), (1, 1), 4, True),  # depthwise
    ((2, 4, 7, 5), (8, 1, 2, 3), (2, 2), (0, 1), (2, 1), 4, False),  # depthwise, 2 outputs per channel
    ((2, 5, 5, 3), (3, 5, 1, 1), (1, 1), (0, 0), (1, 1), 1, True),  # 1x1
    ((1, 6, 5, 7), (4, 3, 1, 1), (2, 2), (1, 0), (1, 1), 2, False),  # 1x1, strided, padded, grouped
    ((2, 3, 4, 4), (2, 3, 4, 4), (1, 1), (0, 0), (1, 1), 1, True),  # kernel = input: one output
    ((2, 3, 6, 5), (4, 3, 1, 1), (1, 1), (1, 1), (1, 1), 1, False),  # padding beyond the kernel: dx crops g
    ((2, 2, 6, 7), (4, 1, 3, 3), (1, 1), (2, 1), (2, 1), 2, True),  # stride 1, dilated rows, grouped
    ((2, 3, 5, 6), (2, 3, 3, 3), (1, 1), (3, 0), (1, 1), 1, True),  # rows padded beyond, columns cropped
]


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("case", CONV_CASES)
def test_conv2d_matches_cpu(case, dtype):
    x_shape, w_shape, stride, padding, dilation, groups, bias = case
    arrays = [_rand(x_shape, dtype, 1), _rand(w_shape, dtype, 2)] + ([_rand(w_shape[:1], dtype, 3)] if bias else [])

    def fn(x, w, *b):
        return F.conv2d(x, w, b[0] if b else None, stride=stride, padding=padding, dilation=dilation, groups=groups)

    assert_same_on_both(fn, arrays, **(F64 if dtype == np.float64 else F32))


@pytest.mark.parametrize("grad_of", [[True, False, False], [False, True, True], [False, False, True]])
def test_conv2d_only_the_wanted_gradients(grad_of):
    arrays = [_rand((2, 4, 6, 5), seed=1), _rand((4, 2, 3, 3), seed=2), _rand((4,), seed=3)]
    assert_same_on_both(lambda x, w, b: F.conv2d(x, w, b, stride=2, padding=1, groups=2), arrays,
                        grad_of=grad_of, **F64)


def test_conv2d_functions_reusable_with_a_pad_value():
    """conv2d_forward / conv2d_backward with a +-1 border equal the zero-border convolution of the
    input padded explicitly with that value (what the binary convolution relies on)."""
    x, w, g = _rand((2, 4, 5, 6), seed=1), _rand((6, 2, 3, 3), seed=2), _rand((2, 6, 3, 3), seed=3)
    geo = ((2, 2), (1, 1), (1, 1), 2)
    xpad = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)), constant_values=-1.0)
    with emulate() as xp:
        dx, dw, dg = xp.asarray(x), xp.asarray(w), xp.asarray(g)
        y = G.conv2d_forward(dx, dw, None, *geo, pad_value=-1.0)
        ref = G.conv2d_forward(xp.asarray(xpad), dw, None, (2, 2), (0, 0), (1, 1), 2)
        np.testing.assert_allclose(to_host(y), to_host(ref), **F64)
        gx, gw, gb = G.conv2d_backward(dx, dw, dg, *geo, True, True, True, pad_value=-1.0)
        rx, rw, rb = G.conv2d_backward(xp.asarray(xpad), dw, dg, (2, 2), (0, 0), (1, 1), 2, True, True, True)
        np.testing.assert_allclose(to_host(gw), to_host(rw), **F64)
        np.testing.assert_allclose(to_host(gx), to_host(rx)[:, :, 1:-1, 1:-1], **F64)
        np.testing.assert_allclose(to_host(gb), to_host(g.sum(axis=(0, 2, 3))), **F64)
        none = G.conv2d_backward(dx, dw, dg, *geo, False, False, False)
        assert none == (None, None, None)


def test_conv2d_layer_on_cuda_matches_cpu():
    import bitnet.nn as nn
    layer = nn.Conv2d(3, 4, 3, stride=2, padding=1)
    x = _rand((2, 3, 9, 7), np.float32)
    out_cpu = layer(bitnet.Tensor(x)).data
    with emulate():
        layer.to("cuda")
        out = layer(bitnet.Tensor(x, device="cuda"))
        assert out.device == "cuda"
        np.testing.assert_allclose(to_host(out.data), out_cpu, **F32)
        layer.to("cpu")


def test_conv2d_errors_are_clear_on_cuda():
    with emulate():
        x = bitnet.Tensor(_rand((1, 3, 4, 4)), device="cuda")
        w = bitnet.Tensor(_rand((2, 3, 5, 5)), device="cuda")
        with pytest.raises(ValueError, match="does not fit"):
            F.conv2d(x, w)
        with pytest.raises(ValueError, match="channels"):
            F.conv2d(x, bitnet.Tensor(_rand((2, 2, 1, 1)), device="cuda"))
        with pytest.raises(RuntimeError, match="different devices"):
            F.conv2d(x, bitnet.Tensor(_rand((2, 3, 1, 1))))


# Pooling: "cuda" does the CPU's operations in the CPU's order (bitnet/gpu/ops/pool.py), so the
# outputs and gradients are compared for equality.
POOL_CASES = [
    # kernel, stride, padding, ceil_mode
    ((2, 2), None, (0, 0), False),
    ((3, 3), (2, 2), (1, 1), False),
    ((3, 2), (2, 1), (1, 0), True),
    ((2, 2), (2, 2), (0, 0), True),  # a partial window at the bottom / right edge
    ((3, 3), (1, 1), (1, 1), False),  # overlapping windows: gradients add up
    ((1, 1), (2, 2), (0, 0), False),
    ((4, 3), (3, 2), (2, 1), True),
]
POOL_SHAPES = [(1, 1, 5, 5), (2, 3, 7, 6)]


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("shape", POOL_SHAPES)
@pytest.mark.parametrize("case", POOL_CASES)
def test_max_pool2d_matches_cpu(case, shape, dtype):
    kernel, stride, padding, ceil_mode = case
    x = _rand(shape, dtype)
    assert_same_on_both(lambda t: F.max_pool2d(t, kernel, stride, padding, ceil_mode), [x], 0, 0, exact=True)


@pytest.mark.filterwarnings("ignore:invalid value encountered")  # inf - inf in the test's loss, not the op
@pytest.mark.parametrize("case", POOL_CASES)
def test_max_pool2d_ties_nans_and_infinities_route_like_cpu(case):
    """Ties (the first maximum wins), NaN (the last NaN wins) and -inf (still inside the input, so it
    wins over the padding) route the gradient to the same input as on the CPU."""
    kernel, stride, padding, ceil_mode = case
    rng = np.random.default_rng(5)
    x = rng.integers(-2, 2, size=(2, 2, 7, 6)).astype(np.float64)  # many ties
    x[0, 0, 2, 3] = x[0, 0, 3, 3] = x[1, 1, 0, 0] = np.nan
    x[0, 1] = -np.inf  # a whole plane of -inf: windows at the border still pick an input position
    x[1, 0, 0, :] = -np.inf
    assert_same_on_both(lambda t: F.max_pool2d(t, kernel, stride, padding, ceil_mode), [x], 0, 0, exact=True)


@pytest.mark.parametrize("count_include_pad", [True, False])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("shape", POOL_SHAPES)
@pytest.mark.parametrize("case", POOL_CASES)
def test_avg_pool2d_matches_cpu(case, shape, dtype, count_include_pad):
    kernel, stride, padding, ceil_mode = case
    x = _rand(shape, dtype)
    assert_same_on_both(lambda t: F.avg_pool2d(t, kernel, stride, padding, ceil_mode, count_include_pad), [x],
                        0, 0, exact=True)


def test_pool_layers_on_cuda_and_their_errors():
    import bitnet.nn as nn
    x = _rand((2, 3, 7, 7), np.float32)
    for layer in (nn.MaxPool2d(3, 2, 1, ceil_mode=True), nn.AvgPool2d(2, ceil_mode=True, count_include_pad=False)):
        expected = layer(bitnet.Tensor(x)).data
        with emulate():
            out = layer(bitnet.Tensor(x, device="cuda"))
            assert out.device == "cuda"
            np.testing.assert_array_equal(to_host(out.data), expected)
    with emulate():
        t = bitnet.Tensor(_rand((1, 1, 3, 3)), device="cuda")
        with pytest.raises(ValueError, match="does not fit"):
            F.max_pool2d(t, 5)
        with pytest.raises(ValueError, match="at most half"):
            F.avg_pool2d(t, 2, padding=2)
        with pytest.raises(ValueError, match="4-D"):
            F.max_pool2d(bitnet.Tensor(_rand((3, 3)), device="cuda"), 2)


def test_conv_pool_chain_and_global_average_pool():
    """conv -> max pool -> avg pool -> GlobalAvgPool2d (``F.mean`` over H, W): gradients flow through
    the whole chain on "cuda" (conv's GEMM order sets the tolerance, F64 above)."""
    import bitnet.nn as nn
    gap = nn.GlobalAvgPool2d()

    def fn(x, w):
        y = F.max_pool2d(F.conv2d(x, w, padding=1, groups=2), 3, 2, 1, ceil_mode=True)
        return gap(F.avg_pool2d(y, 2, 1, count_include_pad=False))

    assert_same_on_both(fn, [_rand((2, 4, 9, 8), seed=1), _rand((6, 2, 3, 3), seed=2)], **F64)
