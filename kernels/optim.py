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

On a device the same step is one CUDA C kernel with the same operations (``bitnet.kernels.cuda_adam``).
"""
from __future__ import annotations

import math

import numba as nb

from bitnet.kernels.atomics import claim
from bitnet.kernels.threads import parallel

_JIT = dict(nogil=True, cache=True, boundscheck=False, fastmath=False)


def adam_update(p, g, m, v, vmax, amsgrad, beta1, beta2, one_m_beta1, one_m_beta2, l2, step_size, bc2_sqrt, eps):
    """One Adam step on flat arrays, in place (module docstring)."""
    parallel(_adam_update, p.size, p, g, m, v, vmax, amsgrad, beta1, beta2, one_m_beta1, one_m_beta2, l2,
             step_size, bc2_sqrt, eps, cost=8)


@nb.njit(**_JIT)
def _adam_update(p, g, m, v, vmax, amsgrad, beta1, beta2, one_m_beta1, one_m_beta2, l2, step_size,
                 bc2_sqrt, eps, counter, chunk):
    n = p.size
    lo, hi = claim(counter, chunk, n)
    while lo < n:
        _adam_run(p[lo:hi], g[lo:hi], m[lo:hi], v[lo:hi], vmax[lo:hi] if amsgrad else vmax, amsgrad, beta1, beta2,
                  one_m_beta1, one_m_beta2, l2, step_size, bc2_sqrt, eps)
        lo, hi = claim(counter, chunk, n)


@nb.njit(inline="always")
def _adam_run(p, g, m, v, vmax, amsgrad, beta1, beta2, one_m_beta1, one_m_beta2, l2, step_size, bc2_sqrt, eps):
    """The step on one claimed run, on 1-D views of it (which LLVM vectorizes; on offsets into the whole
    arrays it did not)."""
    for i in range(p.size):
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
