"""Batch norm (training statistics) fused with a max pool whose windows tile the input (Numba).

For x (N, C, H, W), per-channel mean and invstd (``bitnet.kernels.batchnorm.channel_stats``),
gamma, beta and a KHxKW window with stride = window and no padding (each input position lies in
at most one window):

forward (one pass over x; the normalized map is never written out):

    z[n, c, p]      = x[n, c, p] * a_c + b_c,   a_c = gamma_c invstd_c,  b_c = beta_c - mean_c a_c
    out[n, c, o]    = max of z over window o,   argmax[n, c, o] = its flat index y*W + x in the plane

with exactly the arithmetic of ``batchnorm.normalize_affine`` (float64, rounded to x's dtype) and
the selection rule of ``pooling.max_pool_forward`` (first maximum in scan order, or the last NaN),
so ``out`` and ``argmax`` are those of batch norm followed by max pooling, bit for bit.

backward, for the pooled gradient g (N, C, OH, OW): the gradient reaching batch norm is g at the
argmax positions and 0 elsewhere, so with M = N*H*W and m_c = mean_c,

    dbeta_c  = sum_{n,o} g[n, c, o],   dgamma_c = invstd_c sum_{n,o} g[n, c, o] (x[n, c, argmax] - m_c)
    dx       = gamma_c invstd_c (g_dense - dbeta_c / M - (x - m_c) invstd_c dgamma_c / M)

(``bitnet.kernels.batchnorm``'s formula with g_dense the scattered g). The sums run over the
pooled positions only (a quarter of the terms for 2x2 windows), in float64, in a different order
than the dense sums of the unfused kernel: dgamma, dbeta and dx may differ from the unfused path
in the last bits of float32 (float64 accumulation of at most M terms of float32 values: relative
error below M * 2^-53, far under float32's 2^-24). ``dx`` is written plane by plane from g_dense,
scattered into a cache-resident buffer.
"""
from __future__ import annotations

import numba as nb
import numpy as np

from bitnet.kernels.atomics import claimed, fetch_add
from bitnet.kernels.pooling import _max_pool_tiled_plane
from bitnet.kernels.threads import parallel

_JIT = dict(nogil=True, cache=True, boundscheck=False)
_REDUCE = dict(_JIT, fastmath={"reassoc"})


def tiles(x_shape, kernel, stride, padding) -> bool:
    """True when the pooling windows tile the input (the case these kernels handle)."""
    height, width = x_shape[2], x_shape[3]
    return (tuple(stride) == tuple(kernel) and tuple(padding) == (0, 0)
            and height >= kernel[0] and width >= kernel[1])


def normalize_max_pool(x, mean, invstd, gamma, beta, kh, kw, out, argmax):
    """out, argmax (N, C, H // KH, W // KW) of max_pool(batch_norm(x)); see the module docstring.
    x, out and argmax are C-contiguous."""
    n_img, channels, height, width = x.shape
    parallel(_normalize_max_pool, n_img * channels, x, mean, invstd, gamma, beta, kh, kw, out, argmax,
             cost=3 * height * width)


@nb.njit(**_JIT)
def _normalize_max_pool(x, mean, invstd, gamma, beta, kh, kw, out, argmax, counter, chunk):
    n_img, channels, height, width = x.shape
    oh, ow = out.shape[2], out.shape[3]
    xf, of, af = x.reshape(-1), out.reshape(-1), argmax.reshape(-1)
    z = np.empty(height * width, x.dtype)  # one normalized plane, in cache
    for plane in claimed(counter, chunk, n_img * channels):
        c = plane % channels
        start = plane * height * width
        _normalize_plane(xf[start:start + height * width], gamma[c] * invstd[c], mean[c], beta[c], z)
        _max_pool_tiled_plane(z, kh, kw, width, oh, ow, of, af, 0, plane * oh * ow)


@nb.njit(**_JIT)
def _normalize_plane(xp, a, mean, beta, z):
    """z = x * a + b for one plane, as ``batchnorm._normalize_image`` computes it. (Loops over a
    plane's slice vectorize; on flat indices with an offset they ran 2x slower.)"""
    b = beta - mean * a
    for p in range(xp.size):
        z[p] = xp[p] * a + b


