"""NaN propagation through max pooling and max/min reductions, and x ** 0 at x = 0 (PyTorch's results).

Max pooling: a window holding a NaN outputs NaN, and the gradient goes to the NaN's position (the
last NaN in row-major scan order when there are several, as PyTorch's ``(v > best) || isnan(v)``
rule). ``max``/``min`` reductions: NaN in the forward, the gradient split equally between the NaN
positions of each reduced slice (as ``torch.max(x)``'s backward).
"""
import os
import sys

import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bitnet_gradcheck import gradcheck  # noqa: E402

import bitnet.functional as F  # noqa: E402
from bitnet import Tensor  # noqa: E402
from bitnet.kernels.im2col import conv_output_size  # noqa: E402

NAN = np.nan


def _pool_reference(x, k, s, p):
    """Max over each window clipped to the input (NumPy's max propagates NaN) and the flat index of
    the winner: the last NaN in scan order if the window has one, else the first maximum."""
    n, c, h, w = x.shape
    oh, ow = conv_output_size(h, k, s, p, 1), conv_output_size(w, k, s, p, 1)
    out = np.empty((n, c, oh, ow), x.dtype)
    arg = np.empty((n, c, oh, ow), np.int64)
    for i in np.ndindex(n, c, oh, ow):
        y0, x0 = i[2] * s - p, i[3] * s - p
        ys, xs = range(max(y0, 0), min(y0 + k, h)), range(max(x0, 0), min(x0 + k, w))
        idx = [yy * w + xx for yy in ys for xx in xs]
        vals = x[i[0], i[1]].reshape(-1)[idx]
        out[i] = vals.max()
        nans = np.flatnonzero(np.isnan(vals))
        arg[i] = idx[nans[-1]] if nans.size else idx[int(np.argmax(vals))]
    return out, arg


@pytest.mark.parametrize("k, s, p", [(2, 2, 0), (3, 2, 1), (2, 1, 0), (3, 3, 1)],
                         ids=["tiled-fast-path", "3x3s2p1", "2x2s1", "3x3s3p1"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_max_pool_propagates_nan_and_routes_gradient_to_it(k, s, p, dtype):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 3, 7, 8)).astype(dtype)
    x[0, 0, 0, 1] = NAN              # not first in its window
    x[0, 1, 3, 3] = NAN              # the last element of a 2x2 window
    x[1, 2, 4, 4] = x[1, 2, 5, 5] = NAN  # two NaNs in one window: the last one wins
    x[1, 0, 6, 7] = NAN              # bottom-right corner
    t = Tensor(x, requires_grad=True)
    y = F.max_pool2d(t, k, s, p)
    want, arg = _pool_reference(x, k, s, p)
    np.testing.assert_array_equal(y.data, want)  # assert_array_equal treats NaN == NaN
    assert np.isnan(y.data).sum() == np.isnan(want).sum() > 0
    g = rng.standard_normal(y.shape).astype(dtype)
    y.backward(g)
    expect = np.zeros_like(x)
    for i in np.ndindex(*arg.shape):
        expect[i[0], i[1]].reshape(-1)[arg[i]] += g[i]
    np.testing.assert_array_equal(t.grad, expect)


def test_max_pool_reported_case():
    """The example of the issue: NaN not first in its window was dropped (PyTorch: [nan, 7, 13, 15])."""
    x = np.arange(16, dtype=np.float32).reshape(1, 1, 4, 4)
    x[0, 0, 1, 1] = NAN
    np.testing.assert_array_equal(F.max_pool2d(Tensor(x), 2).data.reshape(-1), [NAN, 7, 13, 15])


@pytest.mark.parametrize("op", ["max", "min"])
def test_reductions_propagate_nan_and_route_gradient_to_nans(op):
    x = np.array([[1.0, NAN, 3.0, NAN],
                  [1.0, 2.0, 4.0, 4.0],
                  [NAN, -5.0, 0.5, 2.0]])
    t = Tensor(x, requires_grad=True)
    y = getattr(F, op)(t, axis=1)
    np.testing.assert_array_equal(y.data, [NAN, 4.0 if op == "max" else 1.0, NAN])
    y.backward(np.array([2.0, 3.0, 5.0]))
    want = np.zeros_like(x)
    want[0, [1, 3]] = 1.0            # two NaNs share the gradient 2
    if op == "max":
        want[1, [2, 3]] = 1.5        # a tie shares the gradient 3
    else:
        want[1, 0] = 3.0
    want[2, 0] = 5.0
    np.testing.assert_array_equal(t.grad, want)
    assert np.isfinite(t.grad).all()

    t = Tensor(x, requires_grad=True)  # the full reduction
    y = getattr(F, op)(t)
    assert np.isnan(y.data)
    y.backward()
    want = np.where(np.isnan(x), 1 / 3, 0.0)
    np.testing.assert_array_equal(t.grad, want)


def test_reductions_without_nan_unchanged():
    x = np.random.default_rng(1).permutation(24).reshape(2, 3, 4) / 7.0
    gradcheck(lambda t: F.max(t, axis=(0, 2)), [x])
    gradcheck(lambda t: F.min(t, axis=1, keepdims=True), [x])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_pow_zero_exponent_has_zero_gradient_everywhere(dtype):
    x = np.array([0.0, -0.0, 1.5, -2.0, np.inf], dtype)
    t = Tensor(x, requires_grad=True)
    y = t ** 0
    np.testing.assert_array_equal(y.data, np.ones_like(x))
    y.sum().backward()
    np.testing.assert_array_equal(t.grad, np.zeros_like(x))
    assert t.grad.dtype == dtype
    t = Tensor(x[:4], requires_grad=True)
    F.pow(t, 0.0).sum().backward()
    np.testing.assert_array_equal(t.grad, np.zeros(4, dtype))


def test_pow_other_exponents_at_zero_match_pytorch():
    t = Tensor(np.array([0.0, 2.0]), requires_grad=True)
    (t ** 1).sum().backward()
    np.testing.assert_array_equal(t.grad, [1.0, 1.0])
    t = Tensor(np.array([0.0, 2.0]), requires_grad=True)
    (t ** 2).sum().backward()
    np.testing.assert_array_equal(t.grad, [0.0, 4.0])
