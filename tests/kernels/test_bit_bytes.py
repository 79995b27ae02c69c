"""bitnet.kernels.bit_bytes: a word's bits OR-ed into 64 bytes at once."""
from __future__ import annotations

import numba as nb
import numpy as np
import pytest

from bitnet.kernels.bit_bytes import or_bit_bytes


@nb.njit
def _or(dst, at, word, r):
    or_bit_bytes(dst, at, word, r)


@pytest.mark.parametrize("r", range(8))
def test_bit_b_of_the_word_shifted_by_r_is_or_ed_into_byte_b(r):
    rng = np.random.default_rng(r)
    word = rng.integers(0, 2**64 - 1, dtype=np.uint64, endpoint=True)
    dst = rng.integers(0, 256, 70).astype(np.uint8)
    expected = dst.copy()
    bits = np.array([(int(word) >> b) & 1 for b in range(64)], np.uint8)
    expected[3:67] |= (bits << r).astype(np.uint8)
    _or(dst, 3, word, r)
    np.testing.assert_array_equal(dst, expected)  # bytes 0-2 and 67-69 untouched
