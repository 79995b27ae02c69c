"""The tanh and sigmoid backward passes as two CUDA C kernels (launched by CuPy:
``bitnet.gpu.raw_kernels``; the emulation runs the CPU's, ``bitnet.kernels.activations``, in their
place). One thread per element of g, y (y = the activation's output) and dx, C-contiguous, of one
type T (macro AC_T)::

    tanh_backward     dx = T(double(g) (1 - double(y y)))         y y rounded to T
    sigmoid_backward  dx = T(double(g y) (1 - double(y)))         g y rounded to T

which is how the CPU's Numba kernels round ``g * (1 - y * y)`` and ``g * y * (1 - y)``: the integer
literal 1 widens its side to float64, one rounding to T at the end. One launch instead of seven
array operations (the casts included). No shared memory, no barriers:
tests/gpu_training/test_cuda_c_step_kernels.py runs the source on the CPU, thread by thread, against
the CPU's kernels.
"""
from __future__ import annotations

from bitnet.kernels import activations as cpu

SOURCE = r"""
extern "C" __global__ void tanh_backward(const AC_T* g, const AC_T* y, long long size, AC_T* dx) {
    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= size) return;
    const AC_T yy = y[i] * y[i];
    dx[i] = (AC_T)((double)g[i] * (1.0 - (double)yy));
}

extern "C" __global__ void sigmoid_backward(const AC_T* g, const AC_T* y, long long size, AC_T* dx) {
    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= size) return;
    const AC_T gy = g[i] * y[i];
    dx[i] = (AC_T)((double)gy * (1.0 - (double)y[i]));
}
"""

SIGNATURES = {
    "tanh_backward": ("ptr", "ptr", "i64", "ptr"),
    "sigmoid_backward": ("ptr", "ptr", "i64", "ptr"),
}

THREADS = 256


def tanh_backward(g, y, size, dx):
    cpu.tanh_backward(g.reshape(-1), y.reshape(-1), dx.reshape(-1))


def sigmoid_backward(g, y, size, dx):
    cpu.sigmoid_backward(g.reshape(-1), y.reshape(-1), dx.reshape(-1))


NUMPY = {"tanh_backward": tanh_backward, "sigmoid_backward": sigmoid_backward}
