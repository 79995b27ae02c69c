"""Batch normalization on "cuda": ``BatchNormTrain``, ``BatchNormEval`` and the fused
``BatchNormMaxPool`` (bitnet/ops/norm.py, bitnet/ops/norm_pool.py) with the device's array module.

The math is that of ``bitnet.kernels.batchnorm`` (its docstring), step for step, so the results are
the CPU's up to the order of the float64 sums. For x (N, C, L) with M = N*L values per channel:

    statistics   d = x - x[0, c, 0] (float64),  md = sum d / M,  var = max(sum d^2 / M - md^2, 0)  (biased)
                 mean = x[0, c, 0] + md,  invstd = 1 / sqrt(var + eps)
    normalize    y = x * a_c + b_c,  a_c = gamma_c invstd_c,  b_c = beta_c - mean_c a_c   (float64, rounded
                 to x's dtype once)
    backward     sg = sum g,  sgd = sum g (x - mean)   (float64)
                 dbeta = sg,  dgamma = sgd invstd,  dx = gamma invstd (g - sg / M - (x - mean) (sgd invstd^2 / M))

Running statistics: ``bitnet.ops.norm.update_running`` itself, which updates the module's buffers in
place with array operators; after ``model.to("cuda")`` those buffers are device arrays, so the update
stays on the device (no transfer, no sync). Buffers left on the host beside "cuda" inputs are refused
with a clear error.

``BatchNormMaxPool`` on the GPU is batch norm, then max pooling of the normalized map over windows
that tile it (a loop over the KH*KW taps: first maximum in scan order, or the last NaN, as
``kernels.pooling``), then tanh if asked; its backward scatters the pooled gradient back to each
window's winning tap and runs batch norm's backward on it (the CPU sums over the pooled positions
only; the zeros added here change only the float64 summation order).
"""
from __future__ import annotations

from bitnet.gpu.arrays import array_module, is_device_array
from bitnet.gpu.dispatch import implements
from bitnet.ops.norm import BatchNormEval, BatchNormTrain, update_running
from bitnet.ops.norm_pool import BatchNormMaxPool


def _as_ncl(x):
    """x (N, C, ...) as (N, C, L); L written out, not -1, which NumPy cannot resolve for an empty batch."""
    length = 1
    for d in x.shape[2:]:
        length *= d
    return x.reshape(x.shape[0], x.shape[1], length)


def _check_buffers(op, running_mean, running_var):
    for name, b in (("running_mean", running_mean), ("running_var", running_var)):
        if b is not None and not is_device_array(b):
            raise RuntimeError(f"{op}: the input is on cuda but {name} (shape {b.shape}) is on the cpu; move the "
                               "module with model.to('cuda') (buffers go with it), or keep everything on the cpu")


def channel_stats(x3, eps):
    """mean and invstd (C,), float64, of x (N, C, L): ``kernels.batchnorm``'s shifted one-pass sums."""
    xp = array_module(x3)
    m = x3.shape[0] * x3.shape[2]
    shift = x3[:1, :, :1]
    d = xp.subtract(x3, shift, dtype=xp.float64)  # both cast to float64 first (exact), then subtracted
    md = d.sum(axis=(0, 2)) / m
    var = xp.maximum((d * d).sum(axis=(0, 2)) / m - md * md, 0.0)
    return xp.add(shift.reshape(-1), md, dtype=xp.float64), 1.0 / xp.sqrt(var + eps)


def normalize_affine(x3, mean, invstd, gamma, beta):
    """x * a + b per channel in float64 (a = gamma invstd, b = beta - mean a), rounded to x's dtype."""
    a = gamma * invstd
    b = beta - mean * a
    return (x3 * a[:, None] + b[:, None]).astype(x3.dtype)


def batch_norm_backward(g3, x3, mean, invstd, gamma):
    """(dx in g's dtype, dgamma, dbeta in float64) for g, x (N, C, L); module docstring."""
    xp = array_module(g3)
    m = g3.shape[0] * g3.shape[2]
    # g and x are cast to float64 inside each operation (exact), not copied to float64 arrays first
    xm = xp.subtract(x3, mean[:, None], dtype=xp.float64)
    sg = g3.sum(axis=(0, 2), dtype=xp.float64)
    sgd = xp.multiply(g3, xm, dtype=xp.float64).sum(axis=(0, 2))
    k = gamma * invstd
    mg = sg / m
    mgx = sgd * invstd * invstd / m
    gx = (k[:, None] * (xp.subtract(g3, mg[:, None], dtype=xp.float64) - xm * mgx[:, None])).astype(g3.dtype)
    return gx, sgd * invstd, sg


