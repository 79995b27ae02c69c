"""Batch normalization over the channel axis of (N, C, L) arrays (Numba, parallel over C).

An (N, C) input is (N, C, 1); an (N, C, H, W) input is (N, C, H*W). With M = N*L elements per
channel:

    mean_c = (1/M) sum x,   var_c = (1/M) sum (x - mean_c)^2   (biased, used to normalize)
    xhat   = (x - mean_c) / sqrt(var_c + eps),   y = gamma_c * xhat + beta_c

and the backward, with g = dL/dy:

    dbeta_c  = sum g,   dgamma_c = sum g * xhat
    dx       = gamma_c / sqrt(var_c + eps) * (g - dbeta_c / M - xhat * dgamma_c / M)

Statistics are one-pass sums in float64 of x - x[0, c, 0] (the shift keeps E[d^2] - E[d]^2 free
of cancellation when |mean| >> std). The sums allow reassociation (``fastmath={"reassoc"}``) so
they vectorize; each channel is summed by one thread in a fixed order, so results are
deterministic run to run.
"""
from __future__ import annotations

import math

import numba as nb
import numpy as np

_JIT = dict(nogil=True, cache=True, boundscheck=False)
_REDUCE = dict(_JIT, fastmath={"reassoc"})


@nb.njit(parallel=True, **_REDUCE)
def channel_stats(x, eps, mean, invstd):
    """mean[c] and invstd[c] = 1/sqrt(var[c] + eps) of x (N, C, L), biased variance."""
    n_img, channels, length = x.shape
    m = n_img * length
    for c in nb.prange(channels):
        shift = np.float64(x[0, c, 0])
        s = 0.0
        ss = 0.0
        for n in range(n_img):
            for p in range(length):
                d = np.float64(x[n, c, p]) - shift
                s += d
                ss += d * d
        md = s / m
        var = max(ss / m - md * md, 0.0)
        mean[c] = shift + md
        invstd[c] = 1.0 / math.sqrt(var + eps)


@nb.njit(parallel=True, **_JIT)
def normalize_affine(x, mean, invstd, gamma, beta, out):
    """out = gamma * (x - mean) * invstd + beta, per channel, written as x * a + b."""
    n_img, channels, length = x.shape
    for n in nb.prange(n_img):
        for c in range(channels):
            a = gamma[c] * invstd[c]
            b = beta[c] - mean[c] * a
            for p in range(length):
                out[n, c, p] = x[n, c, p] * a + b


@nb.njit(parallel=True, **_REDUCE)
def batch_norm_backward(g, x, mean, invstd, gamma, grad_x, grad_gamma, grad_beta):
    """Fills grad_x (N, C, L), grad_gamma[c] = sum g*xhat and grad_beta[c] = sum g."""
    n_img, channels, length = g.shape
    m = n_img * length
    for c in nb.prange(channels):
        mu = mean[c]
        sg = 0.0
        sgd = 0.0
        for n in range(n_img):
            for p in range(length):
                sg += g[n, c, p]
                sgd += g[n, c, p] * (x[n, c, p] - mu)
        inv = invstd[c]
        grad_beta[c] = sg
        grad_gamma[c] = sgd * inv
        k = gamma[c] * inv
        mg = sg / m
        mgx = sgd * inv * inv / m  # (dgamma / M) * invstd, to multiply (x - mean)
        for n in range(n_img):
            for p in range(length):
                grad_x[n, c, p] = k * (g[n, c, p] - mg - (x[n, c, p] - mu) * mgx)
