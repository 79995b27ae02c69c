"""Batch normalization (per channel over batch and spatial axes) on (N, C), (N, C, L) or (N, C, H, W).

Training mode normalizes with the batch statistics (biased variance) and updates the running
averages in place with PyTorch's convention:

    running_mean <- (1 - momentum) running_mean + momentum mean
    running_var  <- (1 - momentum) running_var  + momentum var * M / (M - 1)   (unbiased)

Eval mode uses the running averages: y = gamma (x - running_mean) / sqrt(running_var + eps) + beta.
The math of the training backward is in ``bitnet.kernels.batchnorm``.
"""
from __future__ import annotations

import math

import numpy as np

from bitnet.kernels import batchnorm as K
from bitnet.ops import workspace as W
from bitnet.tensor import Function, Tensor


def _as_ncl(a):
    """``a`` (N, C, *) as a C-contiguous (N, C, L) array, L the product of the trailing sizes (1 for
    none; written out, not -1, which NumPy cannot resolve for an empty batch)."""
    return np.ascontiguousarray(a).reshape(a.shape[0], a.shape[1], math.prod(a.shape[2:]))


def update_running(running_mean, running_var, mean, invstd, eps, momentum, m) -> None:
    """The running averages' update (module docstring) from a batch's mean and invstd over m values
    per channel; nothing when ``running_mean`` is None."""
    if running_mean is None:
        return
    var = 1.0 / invstd ** 2 - eps
    running_mean *= 1 - momentum
    running_mean += (momentum * mean).astype(running_mean.dtype)
    running_var *= 1 - momentum
    running_var += (momentum * var * m / (m - 1)).astype(running_var.dtype)


class BatchNormTrain(Function):
    float_inputs = "batch_norm"  # integer / bool inputs computed in float32 (bitnet.ops.dtypes)

    def forward(self, x, gamma, beta, eps=1e-5, running_mean=None, running_var=None, momentum=0.1):
        x3 = _as_ncl(x)
        mean = np.empty(x.shape[1], dtype=np.float64)
        invstd = np.empty(x.shape[1], dtype=np.float64)
        K.channel_stats(x3, eps, mean, invstd)
        out = W.empty_like(x3)
        K.normalize_affine(x3, mean, invstd, gamma, beta, out)
        self.x, self.gamma, self.mean, self.invstd = x3, gamma, mean, invstd
        update_running(running_mean, running_var, mean, invstd, eps, momentum, x3.shape[0] * x3.shape[2])
        return out.reshape(x.shape)

    def backward(self, g):
        g3 = _as_ncl(g)
        gx = W.empty_like(g3)
        gg = np.empty(self.gamma.shape, dtype=np.float64)
        gb = np.empty(self.gamma.shape, dtype=np.float64)
        K.batch_norm_backward(g3, self.x, self.mean, self.invstd, self.gamma, gx, gg, gb)
        dt = g.dtype
        return gx.reshape(g.shape), gg.astype(dt), gb.astype(dt)


class BatchNormEval(Function):
    float_inputs = "batch_norm"

    def forward(self, x, gamma, beta, mean=None, var=None, eps=1e-5):
        self.invstd = 1.0 / np.sqrt(var.astype(np.float64) + eps)
        self.x, self.mean, self.gamma = x, mean.astype(np.float64), gamma
        out = W.empty_like(_as_ncl(x))
        K.normalize_affine(_as_ncl(x), self.mean, self.invstd, gamma, beta, out)
        return out.reshape(x.shape)

    def backward(self, g):
        axes = (0,) + tuple(range(2, g.ndim))
        bshape = (1, -1) + (1,) * (g.ndim - 2)
        scale = (self.gamma * self.invstd).astype(g.dtype).reshape(bshape)
        gx = g * scale if self.needs_grad[0] else None
        xhat = (self.x - self.mean.reshape(bshape)) * self.invstd.reshape(bshape)
        gg = (g * xhat).sum(axis=axes).astype(g.dtype)
        return gx, gg, g.sum(axis=axes)


def batch_norm(x, running_mean, running_var, weight=None, bias=None, training=True, momentum=0.1,
               eps=1e-5) -> Tensor:
    """Batch norm of x (N, C, *) over every axis but C (so (N, C), (N, C, L) and (N, C, H, W));
    ``running_mean``/``running_var`` are arrays (C,) on x's device, updated in place when ``training``
    (None: not tracked); ``weight``/``bias`` are tensors (C,), or None for gamma = 1 / beta = 0."""
    if x.ndim < 2:
        raise ValueError(f"batch_norm expects (N, C), (N, C, L) or (N, C, H, W) input, got shape {x.shape}")
    c = x.shape[1]
    device = x.device if isinstance(x, Tensor) else None  # gamma = 1 / beta = 0 where x is ("cuda" too)
    if weight is None:
        weight = Tensor(np.ones(c, x.dtype), device=device)
    if bias is None:
        bias = Tensor(np.zeros(c, x.dtype), device=device)
    if weight.shape != (c,) or bias.shape != (c,):
        raise ValueError(f"batch_norm: input has {c} channels but weight/bias have shapes "
                         f"{weight.shape}/{bias.shape}; the layer was built for another channel count")
    if training:
        m = x.size // c
        if m < 2:
            raise ValueError(f"batch_norm in training mode needs more than one value per channel, "
                             f"got input shape {x.shape}; use a batch larger than 1 or call .eval()")
        return BatchNormTrain.apply(x, weight, bias, eps=eps, running_mean=running_mean,
                                    running_var=running_var, momentum=momentum)
    if running_mean is None:
        raise ValueError("batch_norm in eval mode needs running statistics (track_running_stats)")
    return BatchNormEval.apply(x, weight, bias, mean=running_mean, var=running_var, eps=eps)
