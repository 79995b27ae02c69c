"""im2col / im2col_rows with a border value: the same matrix as lowering the input padded with that
value explicitly (padding 0); outputs poisoned with NaN."""
from __future__ import annotations

import numpy as np
import pytest

from bitnet.kernels import im2col as K


@pytest.mark.parametrize("pad_value", [1.0, -1.0, 0.0])
@pytest.mark.parametrize("geom", [  # N, C, H, W, groups, KH, KW, SH, SW, PH, PW, DH, DW
    (1, 3, 5, 4, 1, 3, 3, 1, 1, 1, 1, 1, 1),
    (2, 4, 7, 6, 2, 3, 2, 2, 1, 2, 1, 1, 2),
    (3, 1, 4, 9, 1, 2, 3, 1, 2, 1, 2, 2, 1),
], ids=str)
def test_padding_reads_as_pad_value(geom, pad_value):
    n, c, h, w, g, kh, kw, sh, sw, ph, pw, dh, dw = geom
    rng = np.random.default_rng(sum(geom))
    x = rng.standard_normal((n, c, h, w)).astype(np.float32)[:, :, :, ::-1]  # non-contiguous view
    xp = np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)), constant_values=pad_value)
    oh, ow = K.conv_output_size(h, kh, sh, ph, dh), K.conv_output_size(w, kw, sw, pw, dw)
    cols = np.full((c * kh * kw, n * oh * ow), np.nan, np.float32)
    K.im2col(np.ascontiguousarray(x), kh, kw, sh, sw, ph, pw, dh, dw, oh, ow, cols, pad_value)
    ref = np.full(cols.shape, np.nan, np.float32)
    K.im2col(xp, kh, kw, sh, sw, 0, 0, dh, dw, oh, ow, ref)
    np.testing.assert_array_equal(cols, ref)
    nhwc = lambda a: np.ascontiguousarray(a.transpose(0, 2, 3, 1))  # noqa: E731
    rows = np.full((n * oh * ow, c * kh * kw), np.nan, np.float32)
    K.im2col_rows(nhwc(x), g, kh, kw, sh, sw, ph, pw, dh, dw, oh, ow, rows, pad_value)
    ref = np.full(rows.shape, np.nan, np.float32)
    K.im2col_rows(nhwc(xp), g, kh, kw, sh, sw, 0, 0, dh, dw, oh, ow, ref)
    np.testing.assert_array_equal(rows, ref)
