"""bitnet.kernels.sign_tables: sign nibbles from packed bits, and R^T G by table lookup."""
from __future__ import annotations

import numba
import numpy as np
import pytest

from bitnet.kernels import bitpack
from bitnet.kernels import im2col as K
from bitnet.kernels import sign_tables as S
from tests.sign_table_bounds import tables_bound


def _nibbles(r):
    """The reference: bit q of idx[g, k] set where r[4g + q, k] < 0; missing rows read as +1."""
    idx = np.zeros((S.groups_of(r.shape[0]), r.shape[1]), np.uint8)
    for q in range(4):
        part = r[q::4]
        idx[:part.shape[0]] |= (part < 0).astype(np.uint8) << q
    return idx


GEOMS = [  # n, c, h, w, kh, kw, stride, padding, dilation, groups, pad_value
    (3, 5, 7, 6, 3, 3, 1, 1, 1, 1, 1.0),
    (2, 70, 9, 9, 3, 3, 2, 1, 1, 1, -1.0),     # channels past one word; the last group of rows short
    (5, 8, 6, 7, 3, 3, 1, 2, 2, 2, -1.0),      # groups, dilation, a wide border
    (2, 130, 5, 5, 1, 1, 1, 0, 1, 1, 1.0),     # 1x1, three words
    (1, 64, 4, 5, 3, 2, 1, 1, 1, 4, 1.0),      # batch 1, rectangular kernel, 4 groups
    (1, 3, 3, 3, 3, 3, 1, 0, 1, 1, 0.0),       # no border: pad_value 0 is fine
    (2, 20, 9, 9, 5, 5, 1, 2, 1, 1, -1.0),     # partial words with room after them in the row, and without
]


@pytest.mark.parametrize("geom", GEOMS, ids=str)
def test_lower_signs_gives_the_nibbles_of_the_float_lowering(geom):
    n, c, h, w, kh, kw, s, p, d, g, pad_value = geom
    rng = np.random.default_rng(sum(geom[:10]))
    x = np.where(rng.random((n, c, h, w)) < 0.5, -1.0, 1.0).astype(np.float32)
    bits = bitpack.pack_nchw(x, g)
    oh, ow = K.conv_output_size(h, kh, s, p, d), K.conv_output_size(w, kw, s, p, d)
    geometry = (kh, kw, s, s, p, p, d, d)
    rows = np.empty((n * oh * ow, c * kh * kw), np.float32)
    K.im2col_rows_bits(bits, c, *geometry, oh, ow, rows, pad_value)
    idx = np.full((S.groups_of(rows.shape[0]), rows.shape[1]), 0xAB, np.uint8)  # stale bytes are cleared
    S.lower_signs(bits, c, *geometry, oh, ow, pad_value, idx)
    np.testing.assert_array_equal(idx, _nibbles(rows))


def test_lower_signs_refuses_a_border_of_zeros():
    bits = bitpack.pack_nchw(np.ones((1, 4, 3, 3), np.float32), 1)
    idx = np.empty((3, 36), np.uint8)
    with pytest.raises(ValueError, match=r"pad_value=0\.0"):
        S.lower_signs(bits, 4, 3, 3, 1, 1, 1, 1, 1, 1, 3, 3, 0.0, idx)


SHAPES = [(1, 1, 1), (3, 5, 7), (7, 3, 64), (33, 40, 65), (130, 600, 128), (257, 70, 200), (64, 1100, 1000),
          (40, 30, 64), (96, 20, 192)]  # blocks of 128 and 64 columns with full blocks of 8 groups


@pytest.mark.parametrize("m,k,o", SHAPES, ids=str)
def test_signs_t_matmul_is_r_transpose_g_within_its_bound(m, k, o):
    rng = np.random.default_rng(m * k + o)
    r = np.where(rng.random((m, k)) < 0.5, -1.0, 1.0)
    g = rng.standard_normal((m, o)).astype(np.float32)
    out = np.full((k, o), np.nan, np.float32)
    S.signs_t_matmul(_nibbles(r), m, g, out)
    exact = r.T @ g.astype(np.float64)
    bound = tables_bound(m, np.abs(g.astype(np.float64)).sum(axis=0))[None, :]
    assert np.all(np.abs(out - exact) <= bound)