def batch_norm_max_pool_backward(g, argmax, x, mean, invstd, gamma, grad_x, grad_gamma, grad_beta):
    """grad_x (N, C, H, W), grad_gamma (C,) and grad_beta (C,) (float64) for the pooled gradient g;
    see the module docstring. Parallel over channels; every array C-contiguous."""
    parallel(_backward, x.shape[1], g, argmax, x, mean, invstd, gamma, grad_x, grad_gamma, grad_beta,
             cost=3 * x.shape[0] * x.shape[2] * x.shape[3])


@nb.njit(**_JIT)
def _backward(g, argmax, x, mean, invstd, gamma, grad_x, grad_gamma, grad_beta, counter, chunk):
    c = fetch_add(counter, 0, 1)
    n_img, channels, height, width = x.shape
    plane_in, plane_out = height * width, g.shape[2] * g.shape[3]
    xf, gf, af, gxf = x.reshape(-1), g.reshape(-1), argmax.reshape(-1), grad_x.reshape(-1)
    while c < channels:
        sg, sgd = _sums_of_channel(gf, af, xf, mean[c], c, n_img, channels, plane_in, plane_out)
        inv = invstd[c]
        grad_beta[c] = sg
        grad_gamma[c] = sgd * inv
        m = n_img * plane_in
        k = gamma[c] * inv
        mg = sg / m
        mgx = sgd * inv * inv / m
        _write_channel(gf, af, xf, gxf, mean[c], k, mg, mgx, c, n_img, channels, plane_in, plane_out)
        c = fetch_add(counter, 0, 1)


@nb.njit(**_JIT)
def _sums_of_channel(gf, af, xf, mu, c, n_img, channels, plane_in, plane_out):
    """(sum g, sum g (x[argmax] - mu)) over the channel's planes: each plane's sums (``_plane_sums``),
    added image by image."""
    sg = 0.0
    sgd = 0.0
    for n in range(n_img):
        i0 = (n * channels + c) * plane_in
        o0 = (n * channels + c) * plane_out
        a, b = _plane_sums(gf[o0:o0 + plane_out], af[o0:o0 + plane_out], xf[i0:i0 + plane_in], mu)
        sg += a
        sgd += b
    return sg, sgd


@nb.njit(**_REDUCE)
def _plane_sums(gp, ap, xp, mu):
    """One plane's terms, on 1-D views (1.7x faster than on offsets into the flat arrays)."""
    sg = 0.0
    sgd = 0.0
    for o in range(gp.size):
        gv = gp[o]
        sg += gv
        sgd += gv * (xp[ap[o]] - mu)
    return sg, sgd


@nb.njit(**_JIT)
def _write_channel(gf, af, xf, gxf, mu, k, mg, mgx, c, n_img, channels, plane_in, plane_out):
    gd = np.empty(plane_in, gf.dtype)  # one plane of the scattered gradient, in cache
    for n in range(n_img):
        i0 = (n * channels + c) * plane_in
        o0 = (n * channels + c) * plane_out
        _scatter_plane(gf[o0:o0 + plane_out], af[o0:o0 + plane_out], gd)
        _write_plane(gd, xf[i0:i0 + plane_in], gxf[i0:i0 + plane_in], mu, k, mg, mgx)


@nb.njit(**_JIT)
def _scatter_plane(gp, ap, gd):
    """gd = the plane's gradient: gp at the argmax positions, 0 elsewhere."""
    gd[:] = 0
    for o in range(gp.size):
        gd[ap[o]] = gp[o]


@nb.njit(**_JIT)
def _write_plane(gd, xp, gxp, mu, k, mg, mgx):
    """dx of one plane: ``batchnorm._backward_of_channel``'s formula on the scattered gradient."""
    for p in range(xp.size):
        gxp[p] = k * (gd[p] - mg - (xp[p] - mu) * mgx)
