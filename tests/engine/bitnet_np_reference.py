"""Independent NumPy references for the engine tests (no im2col, no Numba).

Convolution: zero-pad, then for every kernel tap (i, j) take the strided view of the padded input
that the tap sees and contract it with w[:, :, i, j] by einsum, group by group.
Pooling: direct loops over output positions on the un-padded input (windows clipped to the
image; max ignores padding, avg divides by KH*KW: count_include_pad).
Batch norm: two-pass mean / biased variance over (N, H, W).
"""
from __future__ import annotations

import numpy as np


def out_size(size, k, s, p, d=1):
    return (size + 2 * p - d * (k - 1) - 1) // s + 1


def conv2d_ref(x, w, b=None, stride=(1, 1), padding=(0, 0), dilation=(1, 1), groups=1):
    x = np.asarray(x, np.float64)
    w = np.asarray(w, np.float64)
    n, c, h, wd = x.shape
    o, cg, kh, kw = w.shape
    (sh, sw), (ph, pw), (dh, dw) = stride, padding, dilation
    oh, ow = out_size(h, kh, sh, ph, dh), out_size(wd, kw, sw, pw, dw)
    xp = np.zeros((n, c, h + 2 * ph, wd + 2 * pw))
    xp[:, :, ph:ph + h, pw:pw + wd] = x
    og = o // groups
    y = np.zeros((n, o, oh, ow))
    for g in range(groups):
        xs = xp[:, g * cg:(g + 1) * cg]
        ws = w[g * og:(g + 1) * og]
        for i in range(kh):
            for j in range(kw):
                patch = xs[:, :, i * dh: i * dh + sh * (oh - 1) + 1: sh, j * dw: j * dw + sw * (ow - 1) + 1: sw]
                y[:, g * og:(g + 1) * og] += np.einsum("nchw,oc->nohw", patch, ws[:, :, i, j])
    if b is not None:
        y += np.asarray(b, np.float64)[None, :, None, None]
    return y


def pool2d_ref(x, kernel, stride, padding, mode):
    x = np.asarray(x, np.float64)
    n, c, h, w = x.shape
    (kh, kw), (sh, sw), (ph, pw) = kernel, stride, padding
    oh, ow = out_size(h, kh, sh, ph), out_size(w, kw, sw, pw)
    y = np.empty((n, c, oh, ow))
    for oy in range(oh):
        for ox in range(ow):
            y0, x0 = oy * sh - ph, ox * sw - pw
            win = x[:, :, max(y0, 0):min(y0 + kh, h), max(x0, 0):min(x0 + kw, w)]
            assert win.size, "empty pooling window"
            if mode == "max":
                y[:, :, oy, ox] = win.max(axis=(2, 3))
            else:
                y[:, :, oy, ox] = win.sum(axis=(2, 3)) / (kh * kw)
    return y


def batch_norm_train_ref(x, gamma, beta, eps):
    x = np.asarray(x, np.float64)
    axes = (0,) + tuple(range(2, x.ndim))
    bshape = (1, -1) + (1,) * (x.ndim - 2)
    mean = x.mean(axis=axes)
    var = ((x - mean.reshape(bshape)) ** 2).mean(axis=axes)
    y = (x - mean.reshape(bshape)) / np.sqrt(var.reshape(bshape) + eps)
    y = y * np.asarray(gamma, np.float64).reshape(bshape) + np.asarray(beta, np.float64).reshape(bshape)
    return y, mean, var


def batch_norm_eval_ref(x, gamma, beta, rmean, rvar, eps):
    x = np.asarray(x, np.float64)
    bshape = (1, -1) + (1,) * (x.ndim - 2)
    r = lambda a: np.asarray(a, np.float64).reshape(bshape)  # noqa: E731
    return (x - r(rmean)) / np.sqrt(r(rvar) + eps) * r(gamma) + r(beta)


def running_update_ref(rmean, rvar, mean, var, m, momentum):
    """PyTorch's convention: the running variance uses the unbiased batch variance."""
    return ((1 - momentum) * rmean + momentum * mean,
            (1 - momentum) * rvar + momentum * var * m / (m - 1))


def log_softmax_ref(x, axis):
    x = np.asarray(x, np.float64)
    m = x.max(axis=axis, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(axis=axis, keepdims=True))


def cross_entropy_ref(logits, t, reduction="mean", label_smoothing=0.0):
    logp = log_softmax_ref(logits, 1)
    n, k = logp.shape
    q = np.full((n, k), label_smoothing / k)
    q[np.arange(n), t] += 1 - label_smoothing
    loss = -(q * logp).sum(axis=1)
    return {"none": loss, "sum": loss.sum(), "mean": loss.mean()}[reduction]