@implements(BatchNormTrain)
class BatchNormTrainGPU(BatchNormTrain):
    """Batch norm with the batch's statistics on device arrays (module docstring)."""

    def forward(self, x, gamma, beta, eps=1e-5, running_mean=None, running_var=None, momentum=0.1):
        _check_buffers("batch_norm", running_mean, running_var)
        x3 = _as_ncl(x)
        mean, invstd = channel_stats(x3, eps)
        out = normalize_affine(x3, mean, invstd, gamma, beta)
        self.x, self.gamma, self.mean, self.invstd = x3, gamma, mean, invstd
        update_running(running_mean, running_var, mean, invstd, eps, momentum, x3.shape[0] * x3.shape[2])
        return out.reshape(x.shape)

    def backward(self, g):
        gx, gg, gb = batch_norm_backward(_as_ncl(g), self.x, self.mean, self.invstd, self.gamma)
        return gx.reshape(g.shape), gg.astype(g.dtype), gb.astype(g.dtype)


@implements(BatchNormEval)
class BatchNormEvalGPU(BatchNormEval):
    """Batch norm with the running statistics: the forward on device arrays; the CPU backward (plain
    array operators) as it is."""

    def forward(self, x, gamma, beta, mean=None, var=None, eps=1e-5):
        _check_buffers("batch_norm", mean, var)
        xp = array_module(x)
        self.invstd = 1.0 / xp.sqrt(var.astype(xp.float64) + eps)
        self.x, self.mean, self.gamma = x, mean.astype(xp.float64), gamma
        return normalize_affine(_as_ncl(x), self.mean, self.invstd, gamma, beta).reshape(x.shape)


def tiled_max_pool(z, kh, kw):
    """(out, tap) of max pooling z (N, C, H, W) over KHxKW windows with stride = window and no padding
    (a remainder row or column is dropped): out the window's first maximum in scan order, or its last
    NaN (``kernels.pooling``'s rule); tap the winner's place in the window, i * KW + j."""
    xp = array_module(z)
    n, c, h, w = z.shape
    oh, ow = h // kh, w // kw
    z6 = z[:, :, :oh * kh, :ow * kw].reshape(n, c, oh, kh, ow, kw)
    best = z6[:, :, :, 0, :, 0]
    tap = xp.zeros(best.shape, xp.int32)
    for i in range(kh):
        for j in range(kw):
            if i or j:  # tap (0, 0) against itself changes nothing, NaN or not
                v = z6[:, :, :, i, :, j]
                better = (v > best) | (v != v)
                best = xp.where(better, v, best)
                tap = xp.where(better, i * kw + j, tap)
    return xp.ascontiguousarray(best), tap


def scatter_to_taps(g, tap, shape, kh, kw):
    """The dense (N, C, H, W) gradient of ``tiled_max_pool``: g at each window's winning tap, 0 elsewhere."""
    xp = array_module(g)
    n, c, oh, ow = g.shape
    g6 = xp.zeros((n, c, oh, kh, ow, kw), g.dtype)
    zero = xp.zeros((), g.dtype)
    for i in range(kh):
        for j in range(kw):
            g6[:, :, :, i, :, j] = xp.where(tap == i * kw + j, g, zero)
    dense = g6.reshape(n, c, oh * kh, ow * kw)
    if (oh * kh, ow * kw) != tuple(shape[2:]):
        dense = xp.pad(dense, ((0, 0), (0, 0), (0, shape[2] - oh * kh), (0, shape[3] - ow * kw)))
    return dense


@implements(BatchNormMaxPool)
class BatchNormMaxPoolGPU(BatchNormMaxPool):
    """``[tanh](max_pool(batch_norm(x)))`` on device arrays as batch norm followed by a tiled max pool
    (module docstring); values and gradients those of the CPU op."""

    def forward(self, x, gamma, beta, eps=1e-5, running_mean=None, running_var=None, momentum=0.1,
                kernel=(2, 2), act=None):
        _check_buffers("batch_norm_max_pool", running_mean, running_var)
        xp = array_module(x)
        x = xp.ascontiguousarray(x)
        n_img, channels, height, width = x.shape
        x3 = _as_ncl(x)
        mean, invstd = channel_stats(x3, eps)
        update_running(running_mean, running_var, mean, invstd, eps, momentum, n_img * height * width)
        z = normalize_affine(x3, mean, invstd, gamma, beta).reshape(x.shape)
        self.kernel = tuple(kernel)
        out, self.tap = tiled_max_pool(z, *self.kernel)
        self.x, self.gamma, self.mean, self.invstd = x, gamma, mean, invstd
        self.y = xp.tanh(out) if act == "tanh" else None
        return out if self.y is None else self.y

    def backward(self, g):
        xp = array_module(g)
        if self.y is not None:  # g (1 - y^2) with 1 - y^2 in float64, as kernels.activations.tanh_backward
            g = g.astype(self.y.dtype)
            g = (g.astype(xp.float64) * (1 - (self.y * self.y).astype(xp.float64))).astype(self.y.dtype)
        dense = scatter_to_taps(g, self.tap, self.x.shape, *self.kernel)
        gx, gg, gb = batch_norm_backward(_as_ncl(dense), _as_ncl(self.x), self.mean, self.invstd, self.gamma)
        return gx.reshape(self.x.shape), gg.astype(g.dtype), gb.astype(g.dtype)
