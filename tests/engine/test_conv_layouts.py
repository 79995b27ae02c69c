"""conv2d's two lowerings (column layout; channels-last rows) give the same forward and backward,
each against an independent reference, on awkward geometries."""
from __future__ import annotations

import os
import sys

import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bitnet_gradcheck import gradcheck  # noqa: E402
import bitnet_np_reference as R  # noqa: E402

import bitnet.functional as F  # noqa: E402
from bitnet import Tensor  # noqa: E402
from bitnet.ops import conv as C  # noqa: E402

GEOMS = [  # (N, C, H, W, O, K, stride, padding, dilation, groups)
    (3, 4, 9, 7, 6, 3, 1, 1, 1, 1),
    (1, 4, 11, 8, 6, 3, 2, 1, 1, 2),
    (2, 3, 8, 9, 4, 2, 1, 0, 2, 1),
    (2, 4, 6, 6, 4, 3, 1, 2, 1, 4),   # depthwise
    (5, 2, 5, 5, 3, 5, 2, 2, 1, 1),   # kernel as large as the input
]

LAYOUTS = {"rows": 1, "columns": 10 ** 9}  # value of ROWS_MIN_CHANNELS that selects each


def _conv(x, w, b, geom, layout, monkeypatch):
    monkeypatch.setattr(C, "ROWS_MIN_CHANNELS", LAYOUTS[layout])
    _, _, _, _, _, _, s, p, d, g = geom
    xt, wt, bt = (Tensor(a.copy(), requires_grad=True) for a in (x, w, b))
    y = F.conv2d(xt, wt, bt, stride=s, padding=p, dilation=d, groups=g)
    assert y._ctx.rows == (layout == "rows")
    y.backward(np.random.default_rng(1).standard_normal(y.shape).astype(x.dtype))
    return y.data, xt.grad, wt.grad, bt.grad


def _data(geom, dtype):
    n, c, h, w_, o, k, s, p, d, g = geom
    rng = np.random.default_rng(sum(geom))
    return (rng.standard_normal((n, c, h, w_)).astype(dtype),
            rng.standard_normal((o, c // g, k, k)).astype(dtype), rng.standard_normal(o).astype(dtype))


@pytest.mark.parametrize("geom", GEOMS, ids=str)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_layouts_agree_and_match_reference(geom, dtype, monkeypatch):
    x, w, b = _data(geom, dtype)
    rows = _conv(x, w, b, geom, "rows", monkeypatch)
    cols = _conv(x, w, b, geom, "columns", monkeypatch)
    tol = dict(rtol=1e-5, atol=1e-5) if dtype == np.float32 else dict(rtol=1e-12, atol=1e-12)
    for a, c in zip(rows, cols):
        np.testing.assert_allclose(a, c, **tol)
    _, _, _, _, _, _, s, p, d, g = geom
    ref = R.conv2d_ref(x.astype(np.float64), w.astype(np.float64), b.astype(np.float64), (s, s), (p, p), (d, d), g)
    np.testing.assert_allclose(rows[0], ref, **tol)


@pytest.mark.parametrize("geom", [GEOMS[1], GEOMS[3]], ids=str)
def test_rows_layout_gradient_matches_central_differences(geom, monkeypatch):
    monkeypatch.setattr(C, "ROWS_MIN_CHANNELS", 1)
    x, w, b = _data(geom, np.float64)
    _, _, _, _, _, _, s, p, d, g = geom
    gradcheck(lambda x_, w_, b_: F.conv2d(x_, w_, b_, stride=s, padding=p, dilation=d, groups=g), [x, w, b])


def test_layout_is_chosen_by_channels_per_group():
    rng = np.random.default_rng(0)
    x = Tensor(rng.standard_normal((2, 32, 6, 6)).astype(np.float32))
    for groups, rows in ((1, True), (2, True), (4, False)):
        w = Tensor(rng.standard_normal((8, 32 // groups, 3, 3)).astype(np.float32), requires_grad=True)
        assert F.conv2d(x, w, groups=groups)._ctx.rows is rows
