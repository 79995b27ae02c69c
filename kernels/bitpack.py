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
from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

from bitnet.kernels.atomics import claimed
from bitnet.kernels.bit_scalar import sign_bit
from bitnet.kernels.bits import words_for
from bitnet.kernels.threads import parallel

_JIT = dict(boundscheck=False, nogil=True, cache=True)


@intrinsic
def _sign_word(typingctx, x, off):
    """``sum_{b < 64} (x[off + b] < 0) << b`` for a 1-D float32 array: one ``<64 x float>`` load,
    a vector compare to a 64-bit mask (AVX-512: 4 compares into mask registers). No bounds check."""
    sig = types.uint64(x, off)

    def codegen(context, builder, signature, args):
        arr, o = args
        data = cgutils.create_struct_proxy(signature.args[0])(context, builder, value=arr).data
        o = context.cast(builder, o, signature.args[1], types.int64)
        vt = ir.VectorType(ir.FloatType(), 64)
        v = builder.load(builder.bitcast(builder.gep(data, [o]), vt.as_pointer()), align=4)
        neg = builder.fcmp_ordered("<", v, ir.Constant(vt, None))
        return builder.bitcast(neg, ir.IntType(64))

    return sig, codegen


@nb.njit(**_JIT)
def _pack_rows(x, k, rows, out, nw, counter, chunk):
    """x: flat (rows, k) float32, out: flat (rows, nw) uint64; full words by ``_sign_word``, the
    last partial word bit by bit (its padding bits 0). One thread's share: the rows it claims."""
    full = k // 64
    for r in claimed(counter, chunk, rows):
        base = r * k
        for wd in range(full):
            out[r * nw + wd] = _sign_word(x, base + wd * 64)
        if full < nw:
            v = np.uint64(0)
            for b in range(k - full * 64):
                v |= sign_bit(x[base + full * 64 + b]) << np.uint64(b)
            out[r * nw + full] = v


_PIXELS = 256  # pixels of one channel plane per task: 1 KB contiguous float32 reads


@nb.njit(**_JIT)
def _pack_nchw(x, n_img, channels, hw, groups, out, nw, counter, chunk):
    """x: flat (N, C, H*W) float32; out: flat (N, H*W, G, nw) uint64. A task is (image, chunk of
    ``_PIXELS`` pixels, group, word): it reads the word's 64 channel planes contiguously over the
    chunk and ORs each into the chunk's words (a vectorized compare-shift-or loop)."""
    cg = channels // groups
    chunks = (hw + _PIXELS - 1) // _PIXELS
    for task in claimed(counter, chunk, n_img * chunks * groups * nw):
        wd = task % nw
        g = (task // nw) % groups
        part = (task // (nw * groups)) % chunks
        n = task // (nw * groups * chunks)
        p0 = part * _PIXELS
        cnt = min(_PIXELS, hw - p0)
        acc = np.zeros(_PIXELS, np.uint64)
        lo = wd * 64
        for b in range(min(64, cg - lo)):
            src = (n * channels + g * cg + lo + b) * hw + p0
            plane = x[src:src + cnt]  # a slice indexed by the loop counter: contiguous vector loads
            shift = np.uint64(b)      # (x[src + i] would be a gather: the index might be negative)
            for i in range(cnt):
                acc[i] |= np.uint64(plane[i] < 0) << shift
        dst = ((n * hw + p0) * groups + g) * nw + wd
        for i in range(cnt):
            out[dst + i * groups * nw] = acc[i]


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
    elif not isinstance(out, np.ndarray) or out.shape != shape or out.dtype != np.uint64 or not out.flags.c_contiguous:
        raise ValueError(f"pack_rows: out must be a C-contiguous uint64 array of shape {shape}, got "
                         f"{getattr(out, 'dtype', type(out).__name__)} {getattr(out, 'shape', '')}")
    parallel(_pack_rows, x.shape[0], x.reshape(-1), x.shape[1], x.shape[0], out.reshape(-1), shape[1],
             cost=x.shape[1] // 8 + 1)
    return out


def pack_nchw(x: np.ndarray, groups: int = 1) -> np.ndarray:
    """Sign bits of a float32 ``(N, C, H, W)`` map, packed along channels per group:
    ``(N, H, W, groups, words_for(C // groups))`` uint64."""
    x = _float32(x, "pack_nchw", 4)
    n, c, h, w = x.shape
    if groups < 1 or c % groups:
        raise ValueError(f"pack_nchw: {c} channels do not split into {groups} groups")
    out = np.empty((n, h, w, groups, words_for(c // groups)), np.uint64)
    tasks = n * -(-(h * w) // _PIXELS) * groups * out.shape[4]
    parallel(_pack_nchw, tasks, x.reshape(-1), n, c, h * w, groups, out.reshape(-1), out.shape[4],
             cost=_PIXELS * 64 // 8)
    return out
