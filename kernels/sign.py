"""The sign quantizer and its straight-through gradient in one pass each (Numba, split across
bitnet's threads). Inputs are C-contiguous arrays of the same shape, viewed flat.

    sign:      out = -1 if x < 0 else +1           (sign(0) = +1; NaN is not < 0, so it gives +1)
               and, on the way, outside[0] = 1 if some x has not |x| <= clip (NaN included), else
               it is left as it was (the caller sets 0): when none has, the straight-through
               gradient passes everywhere and the backward can return g itself
    ste mask:  out = g if |x| <= clip else 0       (NaN x gives 0: NaN <= clip is false)

NumPy needs three passes and two temporaries for each (``x < 0``, ``np.where``; ``np.abs``,
``<=``, ``np.where``); these read each input once and write the output once. The values are
those of the NumPy expressions exactly (a select, no arithmetic).
"""
from __future__ import annotations

import numba as nb
import numpy as np

from bitnet.kernels.atomics import claim
from bitnet.kernels.threads import parallel

_JIT = dict(nogil=True, cache=True, boundscheck=False, fastmath=False)


@nb.njit(**_JIT)
def _sign(x, clip, out, outside, counter, chunk):
    n = x.size
    lo, hi = claim(counter, chunk, n)
    while lo < n:
        if _sign_run(x[lo:hi], clip, out[lo:hi]):
            outside[0] = 1  # every thread that writes writes 1
        lo, hi = claim(counter, chunk, n)


@nb.njit(inline="always")
def _sign_run(x, clip, out):
    """One claimed run, on 1-D views (which LLVM vectorizes: 7.7x faster than the same loop on offsets
    into the whole arrays); True when some |x| is not <= clip."""
    out_of_range = False
    for i in range(x.size):
        v = x[i]
        out[i] = -1.0 if v < 0 else 1.0
        out_of_range |= not abs(v) <= clip
    return out_of_range


@nb.njit(**_JIT)
def _ste_mask(g, x, clip, out, counter, chunk):
    n = g.size
    lo, hi = claim(counter, chunk, n)
    while lo < n:
        _mask_run(g[lo:hi], x[lo:hi], clip, out[lo:hi])
        lo, hi = claim(counter, chunk, n)


@nb.njit(inline="always")
def _mask_run(g, x, clip, out):
    """One claimed run, on 1-D views (6.8x faster than on offsets)."""
    for i in range(g.size):
        out[i] = g[i] if abs(x[i]) <= clip else 0.0


def sign(x, out, clip=None) -> bool:
    """out = sign(x) (module docstring) for flat arrays; returns True when every |x| <= clip and no
    x is NaN (clip None: every x but NaN)."""
    outside = np.zeros(1, np.uint8)
    parallel(_sign, x.size, x, x.dtype.type(np.inf if clip is None else clip), out, outside)
    return not outside[0]


def ste_mask(g, x, clip, out):
    """out = g where |x| <= clip else 0, for flat arrays; ``clip`` in x's dtype."""
    parallel(_ste_mask, g.size, g, x, clip, out)