@pytest.mark.parametrize("m,k,o", SHAPES, ids=str)
def test_signs_t_matmul_of_small_integers_is_exact(m, k, o):
    """Integer terms whose sums stay below 2^24: every order of additions gives the exact result."""
    rng = np.random.default_rng(m + k * o)
    r = np.where(rng.random((m, k)) < 0.5, -1.0, 1.0)
    g = rng.integers(-50, 51, (m, o)).astype(np.float32)
    out = np.empty((k, o), np.float32)
    S.signs_t_matmul(_nibbles(r), m, g, out)
    np.testing.assert_array_equal(out, (r.T @ g).astype(np.float32))


def test_signs_t_matmul_on_column_slices_equals_it_on_copies():
    """A group of a grouped convolution passes column slices of idx and g."""
    rng = np.random.default_rng(3)
    m, k, o = 90, 40, 150
    r = np.where(rng.random((m, 2 * k)) < 0.5, -1.0, 1.0)
    g = rng.standard_normal((m, 2 * o)).astype(np.float32)
    idx = _nibbles(r)
    a, b = np.empty((k, o), np.float32), np.empty((k, o), np.float32)
    S.signs_t_matmul(idx[:, k:], m, g[:, o:], a)
    S.signs_t_matmul(np.ascontiguousarray(idx[:, k:]), m, np.ascontiguousarray(g[:, o:]), b)
    np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("o", [70, 200])
def test_signs_t_matmul_float64(o):
    rng = np.random.default_rng(4)
    r = np.where(rng.random((45, 30)) < 0.5, -1.0, 1.0)
    g = rng.standard_normal((45, o))
    out = np.full((30, o), np.nan)
    S.signs_t_matmul(_nibbles(r), 45, g, out)
    assert np.all(np.abs(out - r.T @ g) <= tables_bound(45, np.abs(g).sum(axis=0), np.float64)[None, :])


def test_signs_t_matmul_gives_the_same_bits_at_every_thread_count(monkeypatch):
    from bitnet.kernels import threads
    monkeypatch.setattr(threads, "MIN_PARALLEL_WORK", 1)  # split even this small product
    rng = np.random.default_rng(5)
    m, k, o = 301, 1300, 200  # 3 x 2 tasks
    idx = _nibbles(np.where(rng.random((m, k)) < 0.5, -1.0, 1.0))
    g = rng.standard_normal((m, o)).astype(np.float32)
    before = numba.get_num_threads()
    results = []
    try:
        for n in sorted({1, numba.config.NUMBA_NUM_THREADS}):
            numba.set_num_threads(n)
            out = np.empty((k, o), np.float32)
            S.signs_t_matmul(idx, m, g, out)
            results.append(out)
    finally:
        numba.set_num_threads(before)
    for other in results[1:]:
        np.testing.assert_array_equal(results[0], other)


def test_signs_t_matmul_says_what_does_not_fit():
    with pytest.raises(ValueError, match=r"idx \(2, 5\), g \(7, 3\) and out \(4, 3\) do not fit 7 rows"):
        S.signs_t_matmul(np.zeros((2, 5), np.uint8), 7, np.zeros((7, 3), np.float32), np.zeros((4, 3), np.float32))


@pytest.mark.parametrize("n,k", [(1, 1), (6, 70), (128, 1024), (0, 5)])
def test_row_signs_are_the_nibbles_of_a_sign_matrix(n, k):
    a = np.where(np.random.default_rng(n + k).random((n, k)) < 0.5, -1.0, 1.0).astype(np.float32)
    idx = np.full((S.groups_of(n), k), 0xFF, np.uint8)
    S.row_signs(a, idx)
    np.testing.assert_array_equal(idx, _nibbles(a))
    with pytest.raises(ValueError, match=r"row_signs: idx \(9, 9\) does not fit a"):
        S.row_signs(a, np.zeros((9, 9), np.uint8))
