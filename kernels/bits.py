"""The one bit convention of every packed kernel (docs/design.md, section 3), and NumPy references.

- A +-1 value is one bit: **bit 1 means -1, bit 0 means +1**, so ``bit = (x < 0)`` and
  sign(0) = +1 packs to 0.
- Bits are packed along one axis (the *packed axis*: the reduction axis K of a dot product) into
  ``uint64`` words, **LSB first**: element ``k`` is bit ``k % 64`` of word ``k // 64``.
- A length-K axis takes ``words_for(K) = ceil(K / 64)`` words; the bits beyond K in the last word
  (*padding bits*) are **0 in both operands**.

Then for +-1 vectors a, b of true length K packed as words A, B:

    dot(a, b) = K - 2 * popcount(A XOR B)

exactly: XOR marks the positions where the values differ (each contributes -1 instead of +1), and
padding bits, 0 in both operands, never differ.

Convolutions pack channels: activations are stored channels-last as ``(N, H, W, G, CWg)`` words
(``CWg = words_for(C / groups)``, each group starting at a word boundary), and the K axis of a
kernel is (kh, kw, channel words), so every tap's channel words end with their own padding bits.

The functions here are the plain NumPy references the Numba kernels are tested against.
"""
from __future__ import annotations

import numpy as np

WORD_BITS = 64
WORD_DTYPE = np.uint64
MINUS_ONE_BIT = 1  # bit value that stands for -1


def words_for(k: int) -> int:
    """Number of uint64 words holding ``k`` bits."""
    return (int(k) + WORD_BITS - 1) // WORD_BITS


def pack_reference(x: np.ndarray, axis: int = -1) -> np.ndarray:
    """Pack ``x < 0`` along ``axis`` into uint64 words (LSB first, padding bits 0); the packed
    axis becomes the last one, of length ``words_for(x.shape[axis])``."""
    x = np.moveaxis(np.asarray(x), axis, -1)
    k = x.shape[-1]
    nw = words_for(k)
    bits = np.zeros(x.shape[:-1] + (nw * WORD_BITS,), np.uint64)
    bits[..., :k] = x < 0
    bits = bits.reshape(x.shape[:-1] + (nw, WORD_BITS))
    return (bits << np.arange(WORD_BITS, dtype=np.uint64)).sum(axis=-1, dtype=np.uint64)


def unpack_reference(words: np.ndarray, k: int) -> np.ndarray:
    """The +-1 float32 values of the first ``k`` bits of ``words`` along its last axis."""
    words = np.asarray(words, np.uint64)
    bits = (words[..., None] >> np.arange(WORD_BITS, dtype=np.uint64)) & np.uint64(1)
    bits = bits.reshape(words.shape[:-1] + (-1,))[..., :k]
    return np.where(bits == MINUS_ONE_BIT, -1.0, 1.0).astype(np.float32)


def popcount_reference(words: np.ndarray) -> np.ndarray:
    """Number of set bits of each uint64 word (int64)."""
    return np.bitwise_count(np.asarray(words, np.uint64)).astype(np.int64)


def xnor_dot_reference(a_words: np.ndarray, b_words: np.ndarray, k: int) -> np.ndarray:
    """``(M, W) x (N, W) -> (M, N)`` int32 dot products of +-1 vectors of true length ``k``:
    ``k - 2 * popcount(a XOR b)`` summed over words."""
    a = np.asarray(a_words, np.uint64)[:, None, :]
    b = np.asarray(b_words, np.uint64)[None, :, :]
    return (k - 2 * popcount_reference(a ^ b).sum(axis=-1)).astype(np.int32)
