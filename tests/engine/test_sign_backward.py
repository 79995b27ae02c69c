"""bitnet.ops.sign_backward: a binary convolution's backward by table lookup against the float path.

With integer output gradients every sum is an exact integer in float32, whatever its order, so the
table lookup's gradients must equal the float path's exactly: any misplaced sign, tap, channel or
image shows. (With float gradients they agree within the bounds of tests/sign_table_bounds.py:
tests/test_forward_on_bits.py.)"""
from __future__ import annotations

import numpy as np
import pytest

import bitnet.functional as F
from bitnet import Tensor
from bitnet.ops import conv_chunks as CC
from bitnet.ops import sign_backward
from bitnet.ops.binary import binary_conv2d

GEOMS = [  # n, c, h, w, o, (kh, kw), stride, padding, dilation, groups
    (1, 16, 5, 7, 8, (3, 3), (1, 1), (1, 1), (1, 1), 1),      # batch 1, odd sizes
    (3, 70, 9, 8, 12, (3, 3), (2, 2), (1, 1), (1, 1), 1),     # channels past one word, stride 2
    (2, 32, 8, 9, 10, (3, 2), (1, 2), (2, 1), (2, 1), 2),     # rectangular kernel, dilation, groups
    (2, 130, 4, 4, 6, (1, 1), (1, 1), (0, 0), (1, 1), 1),     # 1x1, three words
    (5, 64, 6, 6, 64, (3, 3), (1, 1), (1, 1), (1, 1), 4),     # 4 groups of 16 channels
    (2, 16, 6, 5, 7, (5, 5), (1, 1), (0, 0), (1, 1), 1),      # no border: any pad_value
    (3, 16, 8, 8, 192, (3, 3), (1, 1), (1, 1), (1, 1), 1),    # 192 filters, 3 x 64 pixels: 128 + 64 columns
]


def _pm1(rng, shape):
    return np.where(rng.random(shape) < 0.5, -1.0, 1.0).astype(np.float32)


def _float_path(x, w, b, g, stride, padding, dilation, groups, pad_value):
    """The float path's gradients: conv2d of the explicitly padded input (border = pad_value)."""
    xt, wt, bt = (Tensor(a.copy(), requires_grad=True) for a in (x, w, b))
    (ph, pw) = padding
    xp = F.pad(xt, ((ph, ph), (pw, pw)), value=pad_value) if (ph or pw) else xt
    y = F.conv2d(xp, wt, bt, stride=stride, padding=0, dilation=dilation, groups=groups)
    y.backward(g)
    return y.data, xt.grad, wt.grad, bt.grad


@pytest.mark.parametrize("per", [None, 1, 2])
@pytest.mark.parametrize("pad_value", [1.0, -1.0])
@pytest.mark.parametrize("geom", GEOMS, ids=str)
def test_integer_gradients_equal_the_float_paths_exactly(geom, pad_value, per, monkeypatch):
    n, c, h, w_, o, k, s, p, d, groups = geom
    monkeypatch.setattr(CC, "images_per_chunk", lambda n_img, row_bytes: per)  # whole batch, or chunks
    calls = []
    real = sign_backward.backward
    monkeypatch.setattr(sign_backward, "backward", lambda *a, **kw: calls.append(a[7]) or real(*a, **kw))
    rng = np.random.default_rng(sum(map(int, np.ravel(geom[:5]))))
    x, w = _pm1(rng, (n, c, h, w_)), _pm1(rng, (o, c // groups) + k)
    b = rng.integers(-3, 4, o).astype(np.float32)
    xt, wt, bt = (Tensor(a.copy(), requires_grad=True) for a in (x, w, b))
    y = binary_conv2d(xt, wt, bt, s, p, d, groups, pad_value)
    g = rng.integers(-20, 21, y.shape).astype(np.float32)
    y.backward(g)
    assert calls == [per if per is not None else n]
    ref = _float_path(x, w, b, g, s, p, d, groups, pad_value)
    for got, want in zip((y.data, xt.grad, wt.grad, bt.grad), ref):
        np.testing.assert_array_equal(got, want)


def test_a_zero_border_takes_the_float_gemms():
    """pad_value 0 with padding: the lowered input holds zeros, which have no sign bit."""
    rng = np.random.default_rng(0)
    x, w = Tensor(_pm1(rng, (2, 16, 5, 5)), requires_grad=True), Tensor(_pm1(rng, (4, 16, 3, 3)), requires_grad=True)
    calls = []
    real = sign_backward.backward
    try:
        sign_backward.backward = lambda *a, **kw: calls.append(1) or real(*a, **kw)
        binary_conv2d(x, w, None, (1, 1), (1, 1), (1, 1), 1, 0.0).sum().backward()
    finally:
        sign_backward.backward = real
    assert calls == [] and w.grad is not None and x.grad is not None


def test_only_the_wanted_gradients_are_computed():
    rng = np.random.default_rng(1)
    x = Tensor(_pm1(rng, (2, 16, 5, 5)))  # no gradient wanted for the input
    w = Tensor(_pm1(rng, (4, 16, 3, 3)), requires_grad=True)
    binary_conv2d(x, w, None, (1, 1), (1, 1), (1, 1), 1, 1.0).sum().backward()
    assert x.grad is None and w.grad is not None


def test_an_empty_batch_gives_zero_weight_gradients():
    x = Tensor(np.ones((0, 16, 5, 5), np.float32), requires_grad=True)
    w = Tensor(np.ones((4, 16, 3, 3), np.float32), requires_grad=True)
    binary_conv2d(x, w, None, (1, 1), (1, 1), (1, 1), 1, 1.0).sum().backward()
    assert x.grad.shape == (0, 16, 5, 5)
    np.testing.assert_array_equal(w.grad, np.zeros((4, 16, 3, 3), np.float32))
