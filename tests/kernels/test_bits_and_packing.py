"""The bit convention (bitnet.kernels.bits) and the binarize-and-pack kernels against it."""
from __future__ import annotations

import numpy as np
import pytest

from bitnet.kernels import bitpack
from bitnet.kernels.bits import (pack_reference, popcount_reference, unpack_reference, words_for,
                                 xnor_dot_reference)


def _signs(x):
    return np.where(x >= 0, 1.0, -1.0).astype(np.float32)


def test_convention_by_hand():
    # bit 1 = -1, LSB first, zero packs as +1, padding bits 0
    x = np.array([[-1.0, 0.0, 2.0, -0.5] + [1.0] * 60 + [-3.0]], np.float32)  # K = 65
    words = pack_reference(x)
    assert words.dtype == np.uint64 and words.shape == (1, 2)
    assert int(words[0, 0]) == 0b1001 and int(words[0, 1]) == 1
    assert words_for(0) == 0 and words_for(64) == 1 and words_for(65) == 2


@pytest.mark.parametrize("k", [1, 63, 64, 65, 130, 577])
def test_reference_round_trip_and_dot(k):
    rng = np.random.default_rng(k)
    a, b = rng.standard_normal((5, k)).astype(np.float32), rng.standard_normal((7, k)).astype(np.float32)
    a[0, : min(k, 3)] = 0.0
    pa, pb = pack_reference(a), pack_reference(b)
    assert np.array_equal(unpack_reference(pa, k), _signs(a))
    if k % 64:  # padding bits are 0
        assert np.all(pa[:, -1] >> np.uint64(k % 64) == 0)
    assert np.array_equal(xnor_dot_reference(pa, pb, k), (_signs(a) @ _signs(b).T).astype(np.int32))
    assert np.array_equal(popcount_reference(np.array([0, 1, 2**64 - 1], np.uint64)), [0, 1, 64])


@pytest.mark.parametrize("shape", [(1, 1), (3, 63), (4, 64), (5, 65), (33, 200), (2, 1029)])
def test_pack_rows_matches_reference(shape):
    rng = np.random.default_rng(shape[1])
    x = rng.standard_normal(shape).astype(np.float32)
    x[0, 0] = 0.0
    x[-1, -1] = -0.0  # -0.0 >= 0: packs as +1
    out = np.full((shape[0], words_for(shape[1])), 0xDEADBEEF, np.uint64)  # poisoned
    assert bitpack.pack_rows(x, out=out) is out
    assert np.array_equal(out, pack_reference(x))


@pytest.mark.parametrize("n,c,h,w,groups", [(1, 1, 1, 1, 1), (2, 70, 5, 7, 1), (3, 70, 4, 3, 2), (1, 128, 3, 3, 1),
                                            (2, 6, 5, 5, 3), (1, 200, 2, 9, 2)])
def test_pack_nchw_matches_reference(n, c, h, w, groups):
    rng = np.random.default_rng(c + h)
    x = rng.standard_normal((n, c, h, w)).astype(np.float32)
    got = bitpack.pack_nchw(x, groups)
    ref = pack_reference(x.reshape(n, groups, c // groups, h, w).transpose(0, 3, 4, 1, 2), axis=-1)
    assert got.shape == (n, h, w, groups, words_for(c // groups))
    assert np.array_equal(got, ref)


def test_pack_errors_say_what_was_wrong():
    with pytest.raises(TypeError, match="float32 array with 2 dimensions, got float64"):
        bitpack.pack_rows(np.zeros((2, 3)))
    with pytest.raises(TypeError, match="got list"):
        bitpack.pack_nchw([[1.0]])
    with pytest.raises(ValueError, match="5 channels do not split into 2 groups"):
        bitpack.pack_nchw(np.zeros((1, 5, 2, 2), np.float32), 2)
    with pytest.raises(ValueError, match=r"out must be a C-contiguous uint64 array of shape \(2, 1\), got uint64 \(2, 2\)"):
        bitpack.pack_rows(np.zeros((2, 3), np.float32), out=np.zeros((2, 2), np.uint64))
    with pytest.raises(ValueError, match="C-contiguous"):
        bitpack.pack_rows(np.zeros((2, 3), np.float32), out=np.zeros((2, 2), np.uint64)[:, :1])
