"""Softmax cross-entropy on "cuda" in three kernel launches (``bitnet.kernels.cuda_loss``): the rows'
softmax and losses, their sum (not for reduction "none"), and the gradient. The math is
``bitnet.ops.loss.CrossEntropy``'s (cross_entropy without class weights or ignored targets):

    loss_n = -log_softmax(x_n)_{t_n}   (label smoothing e: (1 - e) loss_n - e mean_k log_softmax(x_n)_k)
    d loss / d x_nk = softmax(x_n)_k - (1 - e) [k = t_n] - e / K, times the incoming gradient

Logits of other dtypes than float32 / float64, and empty ones, take the CPU class's array
operations, which run on the device too.
"""
from __future__ import annotations

from bitnet.gpu.arrays import array_module, device_of, to_device
from bitnet.gpu.dispatch import implements
from bitnet.gpu.raw_kernels import blocks_for, c_type, launch, takes
from bitnet.kernels import cuda_loss as KL
from bitnet.ops.loss import CrossEntropy


@implements(CrossEntropy)
class CrossEntropyOnDevice(CrossEntropy):
    def forward(self, logits, targets=None, reduction="mean", label_smoothing=0.0):
        self.fused = takes(logits.dtype) and logits.size > 0
        if not self.fused:
            return super().forward(logits, targets, reduction, label_smoothing)
        xp = array_module(logits)
        x = xp.ascontiguousarray(logits)
        n, k = x.shape
        t = xp.ascontiguousarray(to_device(targets, device_of(x)), dtype="int64")
        self.macros = dict(CE_T=c_type(x.dtype))
        self.probs, nll = xp.empty_like(x), xp.empty(n, x.dtype)
        self.targets, self.reduction, self.ls = t, reduction, float(label_smoothing)
        launch(KL, "ce_rows", blocks_for(n, KL.THREADS), KL.THREADS, (x, t, n, k, self.ls, self.probs, nll),
               self.macros)
        if reduction == "none":
            return nll
        out = xp.empty((), x.dtype)
        launch(KL, "ce_total", 1, 1, (nll, n, int(reduction == "mean"), out), self.macros)
        return out

    def backward(self, g):
        if not self.fused or g.dtype != self.probs.dtype:
            return super().backward(g)
        xp = array_module(self.probs)
        n, k = self.probs.shape
        dx = xp.empty_like(self.probs)
        g = g if g.flags.c_contiguous else xp.ascontiguousarray(g)  # (a 0-d g as it is: no copy)
        launch(KL, "ce_grad", blocks_for(n * k, KL.THREADS), KL.THREADS,
               (self.probs, self.targets, g, n, k, self.ls, KL.REDUCTIONS[self.reduction], dx), self.macros)
        return dx
