"""Channels-last kernels against the column-layout im2col and NumPy, outputs poisoned with NaN."""
from __future__ import annotations

import numpy as np
import pytest

from bitnet.kernels import im2col as K


@pytest.mark.parametrize("geom", [  # N, C, H, W, groups, KH, KW, SH, SW, PH, PW, DH, DW
    (2, 6, 7, 5, 1, 3, 2, 1, 2, 1, 0, 1, 2),
    (1, 8, 6, 6, 2, 3, 3, 2, 2, 2, 2, 1, 1),
    (3, 4, 5, 9, 4, 2, 3, 1, 1, 0, 1, 2, 1),
], ids=str)
def test_im2col_rows_is_a_permutation_of_the_column_layout(geom):
    n, c, h, w, g, kh, kw, sh, sw, ph, pw, dh, dw = geom
    x = np.random.default_rng(sum(geom)).standard_normal((n, c, h, w))
    oh, ow = (K.conv_output_size(h, kh, sh, ph, dh), K.conv_output_size(w, kw, sw, pw, dw))
    cols = np.full((c * kh * kw, n * oh * ow), np.nan)
    K.im2col(x, kh, kw, sh, sw, ph, pw, dh, dw, oh, ow, cols)
    rows = np.full((n * oh * ow, c * kh * kw), np.nan)
    K.im2col_rows(np.ascontiguousarray(x.transpose(0, 2, 3, 1)), g, kh, kw, sh, sw, ph, pw, dh, dw, oh, ow, rows)
    cg = c // g
    # rows[r, ((g*KH + i)*KW + j)*Cg + c'] == cols[((g*Cg + c')*KH + i)*KW + j, r]
    expected = cols.reshape(g, cg, kh, kw, -1).transpose(4, 0, 2, 3, 1).reshape(n * oh * ow, -1)
    np.testing.assert_array_equal(rows, expected)


def test_transpose_inner_with_bias():
    a = np.random.default_rng(0).standard_normal((3, 5, 7)).astype(np.float32)
    bias = np.arange(7, dtype=np.float32)
    out = np.full((3, 7, 5), np.nan, np.float32)
    K.transpose_inner(a, bias, out)
    np.testing.assert_array_equal(out, a.transpose(0, 2, 1) + bias[None, :, None])



def test_col2im_rows_is_the_adjoint_of_im2col_rows():
    """<im2col(x), r> == <x, col2im(r)> for random x, r: the defining property of the adjoint."""
    rng = np.random.default_rng(4)
    n, h, w, c, g, k = 2, 6, 5, 4, 2, 3
    args = (g, k, k, 2, 1, 1, 1, 1, 1)
    oh, ow = K.conv_output_size(h, k, 2, 1, 1), K.conv_output_size(w, k, 1, 1, 1)
    x = rng.standard_normal((n, h, w, c))
    r = rng.standard_normal((n * oh * ow, c * k * k))
    rows = np.full(r.shape, np.nan)
    K.im2col_rows(x, *args, oh, ow, rows)
    back = np.full(x.shape, np.nan)
    K.col2im_rows(r, *args, oh, ow, back)
    assert np.isclose(np.vdot(rows, r), np.vdot(x, back), rtol=1e-12)


@pytest.mark.parametrize("shape", [(2, 130, 127), (1, 16, 1024), (3, 1024, 17), (2, 15, 40), (1, 3, 2),
                                   (2, 32, 48)], ids=str)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("layout", ["C", "leading axes swapped", "F"])
def test_transpose_inner_sizes_and_layouts(shape, dtype, layout):
    """Whole tiles, partial tiles at either edge, or none; rows contiguous with other strides
    elsewhere (the tiles still apply), or not contiguous (scalar moves): against NumPy."""
    rng = np.random.default_rng(sum(shape))
    a = rng.standard_normal(shape).astype(dtype)
    if layout == "leading axes swapped":
        a = np.ascontiguousarray(a.transpose(1, 0, 2)).transpose(1, 0, 2)
    elif layout == "F":
        a = np.asfortranarray(a)
    bias = rng.standard_normal(shape[2]).astype(dtype)
    out = np.full((shape[0], shape[2], shape[1]), np.nan, dtype)
    K.transpose_inner(a, bias, out)
    np.testing.assert_array_equal(out, a.transpose(0, 2, 1) + bias[None, :, None])


def test_transpose_inner_of_mixed_dtypes_promotes_as_numpy():
    rng = np.random.default_rng(7)
    a = rng.standard_normal((2, 40, 33)).astype(np.float32)
    bias = rng.standard_normal(33)  # float64
    out = np.full((2, 33, 40), np.nan)
    K.transpose_inner(a, bias, out)
    np.testing.assert_array_equal(out, a.transpose(0, 2, 1) + bias[None, :, None])


@pytest.mark.parametrize("shape", [(6, 2, 3, 3), (8, 5, 1, 1), (4, 3, 2, 5), (512, 512, 3, 3)], ids=str)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_weights_to_rows_back_and_by_tap_are_the_strided_numpy_moves(shape, dtype):
    w = np.random.default_rng(sum(shape)).standard_normal(shape).astype(dtype)
    n_out = shape[0]
    rows = np.full((w[0].size, n_out), np.nan, dtype)
    assert K.weights_to_rows(w, rows) is rows
    np.testing.assert_array_equal(rows, w.transpose(2, 3, 1, 0).reshape(-1, n_out))
    back = np.full(shape, np.nan, dtype)
    assert K.weights_from_rows(rows, back) is back
    np.testing.assert_array_equal(back, w)
    by_tap = np.full((n_out, w[0].size), np.nan, dtype)
    assert K.weights_by_tap(w, by_tap) is by_tap
    np.testing.assert_array_equal(by_tap, w.transpose(0, 2, 3, 1).reshape(n_out, -1))


@pytest.mark.parametrize("geom", [  # N, C, H, W, groups, KH, KW, SH, SW, PH, PW, DH, DW
    (2, 70, 5, 4, 1, 3, 3, 1, 1, 1, 1, 1, 1),      # two words a pixel, the second one partial
    (1, 16, 6, 6, 2, 3, 2, 2, 1, 2, 0, 1, 2),
    (3, 128, 3, 5, 1, 1, 1, 1, 1, 0, 0, 1, 1),
    (2, 12, 4, 4, 4, 2, 2, 1, 1, 1, 1, 1, 1),      # 3 channels a group
], ids=str)
@pytest.mark.parametrize("pad_value", [1.0, -1.0, 0.0])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_im2col_rows_bits_is_im2col_rows_of_the_signs(geom, pad_value, dtype):
    from bitnet.kernels import bitpack
    n, c, h, w, g, kh, kw, sh, sw, ph, pw, dh, dw = geom
    x = np.where(np.random.default_rng(sum(geom)).standard_normal((n, c, h, w)) < 0, -1.0, 1.0).astype(dtype)
    oh, ow = (K.conv_output_size(h, kh, sh, ph, dh), K.conv_output_size(w, kw, sw, pw, dw))
    expected = np.full((n * oh * ow, c * kh * kw), np.nan, dtype)
    K.im2col_rows(np.ascontiguousarray(x.transpose(0, 2, 3, 1)), g, kh, kw, sh, sw, ph, pw, dh, dw, oh, ow,
                  expected, pad_value)
    rows = np.full_like(expected, np.nan)
    K.im2col_rows_bits(bitpack.pack_nchw(x.astype(np.float32), g), c, kh, kw, sh, sw, ph, pw, dh, dw, oh, ow,
                       rows, pad_value)
    np.testing.assert_array_equal(rows, expected)
