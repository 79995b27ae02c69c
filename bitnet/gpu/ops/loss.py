"""Log-softmax, softmax cross-entropy and dropout on "cuda" (bitnet/ops/loss.py, whose docstring has
the math), with the device's array module.

    log_softmax(x)_k = x_k - m - log sum_j exp(x_j - m),  m = max_j x_j;  backward g - softmax(x) sum_j g_j
    cross_entropy: loss_n = (1 - e) wt_n l_{n t_n} + (e / K) keep_n sum_k w_k l_nk,  l = -log_softmax(x)
                   gradient p_ni ((1 - e) wt_n + (e / K) keep_n W) - (1 - e) wt_n [i = t_n] - (e / K) keep_n w_i

Targets (labels): ``cross_entropy`` takes them as a host integer array or a tensor on either device; it
validates them on the host (the range check of the CPU needs their values; device labels cost one
small copy and a sync), so the ``CrossEntropy`` / ``WeightedCrossEntropy`` ops receive host integer
arrays (or device arrays, if called directly) and move them to the device here (N integers a step).
Class weights likewise. The loss stays on the device: a 0-d array of the logits' dtype for "mean" and
"sum", (N,) for "none"; nothing is brought back to the host.

Dropout: the mask is drawn on the host with the same ``numpy.random.Generator`` call as on the CPU
(``rng.random(x.shape) >= p``), then moved to the device as booleans, so a CPU run and a GPU run from
the same seed drop the same elements and the Generator's state advances alike. (Drawing on the host
costs host time and a host-to-device copy of N bytes per call: reproducibility first.)
"""
from __future__ import annotations

import numpy as np

from bitnet.gpu.arrays import array_module, to_device
from bitnet.gpu.dispatch import implements
from bitnet.ops.loss import CrossEntropy, Dropout, LogSoftmax, WeightedCrossEntropy


def log_softmax(x, axis):
    """x - max - log sum exp(x - max) along ``axis`` (``bitnet.ops.loss._log_softmax``)."""
    xp = array_module(x)
    shifted = x - x.max(axis=axis, keepdims=True)
    return shifted - xp.log(xp.exp(shifted).sum(axis=axis, keepdims=True))


@implements(LogSoftmax)
class LogSoftmaxGPU(LogSoftmax):
    def forward(self, x, axis=-1):
        self.axis = axis
        self.out = log_softmax(x, axis)
        return self.out

    def backward(self, g):
        return g - array_module(g).exp(self.out) * g.sum(axis=self.axis, keepdims=True)


@implements(CrossEntropy)
class CrossEntropyGPU(CrossEntropy):
    """Plain cross-entropy (every target kept, no class weights) on device arrays."""

    def forward(self, logits, targets=None, reduction="mean", label_smoothing=0.0):
        xp = array_module(logits)
        n, k = logits.shape
        logp = log_softmax(logits, 1)
        self.rows, self.targets = xp.arange(n), to_device(targets, "cuda")
        self.probs, self.reduction, self.ls = xp.exp(logp), reduction, label_smoothing
        nll = -logp[self.rows, self.targets]
        if label_smoothing:
            nll = (1 - label_smoothing) * nll - label_smoothing * logp.mean(axis=1)
        if reduction == "none":
            return nll
        total = nll.sum()
        return (total / n if reduction == "mean" else total).astype(logits.dtype)

    def backward(self, g):
        n, k = self.probs.shape
        grad = self.probs.copy()
        grad[self.rows, self.targets] -= 1 - self.ls
        if self.ls:
            grad -= self.ls / k
        if self.reduction == "none":
            return grad * g[:, None]
        scale = g / n if self.reduction == "mean" else g
        return (grad * scale).astype(self.probs.dtype, copy=False)


@implements(WeightedCrossEntropy)
class WeightedCrossEntropyGPU(WeightedCrossEntropy):
    """Cross-entropy with class weights and/or ignored targets on device arrays (the CPU class's
    backward)."""

    def forward(self, logits, targets=None, reduction="mean", label_smoothing=0.0, weight=None,
                ignore_index=-100):
        xp = array_module(logits)
        n, k = logits.shape
        dt = logits.dtype
        logp = log_softmax(logits, 1)
        targets = to_device(targets, "cuda")
        keep = targets != ignore_index
        safe = xp.where(keep, targets, 0)
        w = xp.ones(k, dt) if weight is None else to_device(weight, "cuda").astype(dt, copy=False)
        wt = xp.where(keep, w[safe], xp.zeros((), dt))
        self.rows = xp.arange(n)
        loss = -logp[self.rows, safe] * wt
        if label_smoothing:
            smooth = -(logp * w).sum(axis=1) * keep
            loss = (1 - label_smoothing) * loss + (label_smoothing / k) * smooth
        self.probs, self.safe, self.keep, self.w, self.wt = xp.exp(logp), safe, keep, w, wt
        self.reduction, self.ls = reduction, label_smoothing
        if reduction == "none":
            return loss.astype(dt, copy=False)
        total = loss.sum()
        if reduction == "sum":
            return total.astype(dt)
        self.denom = wt.sum()
        with np.errstate(invalid="ignore", divide="ignore"):  # NaN when every target is ignored (emulation: no warning)
            return (total / self.denom).astype(dt)

    # backward: the CPU class's (array math on self.rows, self.safe ... which are device arrays here)


@implements(Dropout)
class DropoutGPU(Dropout):
    """y = x * mask / (1 - p), the mask drawn on the host by ``rng`` exactly as on the CPU (module
    docstring) and scaled on the device; the backward (g * mask) is the CPU's."""

    def forward(self, x, p=0.5, rng=None):
        xp = array_module(x)
        keep = xp.asarray(rng.random(x.shape) >= p)
        self.mask = keep.astype(x.dtype) / xp.asarray(np.asarray(1 - p, dtype=x.dtype))
        return x * self.mask
