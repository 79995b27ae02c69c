"""Scalar helpers of the bit convention (``bitnet.kernels.bits``), written once as plain Python and
compiled into every kernel that calls them: they are ``numba.njit(inline="always")``, so Numba
inlines their IR into CPU kernels (``njit``) and GPU kernels (``cuda.jit``) alike (and a kernel
compiles to PTX without a GPU present, which a separate device function would not), and the
CUDA simulator calls them as CPU functions.

- ``sign_bit(v)``: the bit of a float value, 1 for -1 (``v < 0``), 0 for +1 (``v >= 0``: sign(0) = +1);
- ``xnor_dot(k, pc)``: the +-1 dot product ``k - 2 * pc`` of two length-``k`` vectors whose packed
  words differ in ``pc`` bits (padding bits 0 in both, so they never differ);
- ``tap_word_index(p, t, ...)``: for bit im2col, where word ``t`` (tap ``(i, j)``, channel word
  ``cw``, ``t = (i * KW + j) * CWg + cw``) of output pixel ``p = (n * OH + oh) * OW + ow`` comes
  from in the packed channels-last input ``(N, H, W, G, CWg)`` of group ``g``: the flat word index,
  or -1 where the tap falls in the padding (the caller reads the pad word ``padword[cw]``)::

      ih = oh * sh - ph + i * dh,  iw = ow * sw - pw + j * dw
      index = (((n * H + ih) * W + iw) * G + g) * CWg + cw   if 0 <= ih < H and 0 <= iw < W
"""
from __future__ import annotations

import numpy as np
import numba as nb


@nb.njit(inline="always")
def sign_bit(v):
    return np.uint64(1) if v < 0 else np.uint64(0)


@nb.njit(inline="always")
def xnor_dot(k, pc):
    return k - 2 * pc


@nb.njit(inline="always")
def tap_word_index(p, t, g, H, W, G, CWg, KW, sh, sw, ph, pw, dh, dw, OH, OW):
    tap = t // CWg
    cw = t - tap * CWg
    i = tap // KW
    j = tap - i * KW
    n = p // (OH * OW)
    rem = p - n * OH * OW
    oh = rem // OW
    ow = rem - oh * OW
    ih = oh * sh - ph + i * dh
    iw = ow * sw - pw + j * dw
    if ih < 0 or ih >= H or iw < 0 or iw >= W:
        return -1
    return (((n * H + ih) * W + iw) * G + g) * CWg + cw
