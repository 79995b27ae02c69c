"""Fused optimizer updates (Numba, parallel over flat chunks): one pass instead of ~10 NumPy passes.

Adam step for flat arrays p, g, m, v (and vmax for AMSGrad), scalars already in p's dtype so
float32 parameters are updated in float32 arithmetic, like NumPy and PyTorch do:

    g    = g + l2 * p                      (Adam's L2 weight decay; l2 = 0 for AdamW / none)
    m    = beta1 * m + (1 - beta1) * g
    v    = beta2 * v + (1 - beta2) * g * g
    vmax = max(vmax, v)                    (amsgrad only; the denominator then uses vmax)
    p    = p - step_size * m / (sqrt(v) / bc2_sqrt + eps)

with step_size = lr / (1 - beta1^t) and bc2_sqrt = sqrt(1 - beta2^t). No fused multiply-add is
formed (fastmath off), so the float64 result equals NumPy's expression evaluation bit for bit.
"""
from __future__ import annotations

import math

import numba as nb

_JIT = dict(nogil=True, cache=True, boundscheck=False, fastmath=False)
_CHUNK = 1 << 15


@nb.njit(parallel=True, **_JIT)
def adam_update(p, g, m, v, vmax, amsgrad, beta1, beta2, one_m_beta1, one_m_beta2, l2, step_size,
                bc2_sqrt, eps):
    n = p.size
    for b in nb.prange((n + _CHUNK - 1) // _CHUNK):
        for i in range(b * _CHUNK, min(n, (b + 1) * _CHUNK)):
            gi = g[i]
            if l2 != 0:
                gi = gi + l2 * p[i]
            mi = m[i] * beta1 + one_m_beta1 * gi
            vi = v[i] * beta2 + one_m_beta2 * (gi * gi)
            m[i] = mi
            v[i] = vi
            if amsgrad:
                if vi > vmax[i]:
                    vmax[i] = vi
                vi = vmax[i]
            p[i] = p[i] - step_size * mi / (math.sqrt(vi) / bc2_sqrt + eps)
