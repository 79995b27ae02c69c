"""Adam's step on a device as one CUDA C kernel (launched by CuPy: ``bitnet.gpu.raw_kernels``; the
emulation runs the CPU's Numba kernel, ``bitnet.kernels.optim.adam_update``, in its place).

One thread per element i of the flat, C-contiguous arrays p, g, m, v (and vmax with amsgrad), all
of one type T (macro AD_T), the scalars given as doubles that hold values of T (converted back to T
exactly)::

    g    = g + l2 * p                     (only where l2 != 0)
    m    = m * beta1 + one_m_beta1 * g
    v    = v * beta2 + one_m_beta2 * (g * g)
    vmax = v where v > vmax               (amsgrad only; v then reads vmax)
    p    = p - step_size * m / (sqrt(v) / bc2_sqrt + eps)

The CPU kernel's expression, operation for operation, each rounded to T (``--fmad=false``; CUDA's
sqrt, / and + are correctly rounded without fast math), so both devices give the same bits: one launch
a step for all of a group's parameters (``bitnet.optim.flat``) instead of thirteen array operations.
No shared memory, no barriers: tests/gpu_training/test_cuda_c_step_kernels.py runs the source on the
CPU, thread by thread, against the CPU's kernel.
"""
from __future__ import annotations

from bitnet.kernels.optim import adam_update

SOURCE = r"""
extern "C" __global__ void adam_step(AD_T* p, const AD_T* g, AD_T* m, AD_T* v, AD_T* vmax, long long size,
                                     int amsgrad, double beta1, double beta2, double one_m_beta1,
                                     double one_m_beta2, double l2, double step_size, double bc2_sqrt,
                                     double eps) {
    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= size) return;
    const AD_T b1 = (AD_T)beta1, b2 = (AD_T)beta2, c1 = (AD_T)one_m_beta1, c2 = (AD_T)one_m_beta2;
    AD_T gi = g[i];
    if ((AD_T)l2 != (AD_T)0) gi = gi + (AD_T)l2 * p[i];
    AD_T mi = m[i] * b1 + c1 * gi;
    AD_T vi = v[i] * b2 + c2 * (gi * gi);
    m[i] = mi;
    v[i] = vi;
    if (amsgrad) {
        if (vi > vmax[i]) vmax[i] = vi;
        vi = vmax[i];
    }
    p[i] = p[i] - (AD_T)step_size * mi / (sqrt(vi) / (AD_T)bc2_sqrt + (AD_T)eps);
}
"""

SIGNATURES = {
    "adam_step": ("ptr", "ptr", "ptr", "ptr", "ptr", "i64", "i32") + ("f64",) * 8,
}

THREADS = 256


def adam_step(p, g, m, v, vmax, size, amsgrad, beta1, beta2, one_m_beta1, one_m_beta2, l2, step_size, bc2_sqrt,
              eps):
    t = p.dtype.type
    adam_update(p.reshape(-1), g.reshape(-1), m.reshape(-1), v.reshape(-1), vmax.reshape(-1), bool(amsgrad),
                t(beta1), t(beta2), t(one_m_beta1), t(one_m_beta2), t(l2), t(step_size), t(bc2_sqrt), t(eps))


NUMPY = {"adam_step": adam_step}
