"""The sign and its straight-through gradient as two CUDA C kernels (launched by CuPy:
``bitnet.gpu.raw_kernels``; the emulation runs the CPU's, ``bitnet.kernels.sign``, in their place).
``bitnet.gpu.ops.quantize`` uses them for every binary layer's input and kernel. One thread per
element::

    sign_forward    y = -1 where x < 0, else +1 (0, -0.0 and NaN give +1), in x's type X
    ste_backward    dx = g where |x| <= X(clip) (NaN gives 0), else 0, in g's type G

(macros SG_X, SG_G). No shared memory, no barriers: tests/gpu_training/test_cuda_c_sources.py runs
the source on the CPU, thread by thread, against the CPU's kernels.
"""
from __future__ import annotations

from bitnet.kernels import sign as cpu_sign

SOURCE = r"""
extern "C" __global__ void sign_forward(const SG_X* x, long long size, SG_X* y) {
    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= size) return;
    y[i] = x[i] < (SG_X)0 ? (SG_X)-1 : (SG_X)1;
}

extern "C" __global__ void ste_backward(const SG_G* g, const SG_X* x, long long size, double clip, SG_G* dx) {
    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= size) return;
    SG_X v = x[i];
    SG_X a = v < (SG_X)0 ? -v : v;
    dx[i] = a <= (SG_X)clip ? g[i] : (SG_G)0;
}
"""

SIGNATURES = {
    "sign_forward": ("ptr", "i64", "ptr"),
    "ste_backward": ("ptr", "ptr", "i64", "f64", "ptr"),
}

THREADS = 256


def sign_forward(x, size, y):
    cpu_sign.sign(x.reshape(-1), y.reshape(-1))


def ste_backward(g, x, size, clip, dx):
    cpu_sign.ste_mask(g.reshape(-1), x.reshape(-1), x.dtype.type(clip), dx.reshape(-1))


NUMPY = {"sign_forward": sign_forward, "ste_backward": ste_backward}
