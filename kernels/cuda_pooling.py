"""Max pooling over windows that tile the map, with the winner's place kept for the backward: two CUDA C
kernels (launched by CuPy: ``bitnet.gpu.raw_kernels``) and the same two in NumPy (the emulation's).
The GPU side of the fused batch norm + max pool (``bitnet.gpu.ops.norm``).

For z (N, C, H, W) contiguous, KH x KW windows with stride = window, no padding (a remainder row or
column is dropped), OH = H // KH, OW = W // KW, one thread per output (n, c, oy, ox)::

    tiled_max    best = z at tap (0, 0); for each later tap t = i*KW + j in scan order, with v its value:
                 if v > best or v is NaN: best = v, winner = t          (the first maximum, or the last NaN:
                 out = best, tap = winner                                ``bitnet.kernels.pooling``'s rule)

and one thread per input position (n, c, y, x)::

    to_taps      dense[n, c, y, x] = g[n, c, y // KH, x // KW] where (y, x) is inside the tiled part and
                 (y % KH) * KW + x % KW is that window's tap, else 0

(T: the maps' type, macro PO_T.) No shared memory, no barriers: tests/gpu_training/
test_cuda_c_sources.py runs the source on the CPU, thread by thread, against the NumPy versions.
"""
from __future__ import annotations

import numpy as np

SOURCE = r"""
extern "C" __global__ void pool_tiled_max(const PO_T* z, long long outputs, int height, int width, int kh, int kw,
                                          PO_T* out, int* tap) {
    long long o = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (o >= outputs) return;
    int oh = height / kh, ow = width / kw;
    long long plane = o / ((long long)oh * ow);
    int oy = (int)((o / ow) % oh), ox = (int)(o % ow);
    const PO_T* w = z + plane * height * width + (long long)(oy * kh) * width + ox * kw;
    PO_T best = w[0];
    int winner = 0;
    for (int i = 0; i < kh; i++) {
        for (int j = 0; j < kw; j++) {
            PO_T v = w[(long long)i * width + j];
            if ((i || j) && (v > best || v != v)) {
                best = v;
                winner = i * kw + j;
            }
        }
    }
    out[o] = best;
    tap[o] = winner;
}

extern "C" __global__ void pool_to_taps(const PO_T* g, const int* tap, long long size, int height, int width,
                                        int kh, int kw, PO_T* dense) {
    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= size) return;
    int oh = height / kh, ow = width / kw;
    long long plane = i / ((long long)height * width);
    int y = (int)((i / width) % height), x = (int)(i % width);
    PO_T value = (PO_T)0;
    if (y < oh * kh && x < ow * kw) {
        long long o = (plane * oh + y / kh) * ow + x / kw;
        if (tap[o] == (y % kh) * kw + x % kw) value = g[o];
    }
    dense[i] = value;
}
"""

SIGNATURES = {
    "pool_tiled_max": ("ptr", "i64", "i32", "i32", "i32", "i32", "ptr", "ptr"),
    "pool_to_taps": ("ptr", "ptr", "i64", "i32", "i32", "i32", "i32", "ptr"),
}

THREADS = 256


def _windows(z, height, width, kh, kw):
    """z's tiled part as (planes, OH, OW, KH*KW), taps in scan order."""
    oh, ow = height // kh, width // kw
    z4 = z.reshape(-1, height, width)[:, :oh * kh, :ow * kw].reshape(-1, oh, kh, ow, kw)
    return z4.transpose(0, 1, 3, 2, 4).reshape(-1, oh, ow, kh * kw)


# -- the same kernels in NumPy (the emulation's) ---------------------------------------------------
def tiled_max(z, outputs, height, width, kh, kw, out, tap):
    w = _windows(z, height, width, kh, kw)
    best = w[..., 0].copy()
    winner = np.zeros(best.shape, np.int32)
    for t in range(1, kh * kw):
        v = w[..., t]
        better = (v > best) | (v != v)
        best = np.where(better, v, best)
        winner = np.where(better, np.int32(t), winner)
    out.reshape(-1)[...] = best.reshape(-1)
    tap.reshape(-1)[...] = winner.reshape(-1)


def to_taps(g, tap, size, height, width, kh, kw, dense):
    oh, ow = height // kh, width // kw
    d = dense.reshape(-1, height, width)
    d[...] = 0
    g3, t3 = g.reshape(-1, oh, ow), tap.reshape(-1, oh, ow)
    for i in range(kh):
        for j in range(kw):
            d[:, i:oh * kh:kh, j:ow * kw:kw] = np.where(t3 == i * kw + j, g3, g3.dtype.type(0))


NUMPY = {"pool_tiled_max": tiled_max, "pool_to_taps": to_taps}
