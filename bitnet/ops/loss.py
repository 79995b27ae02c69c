"""Softmax, log-softmax and the numerically stable softmax cross-entropy; dropout.

log_softmax(x)_k = x_k - m - log sum_j exp(x_j - m), m = max_j x_j (so no exp overflows).
cross_entropy(x, t) = mean_n [ -log_softmax(x_n)_{t_n} ], gradient (softmax(x_n) - onehot(t_n)) / N.

With class weights w (K,), ignore_index and label smoothing e (PyTorch's definitions), writing
l_nk = -log_softmax(x_n)_k, keep_n = [t_n != ignore_index] and wt_n = keep_n w_{t_n}:

    loss_n = (1 - e) wt_n l_{n t_n} + (e / K) keep_n sum_k w_k l_nk        (0 for ignored samples)
    mean   = sum_n loss_n / sum_n wt_n   (NaN when every target is ignored, as PyTorch)
    d loss_n / d x_ni = p_ni ((1 - e) wt_n + (e / K) keep_n W) - (1 - e) wt_n [i = t_n] - (e / K) keep_n w_i

with p = softmax(x) and W = sum_k w_k. Without weights w = 1 (W = K).

Every op here is written once for both devices (``devices = ("cpu", "cuda")``): it computes with the
array module of its input (NumPy, or CuPy on the GPU, ``bitnet.gpu.arrays``). Targets and class
weights are validated on the host by ``cross_entropy`` (the range check needs their values; labels on
the GPU cost one small copy back) and moved to the logits' device by the ops. The loss stays where
the logits are. Dropout draws its mask on the host from the given Generator, as on the CPU, and moves
it to the device: the same seed drops the same elements on both devices.
"""
from __future__ import annotations

import numpy as np

from bitnet.gpu.arrays import array_module, device_of, to_device, to_host
from bitnet.ops.dims import resolve
from bitnet.tensor import Function, Tensor


def _log_softmax(x, axis):
    xp = array_module(x)
    shifted = x - x.max(axis=axis, keepdims=True)
    return shifted - xp.log(xp.exp(shifted).sum(axis=axis, keepdims=True))


class LogSoftmax(Function):
    devices = ("cpu", "cuda")
    float_inputs = "log_softmax"  # integer / bool inputs computed in float32 (bitnet.ops.dtypes)

    def forward(self, x, axis=-1):
        self.axis = axis
        self.out = _log_softmax(x, axis)
        return self.out

    def backward(self, g):
        return g - array_module(g).exp(self.out) * g.sum(axis=self.axis, keepdims=True)


class CrossEntropy(Function):
    devices = ("cpu", "cuda")
    float_inputs = "cross_entropy"

    def forward(self, logits, targets=None, reduction="mean", label_smoothing=0.0):
        targets = to_device(targets, device_of(logits))
        self.probs, nll = cross_entropy_rows(logits, targets, label_smoothing)
        self.targets, self.reduction, self.ls = targets, reduction, label_smoothing
        if reduction == "none":
            return nll
        total = nll.sum()
        return array_module(logits).asarray(total / len(nll) if reduction == "mean" else total, dtype=logits.dtype)

    def backward(self, g):
        return cross_entropy_grad(self.probs, self.targets, self.ls, g, self.reduction)


def cross_entropy_rows(logits, targets, label_smoothing):
    """``(softmax(logits), loss_n)`` for logits (N, K) and targets (N,) on one device:
    loss_n = -log_softmax(x_n)_{t_n}, with label smoothing e (1 - e) loss_n - e mean_k log_softmax(x_n)_k."""
    xp = array_module(logits)
    logp = _log_softmax(logits, 1)
    nll = -logp[xp.arange(len(logits)), targets]
    if label_smoothing:
        nll = (1 - label_smoothing) * nll - label_smoothing * logp.mean(axis=1)
    return xp.exp(logp), nll


def cross_entropy_grad(probs, targets, label_smoothing, g, reduction):
    """d loss / d logits = (probs - (1 - e) onehot(t) - e / K) times g (reduction "sum"), g / N ("mean")
    or g_n per row ("none")."""
    n, k = probs.shape
    grad = probs.copy()
    grad[array_module(probs).arange(n), targets] -= 1 - label_smoothing
    if label_smoothing:
        grad -= label_smoothing / k
    if reduction == "none":
        return grad * g[:, None]
    scale = g / n if reduction == "mean" else g
    return (grad * scale).astype(probs.dtype, copy=False)


