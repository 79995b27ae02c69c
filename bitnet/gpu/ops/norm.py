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

These run as six CUDA C kernels of bitnet's own (``bitnet.kernels.cuda_batchnorm``, launched by
``bitnet.gpu.raw_kernels``): statistics (partial sums, then per channel the sums, mean, invstd, a, b
and the running averages), normalization, and the backward's partial sums, per-channel coefficients
and dx; three launches a pass, where the same math in array operations took about fifty. On the
emulation the same six run as NumPy functions.

Running statistics: ``bitnet.ops.norm.update_running``'s formula, applied by the statistics kernel to
the module's buffers in place; after ``model.to("cuda")`` those buffers are device arrays, so the
update stays on the device (no transfer, no sync). Buffers left on the host beside "cuda" inputs are
refused with a clear error.

``BatchNormMaxPool`` on the GPU is batch norm, then max pooling of the normalized map over windows
that tile it (``bitnet.kernels.cuda_pooling``: first maximum in scan order, or the last NaN, as
``kernels.pooling``), then tanh if asked; its backward scatters the pooled gradient back to each
window's winning tap (a kernel) and runs batch norm's backward on it (the CPU sums over the pooled positions
only; the zeros added here change only the float64 summation order).
"""
from __future__ import annotations

from bitnet.gpu.arrays import array_module, is_device_array
from bitnet.gpu.dispatch import implements
from bitnet.gpu.ops.elementwise import activation_backward
from bitnet.gpu.raw_kernels import blocks_for, c_type, launch
from bitnet.kernels import cuda_batchnorm as KB
from bitnet.kernels import cuda_pooling as KP
from bitnet.ops.norm import BatchNormEval, BatchNormTrain
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


def _macros(x3, gamma, beta, running_mean, running_var):
    """The element types of the batch-norm kernels (``bitnet.kernels.cuda_batchnorm``) for these arrays."""
    rm = x3 if running_mean is None else running_mean
    rv = x3 if running_var is None else running_var
    return dict(BN_T=c_type(x3.dtype), BN_P=c_type(gamma.dtype), BN_B=c_type(beta.dtype), BN_R=c_type(rm.dtype),
                BN_V=c_type(rv.dtype))


def batch_stats(x3, gamma, beta, eps, running_mean=None, running_var=None, momentum=0.1):
    """``(mean, invstd, a, b)``, float64 (C,), of x (N, C, L), with a = gamma invstd and
    b = beta - mean a (the normalization's y = x a + b); the running averages, when given, updated in
    place on the device. Two kernel launches (``bitnet.kernels.cuda_batchnorm``: stats_partial,
    stats_finalize)."""
    xp = array_module(x3)
    x3 = xp.ascontiguousarray(x3)
    n_img, channels, length = x3.shape
    m = n_img * length
    parts = KB.parts_per_channel(channels, m)
    part = xp.empty(2 * channels * parts, xp.float64)
    mean, invstd, a, b = (xp.empty(channels, xp.float64) for _ in range(4))
    gamma, beta = xp.ascontiguousarray(gamma), xp.ascontiguousarray(beta)  # no copy where they are already
    tracked = running_mean is not None
    rm, rv = (xp.ascontiguousarray(r) if tracked else mean for r in (running_mean, running_var))
    macros = _macros(x3, gamma, beta, running_mean, running_var)
    launch(KB, "bn_stats_partial", blocks_for(channels * parts, KB.THREADS), KB.THREADS,
           (x3, n_img, channels, length, parts, part), macros)
    launch(KB, "bn_stats_finalize", blocks_for(channels, KB.THREADS), KB.THREADS,
           (part, x3, channels, length, parts, m, float(eps), float(momentum), int(tracked), gamma, beta,
            rm, rv, mean, invstd, a, b), macros)
    for buffer, updated in ((running_mean, rm), (running_var, rv)):
        if tracked and not buffer.flags.c_contiguous:  # the kernel wrote a contiguous copy
            buffer[...] = updated
    return mean, invstd, a, b


def normalize(x3, a, b):
    """y = x a + b per channel (a, b float64 (C,)), computed in float64 and rounded to x's dtype once;
    one kernel launch."""
    xp = array_module(x3)
    x3, a, b = xp.ascontiguousarray(x3), xp.ascontiguousarray(a), xp.ascontiguousarray(b)  # no copy if they are
    y = xp.empty(x3.shape, x3.dtype)
    _, channels, length = x3.shape
    launch(KB, "bn_normalize", blocks_for(x3.size, KB.THREADS), KB.THREADS, (x3, x3.size, channels, length, a, b, y),
           dict(BN_T=c_type(x3.dtype)))
    return y


def batch_norm_backward(g3, x3, mean, invstd, gamma):
    """(dx, dgamma, dbeta) in x's dtype for g, x (N, C, L) (module docstring); three kernel launches."""
    xp = array_module(g3)
    if g3.dtype != x3.dtype:
        g3 = g3.astype(x3.dtype)
    g3, x3, gamma = xp.ascontiguousarray(g3), xp.ascontiguousarray(x3), xp.ascontiguousarray(gamma)
    n_img, channels, length = g3.shape
    m = n_img * length
    parts = KB.parts_per_channel(channels, m)
    part = xp.empty(2 * channels * parts, xp.float64)
    k, mg, mgx = (xp.empty(channels, xp.float64) for _ in range(3))
    dgamma, dbeta = xp.empty(channels, x3.dtype), xp.empty(channels, x3.dtype)
    gx = xp.empty(g3.shape, x3.dtype)
    macros = dict(BN_T=c_type(x3.dtype), BN_P=c_type(gamma.dtype))
    launch(KB, "bn_grad_partial", blocks_for(channels * parts, KB.THREADS), KB.THREADS,
           (g3, x3, n_img, channels, length, parts, mean, part), macros)
    launch(KB, "bn_grad_finalize", blocks_for(channels, KB.THREADS), KB.THREADS,
           (part, channels, parts, m, invstd, gamma, k, mg, mgx, dgamma, dbeta), macros)
    launch(KB, "bn_grad_input", blocks_for(g3.size, KB.THREADS), KB.THREADS,
           (g3, x3, g3.size, channels, length, mean, k, mg, mgx, gx), macros)
    return gx, dgamma, dbeta


@implements(BatchNormTrain)
class BatchNormTrainGPU(BatchNormTrain):
    """Batch norm with the batch's statistics on device arrays (module docstring)."""

    owned_grads = (0, 1, 2)  # batch_norm_backward's new arrays

    def forward(self, x, gamma, beta, eps=1e-5, running_mean=None, running_var=None, momentum=0.1):
        _check_buffers("batch_norm", running_mean, running_var)
        x3 = array_module(x).ascontiguousarray(_as_ncl(x))
        mean, invstd, a, b = batch_stats(x3, gamma, beta, eps, running_mean, running_var, momentum)
        self.x, self.gamma, self.mean, self.invstd = x3, gamma, mean, invstd
        return normalize(x3, a, b).reshape(x.shape)

    def backward(self, g):
        gx, gg, gb = batch_norm_backward(_as_ncl(g), self.x, self.mean, self.invstd, self.gamma)
        return gx.reshape(g.shape), gg, gb


@implements(BatchNormEval)
class BatchNormEvalGPU(BatchNormEval):
    """Batch norm with the running statistics: the forward on device arrays; the CPU backward (plain
    array operators) as it is."""

    def forward(self, x, gamma, beta, mean=None, var=None, eps=1e-5):
        _check_buffers("batch_norm", mean, var)
        xp = array_module(x)
        self.invstd = 1.0 / xp.sqrt(var.astype(xp.float64) + eps)
        self.x, self.mean, self.gamma = x, mean.astype(xp.float64), gamma
        a = gamma * self.invstd
        b = beta - self.mean * a
        return normalize(xp.ascontiguousarray(_as_ncl(x)), a, b).reshape(x.shape)


def tiled_max_pool(z, kh, kw):
    """(out, tap) of max pooling z (N, C, H, W) over KHxKW windows with stride = window and no padding
    (a remainder row or column is dropped): out the window's first maximum in scan order, or its last
    NaN (``kernels.pooling``'s rule); tap the winner's place in the window, i * KW + j (int32). One
    kernel launch (``bitnet.kernels.cuda_pooling``)."""
    xp = array_module(z)
    z = xp.ascontiguousarray(z)
    n, c, h, w = z.shape
    out = xp.empty((n, c, h // kh, w // kw), z.dtype)
    tap = xp.empty(out.shape, xp.int32)
    launch(KP, "pool_tiled_max", blocks_for(out.size, KP.THREADS), KP.THREADS, (z, out.size, h, w, kh, kw, out, tap),
           dict(PO_T=c_type(z.dtype)))
    return out, tap


def scatter_to_taps(g, tap, shape, kh, kw):
    """The dense (N, C, H, W) gradient of ``tiled_max_pool``: g at each window's winning tap, 0 elsewhere;
    one kernel launch."""
    xp = array_module(g)
    g = xp.ascontiguousarray(g)
    dense = xp.empty(tuple(shape), g.dtype)
    launch(KP, "pool_to_taps", blocks_for(dense.size, KP.THREADS), KP.THREADS,
           (g, xp.ascontiguousarray(tap), dense.size, shape[2], shape[3], kh, kw, dense), dict(PO_T=c_type(g.dtype)))
    return dense


@implements(BatchNormMaxPool)
class BatchNormMaxPoolGPU(BatchNormMaxPool):
    """``[tanh](max_pool(batch_norm(x)))`` on device arrays as batch norm followed by a tiled max pool
    (module docstring); values and gradients those of the CPU op."""

    owned_grads = (0, 1, 2)  # batch_norm_backward's new arrays

    def forward(self, x, gamma, beta, eps=1e-5, running_mean=None, running_var=None, momentum=0.1,
                kernel=(2, 2), act=None):
        _check_buffers("batch_norm_max_pool", running_mean, running_var)
        xp = array_module(x)
        x = xp.ascontiguousarray(x)
        n_img, channels, height, width = x.shape
        x3 = _as_ncl(x)
        mean, invstd, a, b = batch_stats(x3, gamma, beta, eps, running_mean, running_var, momentum)
        z = normalize(x3, a, b).reshape(x.shape)
        self.kernel = tuple(kernel)
        out, self.tap = tiled_max_pool(z, *self.kernel)
        self.x, self.gamma, self.mean, self.invstd = x, gamma, mean, invstd
        self.y = xp.tanh(out) if act == "tanh" else None
        return out if self.y is None else self.y

    def backward(self, g):
        if self.y is not None:  # g (1 - y^2), rounded as the CPU's kernels.activations.tanh_backward
            g = activation_backward("tanh_backward", g, self.y)
        dense = scatter_to_taps(g, self.tap, self.x.shape, *self.kernel)
        gx, gg, gb = batch_norm_backward(_as_ncl(dense), _as_ncl(self.x), self.mean, self.invstd, self.gamma)
        return gx.reshape(self.x.shape), gg, gb
