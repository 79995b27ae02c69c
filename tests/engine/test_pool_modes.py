"""Pooling's ``ceil_mode`` and ``count_include_pad`` (PyTorch's semantics) against a NumPy reference.

The reference pads explicitly: the input padded with P zeros (and, in ceil mode, with zeros beyond the
padded border for the windows that hang over it), a mask of the padded input (ones on the input and
its padding) and a mask of the input alone. A window's average is its sum over the padded input
divided by the sum of the padded-input mask (count_include_pad) or of the input mask; a max takes
only the input positions. Output sizes are PyTorch's, checked by hand against torch 2.13.
"""
import os
import sys

import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bitnet_gradcheck import gradcheck  # noqa: E402

import bitnet.functional as F  # noqa: E402
import bitnet.nn as nn  # noqa: E402
from bitnet import Tensor  # noqa: E402

# H, W, kernel, stride, padding, expected (OH, OW) in ceil mode (torch.nn.functional.avg_pool2d)
CASES = [
    (5, 5, 2, 2, 0, (3, 3)),
    (6, 7, 3, 2, 1, (4, 4)),
    (2, 3, 3, 2, 1, (2, 2)),
    (7, 5, (3, 2), (2, 3), (1, 1), (4, 2)),  # the last column window would start in the padding
    (4, 4, 2, 2, 1, (3, 3)),  # the last window would start in the padding: dropped (not 4)
    (6, 6, 2, 2, 0, (3, 3)),  # exact tiling: ceil = floor
    (9, 8, 3, 3, 1, (4, 3)),
]


def _pairs(*vals):
    return [(v, v) if isinstance(v, int) else tuple(v) for v in vals]


def _reference(x, k, s, p, oh, ow, mode):
    (kh, kw), (sh, sw), (ph, pw) = _pairs(k, s, p)
    n, c, h, w = x.shape
    big_h, big_w = (oh - 1) * sh + kh, (ow - 1) * sw + kw      # rows/cols the windows reach
    xp = np.zeros((n, c, max(big_h, h + 2 * ph), max(big_w, w + 2 * pw)))
    xp[:, :, ph:ph + h, pw:pw + w] = x
    inside = np.zeros(xp.shape[2:])
    inside[ph:ph + h, pw:pw + w] = 1
    padded = np.zeros(xp.shape[2:])
    padded[:h + 2 * ph, :w + 2 * pw] = 1
    out = np.empty((n, c, oh, ow))
    for oy in range(oh):
        for ox in range(ow):
            win = np.s_[oy * sh:oy * sh + kh, ox * sw:ox * sw + kw]
            if mode == "max":
                vals = np.where(inside[win] > 0, xp[(...,) + win], -np.inf)
                out[:, :, oy, ox] = vals.max(axis=(2, 3))
            else:
                den = (padded if mode == "avg_include_pad" else inside)[win].sum()
                out[:, :, oy, ox] = xp[(...,) + win].sum(axis=(2, 3)) / den
    return out


@pytest.mark.parametrize("mode", ["max", "avg_include_pad", "avg_exclude_pad"])
@pytest.mark.parametrize("case", CASES, ids=str)
@pytest.mark.parametrize("ceil_mode", [False, True], ids=["floor", "ceil"])
def test_pooling_modes_against_reference(case, mode, ceil_mode):
    h, w, k, s, p, ceil_shape = case
    x = np.random.default_rng(h * 10 + w).standard_normal((2, 3, h, w))
    (kh, kw), (sh, sw), (ph, pw) = _pairs(k, s, p)
    shape = ceil_shape if ceil_mode else ((h + 2 * ph - kh) // sh + 1, (w + 2 * pw - kw) // sw + 1)

    def fn(t):
        if mode == "max":
            return F.max_pool2d(t, k, s, p, ceil_mode=ceil_mode)
        return F.avg_pool2d(t, k, s, p, ceil_mode=ceil_mode, count_include_pad=mode == "avg_include_pad")

    y = fn(Tensor(x))
    assert y.shape == (2, 3) + shape
    # float64 sums of at most 6 terms and one division: within a few ulp of the reference
    np.testing.assert_allclose(y.data, _reference(x, k, s, p, *shape, mode), rtol=1e-14, atol=1e-15)
    gradcheck(fn, [x])


def test_torch_values_by_hand():
    """The numbers torch 2.13 prints for these calls (ceil-mode overhang, padding excluded)."""
    x = Tensor(np.array([[[[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]]]], np.float32))
    np.testing.assert_array_equal(F.avg_pool2d(x, 2, ceil_mode=True).data.reshape(-1), [3.0, 4.5])
    np.testing.assert_array_equal(F.avg_pool2d(x, 2, padding=1, count_include_pad=False).data.reshape(-1),
                                  [1.0, 2.5, 4.0, 5.5])
    np.testing.assert_allclose(F.avg_pool2d(x, 3, 2, 1, ceil_mode=True).data.reshape(-1),
                               [12 / 9, 16 / 9, 12 / 8, 11 / 6], rtol=1e-7)
    np.testing.assert_array_equal(F.max_pool2d(x, 2, ceil_mode=True).data.reshape(-1), [5.0, 6.0])


def test_default_modes_keep_their_bits():
    """Floor mode with padding counted is the old computation: float64 window sums times 1/(KH*KW)."""
    x = np.random.default_rng(3).standard_normal((2, 2, 7, 6)).astype(np.float32)
    y = F.avg_pool2d(Tensor(x), 3, 2, 1).data
    xp = np.pad(x.astype(np.float64), ((0, 0), (0, 0), (1, 1), (1, 1)))
    want = np.empty(y.shape, np.float64)
    for oy in range(y.shape[2]):
        for ox in range(y.shape[3]):
            acc = np.zeros(x.shape[:2])
            for i in range(3):
                for j in range(3):
                    acc += xp[:, :, 2 * oy + i, 2 * ox + j]
            want[:, :, oy, ox] = acc * (1.0 / 9)
    np.testing.assert_array_equal(y, want.astype(np.float32))


def test_layers_take_the_modes():
    x = Tensor(np.random.default_rng(4).standard_normal((1, 2, 5, 5)))
    assert nn.MaxPool2d(2, ceil_mode=True)(x).shape == (1, 2, 3, 3)
    assert nn.MaxPool2d(2)(x).shape == (1, 2, 2, 2)
    layer = nn.AvgPool2d(3, 2, 1, True, False)  # PyTorch's positional order
    assert (layer.ceil_mode, layer.count_include_pad) == (True, False)
    np.testing.assert_array_equal(layer(x).data, F.avg_pool2d(x, 3, 2, 1, ceil_mode=True, count_include_pad=False).data)
    assert "ceil_mode=True" in repr(layer) and "count_include_pad=False" in repr(layer)
    with pytest.raises(TypeError):
        nn.MaxPool2d(2, 2, 0, True)  # ceil_mode is keyword-only: PyTorch's 4th argument is dilation
