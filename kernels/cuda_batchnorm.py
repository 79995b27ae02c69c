"""Batch norm's training passes as six CUDA C kernels (launched by CuPy: ``bitnet.gpu.raw_kernels``),
and the same six in NumPy, which the emulation runs in their place.

For x (N, C, L) contiguous, M = N*L values per channel, the element e = n*L + l of channel c at
x[(n*C + c)*L + l], and J partial sums per channel (thread j takes e = j, j + J, j + 2J, ...):

    stats_partial      part[c, j] = (sum d, sum d^2) over its e,  d = double(x) - double(x[0, c, 0])
    stats_finalize     per channel, the partials summed in order j = 0..J-1:
                       md = s1 / M,  var = max(s2 / M - md^2, 0),  mean = x[0, c, 0] + md,
                       invstd = 1 / sqrt(var + eps),  a = gamma invstd,  b = beta - mean a
                       and, when tracked, the running averages (``bitnet.ops.norm.update_running``):
                       rm = rm * R(1 - momentum) + R(momentum mean)
                       rv = rv * R(1 - momentum) + R(momentum (1 / invstd^2 - eps) M / (M - 1))
    normalize          y = T(double(x) a[c] + b[c])
    grad_partial       part[c, j] = (sum g, sum g (x - mean)) over its e, in double
    grad_finalize      sg, sgd summed in order; k = gamma invstd, mg = sg / M, mgx = sgd invstd^2 / M,
                       dgamma = T(sgd invstd), dbeta = T(sg)
    grad_input         dx = T(k[c] ((double(g) - mg[c]) - (double(x) - mean[c]) mgx[c]))

(``long long``: 64 bits on every platform. T: the activations' type; gamma's, beta's, the running
mean's and variance's: macros BN_T, BN_P, BN_B, BN_R, BN_V.)
That is kernels/batchnorm.py's math with the sums in another order, three launches for the forward
and three for the backward instead of about fifty array operations. The module is compiled with
``--fmad=false``: every + and * is rounded on its own, as in NumPy, so the elementwise kernels give
the NumPy functions' bits from the same inputs, and the sums differ only by their order.

The kernels have no shared memory and no barriers: each thread's work is independent of the others',
so a C++ compiler can run the same source on the CPU, thread by thread (tests/gpu_training/
test_cuda_c_sources.py compares it there with the NumPy functions below).
"""
from __future__ import annotations

import numpy as np

from bitnet.kernels import cuda_index

