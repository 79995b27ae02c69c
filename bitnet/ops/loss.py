"""Softmax, log-softmax and the numerically stable softmax cross-entropy; dropout.

log_softmax(x)_k = x_k - m - log sum_j exp(x_j - m), m = max_j x_j (so no exp overflows).
cross_entropy(x, t) = mean_n [ -log_softmax(x_n)_{t_n} ], gradient (softmax(x_n) - onehot(t_n)) / N.
"""
from __future__ import annotations

import numpy as np

from bitnet.ops.dims import resolve
from bitnet.tensor import Function, Tensor


def _log_softmax(x, axis):
    shifted = x - x.max(axis=axis, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=axis, keepdims=True))


class LogSoftmax(Function):
    def forward(self, x, axis=-1):
        self.axis = axis
        self.out = _log_softmax(x, axis)
        return self.out

    def backward(self, g):
        return g - np.exp(self.out) * g.sum(axis=self.axis, keepdims=True)


class CrossEntropy(Function):
    def forward(self, logits, targets=None, reduction="mean", label_smoothing=0.0):
        n, k = logits.shape
        logp = _log_softmax(logits, 1)
        self.probs, self.targets, self.reduction, self.ls = np.exp(logp), targets, reduction, label_smoothing
        nll = -logp[np.arange(n), targets]
        if label_smoothing:
            nll = (1 - label_smoothing) * nll - label_smoothing * logp.mean(axis=1)
        if reduction == "none":
            return nll
        total = nll.sum()
        return np.asarray(total / n if reduction == "mean" else total, dtype=logits.dtype)

    def backward(self, g):
        n, k = self.probs.shape
        grad = self.probs.copy()
        grad[np.arange(n), self.targets] -= 1 - self.ls
        if self.ls:
            grad -= self.ls / k
        if self.reduction == "none":
            return grad * g[:, None]
        scale = g / n if self.reduction == "mean" else g
        return (grad * scale).astype(self.probs.dtype, copy=False)


def log_softmax(x, axis=None, *, dim=None) -> Tensor:
    """log_softmax(x)_k = x_k - m - log sum_j exp(x_j - m) along ``axis`` (``dim``; default -1);
    backward: g - softmax(x) * sum_j g_j."""
    axis, _ = resolve("log_softmax", axis, dim, default_axis=-1)
    return LogSoftmax.apply(x, axis=axis)


def softmax(x, axis=None, *, dim=None) -> Tensor:
    """softmax(x)_k = exp(x_k - m) / sum_j exp(x_j - m) along ``axis`` (``dim``; default -1),
    computed as exp(log_softmax(x))."""
    from bitnet.ops.elementwise import exp
    return exp(log_softmax(x, axis, dim=dim))


def cross_entropy(logits, targets, reduction="mean", label_smoothing=0.0) -> Tensor:
    """Softmax cross-entropy of logits (N, K) against integer class targets (N,)."""
    t = np.asarray(targets.data if isinstance(targets, Tensor) else targets)
    if logits.ndim != 2:
        raise ValueError(f"cross_entropy expects logits of shape (N, classes), got {logits.shape}")
    if t.shape != (logits.shape[0],) or t.dtype.kind not in "iu":
        raise ValueError(f"cross_entropy expects integer targets of shape ({logits.shape[0]},), got "
                         f"shape {t.shape} dtype {t.dtype}")
    if t.size and (t.min() < 0 or t.max() >= logits.shape[1]):
        raise ValueError(f"cross_entropy: targets must lie in [0, {logits.shape[1] - 1}], got values "
                         f"from {t.min()} to {t.max()}")
    if reduction not in ("mean", "sum", "none"):
        raise ValueError(f"cross_entropy: reduction must be 'mean', 'sum' or 'none', got {reduction!r}")
    if not 0.0 <= label_smoothing < 1.0:
        raise ValueError(f"cross_entropy: label_smoothing must be in [0, 1), got {label_smoothing}")
    return CrossEntropy.apply(logits, targets=t.astype(np.intp), reduction=reduction,
                              label_smoothing=label_smoothing)


class Dropout(Function):
    """y = x * mask / (1 - p) with mask ~ Bernoulli(1 - p); the gradient uses the same mask."""

    def forward(self, x, p=0.5, rng=None):
        self.mask = (rng.random(x.shape) >= p).astype(x.dtype) / np.asarray(1 - p, dtype=x.dtype)
        return x * self.mask

    def backward(self, g):
        return g * self.mask


def dropout(x, p=0.5, training=True, rng=None) -> Tensor:
    """Inverted dropout; ``rng`` must be a ``numpy.random.Generator`` when training and p > 0."""
    if not 0.0 <= p < 1.0:
        raise ValueError(f"dropout probability must be in [0, 1), got {p}")
    if not training or p == 0.0:
        return x
    if not isinstance(rng, np.random.Generator):
        raise TypeError(f"dropout needs an explicit numpy.random.Generator as rng, got {type(rng).__name__}; "
                        "pass rng=np.random.default_rng(seed)")
    return Dropout.apply(x, p=p, rng=rng)