class WeightedCrossEntropy(Function):
    """cross_entropy with class weights and/or ignored targets (module docstring)."""

    devices = ("cpu", "cuda")
    float_inputs = "cross_entropy"

    def forward(self, logits, targets=None, reduction="mean", label_smoothing=0.0, weight=None,
                ignore_index=-100):
        xp, device = array_module(logits), device_of(logits)
        n, k = logits.shape
        dt = logits.dtype
        logp = _log_softmax(logits, 1)
        targets = to_device(targets, device)
        keep = targets != ignore_index
        safe = xp.where(keep, targets, 0)
        w = xp.ones(k, dt) if weight is None else to_device(weight, device).astype(dt, copy=False)
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
            return xp.asarray(total, dtype=dt)
        self.denom = wt.sum()
        with np.errstate(invalid="ignore", divide="ignore"):  # (NaN when every target is ignored)
            return xp.asarray(total / self.denom, dtype=dt)

    def backward(self, g):
        n, k = self.probs.shape
        e, keep, wt = self.ls, self.keep, self.wt
        coef = (1 - e) * wt + (e / k) * self.w.sum() * keep
        grad = self.probs * coef[:, None]
        grad[self.rows, self.safe] -= (1 - e) * wt
        if e:
            grad -= (e / k) * self.w[None, :] * keep[:, None]
        if self.reduction == "none":
            return (grad * g[:, None]).astype(self.probs.dtype, copy=False)
        with np.errstate(invalid="ignore", divide="ignore"):
            scale = g / self.denom if self.reduction == "mean" else g
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


def cross_entropy(logits, targets, reduction="mean", label_smoothing=0.0, weight=None,
                  ignore_index=-100) -> Tensor:
    """Softmax cross-entropy of logits (N, K) against integer class targets (N,), as PyTorch:
    ``weight`` (K,) rescales each class, targets equal to ``ignore_index`` contribute nothing, and
    the mean divides by the summed weights of the kept targets (module docstring). Targets and weight
    may be host arrays or tensors on either device; they are checked on the host (module docstring)."""
    t = np.asarray(to_host(targets.data if isinstance(targets, Tensor) else targets))  # device labels: a host copy
    if logits.ndim != 2:
        raise ValueError(f"cross_entropy expects logits of shape (N, classes), got {logits.shape}")
    n, k = logits.shape
    if t.shape != (n,) or t.dtype.kind not in "iu":
        raise ValueError(f"cross_entropy expects integer targets of shape ({n},), got "
                         f"shape {t.shape} dtype {t.dtype}")
    kept = t[t != ignore_index]
    if kept.size and (kept.min() < 0 or kept.max() >= k):
        raise ValueError(f"cross_entropy: targets must lie in [0, {k - 1}] (or equal ignore_index="
                         f"{ignore_index}), got values from {kept.min()} to {kept.max()}")
    if reduction not in ("mean", "sum", "none"):
        raise ValueError(f"cross_entropy: reduction must be 'mean', 'sum' or 'none', got {reduction!r}")
    if not 0.0 <= label_smoothing < 1.0:
        raise ValueError(f"cross_entropy: label_smoothing must be in [0, 1), got {label_smoothing}")
    if weight is not None:
        weight = np.asarray(to_host(weight.data if isinstance(weight, Tensor) else weight))
        if weight.shape != (k,) or weight.dtype.kind not in "fiu":
            raise ValueError(f"cross_entropy: weight must be a float array of shape ({k},) (one weight per "
                             f"class), got shape {weight.shape} dtype {weight.dtype}")
    t = t.astype(np.intp)
    if weight is None and kept.size == n:  # the plain case, as before (same arithmetic, same bits)
        return CrossEntropy.apply(logits, targets=t, reduction=reduction, label_smoothing=label_smoothing)
    return WeightedCrossEntropy.apply(logits, targets=t, reduction=reduction, label_smoothing=label_smoothing,
                                      weight=weight, ignore_index=int(ignore_index))


class Dropout(Function):
    """y = x * mask / (1 - p) with mask ~ Bernoulli(1 - p); the gradient uses the same mask (drawn on
    the host by ``rng``, then moved to x's device: module docstring)."""

    devices = ("cpu", "cuda")
    float_inputs = "dropout"

    def forward(self, x, p=0.5, rng=None):
        xp = array_module(x)
        keep = to_device(rng.random(x.shape) >= p, device_of(x))
        self.mask = keep.astype(x.dtype) / xp.asarray(1 - p, dtype=x.dtype)
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