SOURCE = cuda_index.SOURCE + r"""
__device__ int bn_channel(long long i, long long size, int channels, int length) {
    long long n, c, l;                      /* c of element i = (n C + c) L + l (bitnet.kernels.cuda_index) */
    split3(i, size, channels, length, &n, &c, &l);
    return (int)c;
}

extern "C" __global__ void bn_stats_partial(const BN_T* x, int n_img, int channels, int length, int parts,
                                            double* part) {
    long long t = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (t >= (long long)channels * parts) return;
    int c = (int)(t / parts), j = (int)(t % parts);
    long long m = (long long)n_img * length;
    double shift = (double)x[(long long)c * length];
    double s1 = 0.0, s2 = 0.0;
    long long n = 0, l = 0, dn = 0, dl = 0;             /* e = n L + l, stepped by J without dividing */
    if (length > 0) { n = j / length; l = j % length; dn = parts / length; dl = parts % length; }
    for (long long e = j; e < m; e += parts) {
        double d = (double)x[(n * channels + c) * length + l] - shift;
        s1 = s1 + d;
        s2 = s2 + d * d;
        n += dn;
        l += dl;
        if (l >= length) { l -= length; n += 1; }
    }
    part[2 * t] = s1;
    part[2 * t + 1] = s2;
}

__device__ void bn_sum_parts(const double* part, int c, int parts, double* first, double* second) {
    double s1 = 0.0, s2 = 0.0;              /* channel c's J pairs of partial sums, in order j = 0..J-1 */
    for (int j = 0; j < parts; j++) {
        s1 = s1 + part[2 * ((long long)c * parts + j)];
        s2 = s2 + part[2 * ((long long)c * parts + j) + 1];
    }
    *first = s1;
    *second = s2;
}

extern "C" __global__ void bn_stats_finalize(const double* part, const BN_T* x, int channels, int length, int parts,
                                             long long m, double eps, double momentum, int tracked, const BN_P* gamma,
                                             const BN_B* beta, BN_R* running_mean, BN_V* running_var,
                                             double* mean, double* invstd, double* a, double* b) {
    int c = blockIdx.x * blockDim.x + threadIdx.x;
    if (c >= channels) return;
    double s1, s2;
    bn_sum_parts(part, c, parts, &s1, &s2);
    double md = s1 / m;
    double var = s2 / m - md * md;
    if (var < 0.0) var = 0.0;  /* np.maximum(var, 0): a NaN stays NaN */
    double mu = (double)x[(long long)c * length] + md;
    double is = 1.0 / sqrt(var + eps);
    double ac = (double)gamma[c] * is;
    mean[c] = mu;
    invstd[c] = is;
    a[c] = ac;
    b[c] = (double)beta[c] - mu * ac;
    if (tracked) {
        double v = 1.0 / (is * is) - eps;
        running_mean[c] = running_mean[c] * (BN_R)(1.0 - momentum) + (BN_R)(momentum * mu);
        running_var[c] = running_var[c] * (BN_V)(1.0 - momentum) + (BN_V)(momentum * v * (double)m / (double)(m - 1));
    }
}

extern "C" __global__ void bn_normalize(const BN_T* x, long long size, int channels, int length, const double* a,
                                        const double* b, BN_T* y) {
    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= size) return;
    int c = bn_channel(i, size, channels, length);
    y[i] = (BN_T)((double)x[i] * a[c] + b[c]);
}

extern "C" __global__ void bn_grad_partial(const BN_T* g, const BN_T* x, int n_img, int channels, int length,
                                           int parts, const double* mean, double* part) {
    long long t = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (t >= (long long)channels * parts) return;
    int c = (int)(t / parts), j = (int)(t % parts);
    long long m = (long long)n_img * length;
    double mu = mean[c];
    double sg = 0.0, sgd = 0.0;
    long long n = 0, l = 0, dn = 0, dl = 0;             /* as in bn_stats_partial */
    if (length > 0) { n = j / length; l = j % length; dn = parts / length; dl = parts % length; }
    for (long long e = j; e < m; e += parts) {
        long long i = (n * channels + c) * length + l;
        double gi = (double)g[i];
        sg = sg + gi;
        sgd = sgd + gi * ((double)x[i] - mu);
        n += dn;
        l += dl;
        if (l >= length) { l -= length; n += 1; }
    }
    part[2 * t] = sg;
    part[2 * t + 1] = sgd;
}

extern "C" __global__ void bn_grad_finalize(const double* part, int channels, int parts, long long m,
                                            const double* invstd, const BN_P* gamma, double* k, double* mg,
                                            double* mgx, BN_T* dgamma, BN_T* dbeta) {
    int c = blockIdx.x * blockDim.x + threadIdx.x;
    if (c >= channels) return;
    double sg, sgd;
    bn_sum_parts(part, c, parts, &sg, &sgd);
    double is = invstd[c];
    k[c] = (double)gamma[c] * is;
    mg[c] = sg / m;
    mgx[c] = sgd * is * is / m;
    dgamma[c] = (BN_T)(sgd * is);
    dbeta[c] = (BN_T)sg;
}

extern "C" __global__ void bn_grad_input(const BN_T* g, const BN_T* x, long long size, int channels, int length,
                                         const double* mean, const double* k, const double* mg, const double* mgx,
                                         BN_T* dx) {
    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= size) return;
    int c = bn_channel(i, size, channels, length);
    dx[i] = (BN_T)(k[c] * (((double)g[i] - mg[c]) - ((double)x[i] - mean[c]) * mgx[c]));
}
"""

# each kernel's parameters: "ptr" (an array), "i32", "i64" or "f64" (bitnet.gpu.raw_kernels converts)
SIGNATURES = {
    "bn_stats_partial": ("ptr", "i32", "i32", "i32", "i32", "ptr"),
    "bn_stats_finalize": ("ptr", "ptr", "i32", "i32", "i32", "i64", "f64", "f64", "i32", "ptr", "ptr", "ptr", "ptr",
                          "ptr", "ptr", "ptr", "ptr"),
    "bn_normalize": ("ptr", "i64", "i32", "i32", "ptr", "ptr", "ptr"),
    "bn_grad_partial": ("ptr", "ptr", "i32", "i32", "i32", "i32", "ptr", "ptr"),
    "bn_grad_finalize": ("ptr", "i32", "i32", "i64", "ptr", "ptr", "ptr", "ptr", "ptr", "ptr", "ptr"),
    "bn_grad_input": ("ptr", "ptr", "i64", "i32", "i32", "ptr", "ptr", "ptr", "ptr", "ptr"),
}

