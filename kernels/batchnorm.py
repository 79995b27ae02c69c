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
deterministic run to run. Channels (images, for the normalization) are split across bitnet's
threads (``bitnet.kernels.threads.parallel``); each thread claims one at a time and runs a separately
compiled per-channel function (compiled inside the claiming loop, the backward's two passes lost
their vectorization: 9.3 ms against 5.1 ms on (128, 64, 576)).
"""
from __future__ import annotations

import math

import numba as nb
import numpy as np

from bitnet.kernels.atomics import fetch_add
from bitnet.kernels.threads import parallel

_JIT = dict(nogil=True, cache=True, boundscheck=False)
_REDUCE = dict(_JIT, fastmath={"reassoc"})


def channel_stats(x, eps, mean, invstd):
    """mean[c] and invstd[c] = 1/sqrt(var[c] + eps) of x (N, C, L), biased variance."""
    parallel(_channel_stats, x.shape[1], x, eps, mean, invstd, cost=x.shape[0] * x.shape[2])


def normalize_affine(x, mean, invstd, gamma, beta, out):
    """out = gamma * (x - mean) * invstd + beta, per channel, written as x * a + b."""
    parallel(_normalize_affine, x.shape[0], x, mean, invstd, gamma, beta, out, cost=x.shape[1] * x.shape[2])


def batch_norm_backward(g, x, mean, invstd, gamma, grad_x, grad_gamma, grad_beta):
    """Fills grad_x (N, C, L), grad_gamma[c] = sum g*xhat and grad_beta[c] = sum g."""
    parallel(_batch_norm_backward, g.shape[1], g, x, mean, invstd, gamma, grad_x, grad_gamma, grad_beta,
             cost=3 * g.shape[0] * g.shape[2])


@nb.njit(**_JIT)
def _channel_stats(x, eps, mean, invstd, counter, chunk):
    c = fetch_add(counter, 0, 1)
    while c < x.shape[1]:
        _stats_of_channel(x, eps, mean, invstd, c)
        c = fetch_add(counter, 0, 1)


@nb.njit(**_REDUCE)
def _stats_of_channel(x, eps, mean, invstd, c):
    n_img, channels, length = x.shape
    m = n_img * length
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


@nb.njit(**_JIT)
def _normalize_affine(x, mean, invstd, gamma, beta, out, counter, chunk):
    n = fetch_add(counter, 0, 1)
    while n < x.shape[0]:
        _normalize_image(x, mean, invstd, gamma, beta, out, n)
        n = fetch_add(counter, 0, 1)


@nb.njit(**_JIT)
def _normalize_image(x, mean, invstd, gamma, beta, out, n):
    channels, length = x.shape[1], x.shape[2]
    for c in range(channels):
        a = gamma[c] * invstd[c]
        b = beta[c] - mean[c] * a
        for p in range(length):
            out[n, c, p] = x[n, c, p] * a + b


@nb.njit(**_JIT)
def _batch_norm_backward(g, x, mean, invstd, gamma, grad_x, grad_gamma, grad_beta, counter, chunk):
    c = fetch_add(counter, 0, 1)
    while c < g.shape[1]:
        _backward_of_channel(g, x, mean, invstd, gamma, grad_x, grad_gamma, grad_beta, c)
        c = fetch_add(counter, 0, 1)


@nb.njit(**_REDUCE)
def _backward_of_channel(g, x, mean, invstd, gamma, grad_x, grad_gamma, grad_beta, c):
    n_img, channels, length = g.shape
    m = n_img * length
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
