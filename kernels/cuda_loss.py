"""Softmax cross-entropy (without class weights or ignored targets) as three CUDA C kernels (launched by
CuPy: ``bitnet.gpu.raw_kernels``), and the CPU's NumPy math (``bitnet.ops.loss``), which the
emulation runs in their place.

For logits x (N, K) and targets t (N,) (int64), C-contiguous, of type T (macro CE_T), and label
smoothing e::

    ce_rows    one thread per row n:  m = max_k x_nk (NaN if any is NaN),
               s = sum_k exp(x_nk - m) (in order k = 0..K-1),  lp_k = (x_nk - m) - log(s),
               probs_nk = exp(lp_k),  loss_n = -lp_(t_n),
               with e != 0: loss_n = T(1 - e) loss_n - T(e) ((sum_k lp_k) / K)
    ce_total   one thread: sum_n loss_n in order n = 0..N-1, divided by N for the mean
    ce_grad    one thread per element:  d_nk = probs_nk - T(1 - e) [k = t_n] - T(e / K)  (the last
               term only where e != 0), times g_n (mode 0: reduction "none"), g / N (1: "mean") or
               g (2: "sum")

Two launches forward (one with reduction "none") and one backward, instead of about twenty array
operations. ``--fmad=false``: every operation rounded on its own, so ``ce_grad`` gives the NumPy
gradient's bits from the same probabilities; the forward differs from NumPy's by the order of its
sums and by the device's exp and log (within a few ulps). No shared memory, no barriers:
tests/gpu_training/test_cuda_c_step_kernels.py runs the source on the CPU, thread by thread, against the
NumPy math.
"""
from __future__ import annotations

from bitnet.kernels import cuda_index

SOURCE = cuda_index.SOURCE + r"""
extern "C" __global__ void ce_rows(const CE_T* x, const long long* t, long long n, int k, double ls,
                                   CE_T* probs, CE_T* nll) {
    long long r = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (r >= n) return;
    const CE_T* xr = x + r * k;
    CE_T* pr = probs + r * k;
    CE_T m = xr[0];
    for (int j = 1; j < k; j++)
        if (xr[j] > m || xr[j] != xr[j]) m = xr[j];   /* once NaN, m stays NaN */
    CE_T s = (CE_T)0;
    for (int j = 0; j < k; j++) s = s + exp(xr[j] - m);
    const CE_T lse = log(s);
    CE_T acc = (CE_T)0;
    for (int j = 0; j < k; j++) {
        const CE_T lp = (xr[j] - m) - lse;
        pr[j] = exp(lp);
        acc = acc + lp;
    }
    CE_T out = -((xr[t[r]] - m) - lse);
    if (ls != 0.0) out = (CE_T)(1.0 - ls) * out - (CE_T)ls * (acc / (CE_T)k);
    nll[r] = out;
}

extern "C" __global__ void ce_total(const CE_T* nll, long long n, int mean, CE_T* out) {
    if ((long long)blockIdx.x * blockDim.x + threadIdx.x != 0) return;
    CE_T s = (CE_T)0;
    for (long long i = 0; i < n; i++) s = s + nll[i];
    out[0] = mean ? s / (CE_T)n : s;
}

extern "C" __global__ void ce_grad(const CE_T* probs, const long long* t, const CE_T* g, long long n, int k,
                                   double ls, int mode, CE_T* dx) {
    long long e = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (e >= n * k) return;
    long long r, j;
    split2(e, n * k, k, &r, &j);                      /* e = r K + j */
    CE_T v = probs[e];
    if (j == t[r]) v = v - (CE_T)(1.0 - ls);
    if (ls != 0.0) v = v - (CE_T)(ls / k);
    const CE_T scale = mode == 0 ? g[r] : mode == 1 ? g[0] / (CE_T)n : g[0];
    dx[e] = v * scale;
}
"""

SIGNATURES = {
    "ce_rows": ("ptr", "ptr", "i64", "i32", "f64", "ptr", "ptr"),
    "ce_total": ("ptr", "i64", "i32", "ptr"),
    "ce_grad": ("ptr", "ptr", "ptr", "i64", "i32", "f64", "i32", "ptr"),
}

THREADS = 256
REDUCTIONS = {"none": 0, "mean": 1, "sum": 2}


def rows(x, t, n, k, ls, probs, nll):
    from bitnet.ops.loss import cross_entropy_rows
    probs[...], nll[...] = cross_entropy_rows(x, t, ls)


def total(nll, n, mean, out):
    s = nll.sum()
    out[...] = s / n if mean else s


def grad(probs, t, g, n, k, ls, mode, dx):
    from bitnet.ops.loss import cross_entropy_grad
    reduction = {v: r for r, v in REDUCTIONS.items()}[mode]
    dx[...] = cross_entropy_grad(probs, t, ls, g, reduction)


NUMPY = {"ce_rows": rows, "ce_total": total, "ce_grad": grad}
