"""bitnet.kernels.table_rows: the vector loop summing eight picked table rows per output row."""
from __future__ import annotations

import numba as nb
import numpy as np
import pytest
from numba.core.errors import TypingError

from bitnet.kernels.table_rows import GROUPS, add_table_rows


@nb.njit
def _first(idx, g0, k0, k1, tables, stride, flat, o_size, o0):
    add_table_rows(idx, g0, k0, k1, tables, stride, flat, o_size, o0, 64, True)


@nb.njit
def _add(idx, g0, k0, k1, tables, stride, flat, o_size, o0):
    add_table_rows(idx, g0, k0, k1, tables, stride, flat, o_size, o0, 64, False)


def _reference(idx, g0, k0, k1, tables, stride, out, o0, width, first):
    """The same tree of additions in NumPy (one IEEE operation per step: the same bits)."""
    out = out.copy()
    for k in range(k0, k1):
        t = [tables[(16 * q + int(idx[g0 + q, k])) * stride:][:width] for q in range(GROUPS)]
        total = ((t[0] + t[1]) + (t[2] + t[3])) + ((t[4] + t[5]) + (t[6] + t[7]))
        out[k, o0:o0 + width] = total if first else out[k, o0:o0 + width] + total
    return out


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("first", [True, False])
def test_sums_of_picked_rows_are_the_tree_of_additions(dtype, first):
    rng = np.random.default_rng(0)
    stride, n_groups, k_size, o_size, o0 = 80, 11, 9, 150, 70  # table rows padded past the width
    tables = rng.standard_normal(GROUPS * 16 * stride).astype(dtype)
    idx_full = rng.integers(0, 16, (n_groups, k_size + 3)).astype(np.uint8)
    idx = idx_full[:, 3:]  # a column slice: strides other than the shape's
    out = rng.standard_normal((k_size, o_size)).astype(dtype)
    expected = _reference(idx, 2, 1, 8, tables, stride, out, o0, 64, first)
    (_first if first else _add)(idx, 2, 1, 8, tables, stride, out.reshape(-1), o_size, o0)
    np.testing.assert_array_equal(out, expected)  # rows 0 and 8, columns outside [70, 134) untouched


def test_width_must_be_a_constant_multiple_of_the_lanes():
    @nb.njit
    def bad(idx, tables, flat):
        add_table_rows(idx, 0, 0, 1, tables, 48, flat, 48, 0, 40, True)

    with pytest.raises(TypingError, match="width must be a positive multiple of 16 for float32, got 40"):
        bad(np.zeros((8, 1), np.uint8), np.zeros(8 * 16 * 48, np.float32), np.zeros(48, np.float32))
