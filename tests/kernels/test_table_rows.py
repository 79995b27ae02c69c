"""bitnet.kernels.table_rows: building the half tables of signed sums, and summing picked rows."""
from __future__ import annotations

import numba as nb
import numpy as np
import pytest
from numba.core.errors import TypingError

from bitnet.kernels.table_rows import GROUPS, add_table_rows, build_table


@nb.njit
def _first(idx, g0, k0, k1, tables, stride, flat, o_size, o0):
    add_table_rows(idx, g0, k0, k1, tables, stride, flat, o_size, o0, 64, True)


@nb.njit
def _add(idx, g0, k0, k1, tables, stride, flat, o_size, o0):
    add_table_rows(idx, g0, k0, k1, tables, stride, flat, o_size, o0, 64, False)


@nb.njit
def _build(g, r0, rows, o0, tables, t_off, stride):
    build_table(g, r0, rows, o0, tables, t_off, stride, 32)


def _picked(tables, stride, q, b, width):
    """T[b] of group q: row b / 2 for an even b, minus row (b ^ 15) / 2 for an odd one."""
    row = tables[(8 * q + (b ^ 15 if b & 1 else b) // 2) * stride:][:width]
    return -row if b & 1 else row


def _reference(idx, g0, k0, k1, tables, stride, out, o0, width, first):
    """The same tree of additions in NumPy (one IEEE operation per step: the same bits)."""
    out = out.copy()
    for k in range(k0, k1):
        t = [_picked(tables, stride, q, int(idx[g0 + q, k]), width) for q in range(GROUPS)]
        total = ((t[0] + t[1]) + (t[2] + t[3])) + ((t[4] + t[5]) + (t[6] + t[7]))
        out[k, o0:o0 + width] = total if first else out[k, o0:o0 + width] + total
    return out


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("first", [True, False])
def test_sums_of_picked_rows_are_the_tree_of_additions(dtype, first):
    rng = np.random.default_rng(0)
    stride, n_groups, k_size, o_size, o0 = 80, 11, 9, 150, 70  # table rows padded past the width
    tables = rng.standard_normal(GROUPS * 8 * stride).astype(dtype)
    idx_full = rng.integers(0, 16, (n_groups, k_size + 3)).astype(np.uint8)
    idx = idx_full[:, 3:]  # a column slice: strides other than the shape's
    out = rng.standard_normal((k_size, o_size)).astype(dtype)
    expected = _reference(idx, 2, 1, 8, tables, stride, out, o0, 64, first)
    (_first if first else _add)(idx, 2, 1, 8, tables, stride, out.reshape(-1), o_size, o0)
    np.testing.assert_array_equal(out, expected)  # rows 0 and 8, columns outside [70, 134) untouched


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("r0,rows", [(4, 11), (8, 11), (8, 10), (8, 9)])  # 4, 3, 2 and 1 rows present
def test_a_table_holds_the_signed_sums_added_left_to_right(dtype, r0, rows):
    rng = np.random.default_rng(r0 + rows)
    g = rng.standard_normal((12, 100)).astype(dtype)[:, 3:]  # rows with a stride other than the width
    x = [g[r0 + r, 10:42] if r0 + r < rows else np.zeros(32, dtype) for r in range(4)]
    stride, t_off = 40, 17
    tables = np.full(t_off + 8 * stride, np.nan, dtype)
    _build(g, r0, rows, 10, tables, t_off, stride)
    for b in range(16):
        s = [(-1) ** (b >> r & 1) for r in range(4)]
        direct = ((s[0] * x[0] + s[1] * x[1]) + s[2] * x[2]) + s[3] * x[3]
        np.testing.assert_array_equal(_picked(tables[t_off:], stride, 0, b, 32), direct)
    assert np.isnan(tables[:t_off]).all()
    assert all(np.isnan(tables[t_off + j * stride + 32:t_off + (j + 1) * stride]).all() for j in range(8))


def test_width_must_be_a_constant_multiple_of_the_lanes():
    @nb.njit
    def bad(idx, tables, flat):
        add_table_rows(idx, 0, 0, 1, tables, 48, flat, 48, 0, 40, True)

    with pytest.raises(TypingError, match="width must be a positive multiple of 16 for float32, got 40"):
        bad(np.zeros((8, 1), np.uint8), np.zeros(8 * 8 * 48, np.float32), np.zeros(48, np.float32))