THREADS = 256


def parts_per_channel(channels: int, m: int) -> int:
    """J: about 512 values per partial sum, at most 32768 partial sums in all (>= 1)."""
    return int(max(1, min(m // 512, 32768 // max(channels, 1))))


def _strided(v, parts):
    """v (N, C, L) as (C, J, ceil(M/J)) with element e of channel c at [c, e % J, e // J], zero-padded."""
    n_img, channels, length = v.shape
    m = n_img * length
    flat = v.transpose(1, 0, 2).reshape(channels, m)
    rows = -(-m // parts)
    padded = np.zeros((channels, rows * parts), np.float64)
    padded[:, :m] = flat
    return padded.reshape(channels, rows, parts).transpose(0, 2, 1)


# -- the same kernels in NumPy (the emulation's; sums in NumPy's order) --------------------------------
def stats_partial(x, n_img, channels, length, parts, part):
    x3 = x.reshape(n_img, channels, length)
    d = _strided(x3.astype(np.float64) - x3[0, :, 0].astype(np.float64)[None, :, None], parts)
    part.reshape(channels, parts, 2)[..., 0] = d.sum(axis=2)
    part.reshape(channels, parts, 2)[..., 1] = (d * d).sum(axis=2)


def stats_finalize(part, x, channels, length, parts, m, eps, momentum, tracked, gamma, beta, running_mean,
                   running_var, mean, invstd, a, b):
    p = part.reshape(channels, parts, 2)
    s1, s2 = p[..., 0].sum(axis=1), p[..., 1].sum(axis=1)
    md = s1 / m
    var = np.maximum(s2 / m - md * md, 0.0)
    mean[...] = x.reshape(-1)[np.arange(channels) * length].astype(np.float64) + md
    invstd[...] = 1.0 / np.sqrt(var + eps)
    a[...] = gamma.astype(np.float64) * invstd
    b[...] = beta.astype(np.float64) - mean * a
    if tracked:
        v = 1.0 / (invstd * invstd) - eps
        rm, rv = running_mean.dtype.type, running_var.dtype.type
        running_mean[...] = running_mean * rm(1.0 - momentum) + (momentum * mean).astype(running_mean.dtype)
        running_var[...] = running_var * rv(1.0 - momentum) + (momentum * v * float(m) / float(m - 1)).astype(rv)


def normalize(x, size, channels, length, a, b, y):
    x3 = x.reshape(-1, channels, length)
    y.reshape(x3.shape)[...] = (x3.astype(np.float64) * a[:, None] + b[:, None]).astype(y.dtype)


def grad_partial(g, x, n_img, channels, length, parts, mean, part):
    g3, x3 = g.reshape(n_img, channels, length), x.reshape(n_img, channels, length)
    g64 = g3.astype(np.float64)
    p = part.reshape(channels, parts, 2)
    p[..., 0] = _strided(g64, parts).sum(axis=2)
    p[..., 1] = _strided(g64 * (x3.astype(np.float64) - mean[None, :, None]), parts).sum(axis=2)


def grad_finalize(part, channels, parts, m, invstd, gamma, k, mg, mgx, dgamma, dbeta):
    p = part.reshape(channels, parts, 2)
    sg, sgd = p[..., 0].sum(axis=1), p[..., 1].sum(axis=1)
    k[...] = gamma.astype(np.float64) * invstd
    mg[...] = sg / m
    mgx[...] = sgd * invstd * invstd / m
    dgamma[...] = (sgd * invstd).astype(dgamma.dtype)
    dbeta[...] = sg.astype(dbeta.dtype)


def grad_input(g, x, size, channels, length, mean, k, mg, mgx, dx):
    g3, x3 = g.reshape(-1, channels, length), x.reshape(-1, channels, length)
    col = (lambda v: v[:, None])
    out = col(k) * ((g3.astype(np.float64) - col(mg)) - (x3.astype(np.float64) - col(mean)) * col(mgx))
    dx.reshape(g3.shape)[...] = out.astype(dx.dtype)


NUMPY = {"bn_stats_partial": stats_partial, "bn_stats_finalize": stats_finalize, "bn_normalize": normalize,
         "bn_grad_partial": grad_partial, "bn_grad_finalize": grad_finalize, "bn_grad_input": grad_input}
