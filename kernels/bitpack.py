"""Fused binarize-and-pack: float32 -> uint64 sign bits (``bitnet.kernels.bits``: bit = x < 0,
LSB first, padding bits 0), read once, written once.

- ``pack_rows(x)``: ``(R, K)`` -> ``(R, words_for(K))``, bits along the last axis (dense-layer
  inputs, weights, channels-last maps seen as ``(N * H * W, C)``);
- ``pack_nchw(x, groups)``: ``(N, C, H, W)`` -> ``(N, H, W, G, words_for(C / G))``, bits along
  channels, each group starting at a word boundary: the float engine's layout straight into the
  packed convolution's (``bitnet.kernels.xnor_conv``).

Both are memory-bound (4 bytes read per bit written).
"""
from __future__ import annotations

import numba as nb
import numpy as np

from bitnet.kernels.bits import words_for

_JIT = dict(parallel=True, boundscheck=False, nogil=True, cache=True)


@nb.njit(**_JIT)
def _pack_rows(x, out):
    rows, k = x.shape
    nw = out.shape[1]
    for r in nb.prange(rows):
        for wd in range(nw):
            lo = wd * 64
            hi = min(k, lo + 64)
            v = np.uint64(0)
            for b in range(hi - lo):
                v |= np.uint64(x[r, lo + b] < 0) << np.uint64(b)
            out[r, wd] = v


@nb.njit(**_JIT)
def _pack_nchw(x, groups, out):
    n_img, channels, height, width = x.shape
    cg = channels // groups
    nw = out.shape[4]
    for nh in nb.prange(n_img * height):
        n, h = nh // height, nh % height
        row = np.empty(width, np.uint64)
        for g in range(groups):
            for wd in range(nw):
                row[:] = 0
                lo = wd * 64
                for b in range(min(64, cg - lo)):
                    c = g * cg + lo + b
                    bit = np.uint64(1) << np.uint64(b)
                    for w in range(width):
                        if x[n, c, h, w] < 0:
                            row[w] |= bit
                for w in range(width):
                    out[n, h, w, g, wd] = row[w]


def _float32(x, what, ndim):
    if not isinstance(x, np.ndarray) or x.dtype != np.float32 or x.ndim != ndim:
        got = f"{type(x).__name__}" if not isinstance(x, np.ndarray) else f"{x.dtype} array of shape {x.shape}"
        raise TypeError(f"{what} expects a float32 array with {ndim} dimensions, got {got}; "
                        "convert with np.asarray(x, dtype=np.float32)")
    return np.ascontiguousarray(x)


def pack_rows(x: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """Sign bits of a float32 ``(R, K)`` array, packed along K: ``(R, words_for(K))`` uint64."""
    x = _float32(x, "pack_rows", 2)
    shape = (x.shape[0], words_for(x.shape[1]))
    if out is None:
        out = np.empty(shape, np.uint64)
    elif out.shape != shape or out.dtype != np.uint64:
        raise ValueError(f"pack_rows: out must be uint64 of shape {shape}, got {out.dtype} {out.shape}")
    _pack_rows(x, out)
    return out


def pack_nchw(x: np.ndarray, groups: int = 1) -> np.ndarray:
    """Sign bits of a float32 ``(N, C, H, W)`` map, packed along channels per group:
    ``(N, H, W, groups, words_for(C // groups))`` uint64."""
    x = _float32(x, "pack_nchw", 4)
    n, c, h, w = x.shape
    if groups < 1 or c % groups:
        raise ValueError(f"pack_nchw: {c} channels do not split into {groups} groups")
    out = np.empty((n, h, w, groups, words_for(c // groups)), np.uint64)
    _pack_nchw(x, groups, out)
    return out
