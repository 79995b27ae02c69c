"""Pooling as CUDA C kernels (launched by CuPy: ``bitnet.gpu.raw_kernels``): max pooling over windows
that tile the map, with the winner's place kept for the backward (the GPU side of the fused batch
norm + max pool, ``bitnet.gpu.ops.norm``), and average pooling forward and backward. The emulation
runs in their place the NumPy functions below for the first two, the CPU's kernels
(``bitnet.kernels.pooling``) for average pooling.

For z (N, C, H, W) contiguous, KH x KW windows with stride = window, no padding (a remainder row or
column is dropped), OH = H // KH, OW = W // KW, one thread per output (n, c, oy, ox)::

    tiled_max    best = z at tap (0, 0); for each later tap t = i*KW + j in scan order, with v its value:
                 if v > best or v is NaN: best = v, winner = t          (the first maximum, or the last NaN:
                 out = best, tap = winner                                ``bitnet.kernels.pooling``'s rule)

and one thread per input position (n, c, y, x)::

    to_taps      dense[n, c, y, x] = g[n, c, y // KH, x // KW] where (y, x) is inside the tiled part and
                 (y % KH) * KW + x % KW is that window's tap, else 0

Average pooling (``bitnet.gpu.ops.pool``), any window, stride and padding, floor or ceil mode, with
D the window's divisor (``bitnet.kernels.pooling._divisor``: the window clipped to the padded input
with count_include_pad, else to the input) and the window of output (oy, ox) starting at
(oy SH - PH, ox SW - PW)::

    avg_forward  one thread per output: s = 0.0 (double); for its taps row-major, inside the input:
                 s = s + double(x);  y = T(s * (1.0 / D))
    avg_backward one thread per input position: d = T(0); for the taps (i, j) in reverse row-major
                 order whose window holds it: d = T(double(d) + double(g[window]) * (1.0 / D));  dx = d

(the order of the CPU kernel, so the same bits). (T: the maps' type, macro PO_T.) No shared memory,
no barriers: tests/gpu_training/test_cuda_c_sources.py runs the source on the CPU, thread by thread,
against what the emulation runs.
"""
from __future__ import annotations

import numpy as np

from bitnet.kernels import cuda_index
from bitnet.kernels import pooling as cpu_pooling

SOURCE = cuda_index.SOURCE + r"""
extern "C" __global__ void pool_tiled_max(const PO_T* z, long long outputs, int height, int width, int kh, int kw,
                                          PO_T* out, int* tap) {
    long long o = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (o >= outputs) return;
    int oh = height / kh, ow = width / kw;
    long long plane, oy, ox;
    split3(o, outputs, oh, ow, &plane, &oy, &ox);
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
    long long plane, yl, xl;
    split3(i, size, height, width, &plane, &yl, &xl);
    int y = (int)yl, x = (int)xl;
    PO_T value = (PO_T)0;
    if (y < oh * kh && x < ow * kw) {
        long long o = (plane * oh + y / kh) * ow + x / kw;
        if (tap[o] == (y % kh) * kw + x % kw) value = g[o];
    }
    dense[i] = value;
}

__device__ double pool_divisor(int oy, int ox, int kh, int kw, int sh, int sw, int ph, int pw, int height, int width,
                               int include_pad) {
    int y0 = oy * sh - ph, x0 = ox * sw - pw;
    int ye = y0 + kh, xe = x0 + kw;
    long long d;
    if (include_pad) {
        d = (long long)((ye < height + ph ? ye : height + ph) - y0) * ((xe < width + pw ? xe : width + pw) - x0);
    } else {
        d = (long long)((ye < height ? ye : height) - (y0 > 0 ? y0 : 0))
            * ((xe < width ? xe : width) - (x0 > 0 ? x0 : 0));
    }
    return 1.0 / (double)d;
}

extern "C" __global__ void pool_avg_forward(const PO_T* x, long long outputs, int height, int width, int oh, int ow,
                                            int kh, int kw, int sh, int sw, int ph, int pw, int include_pad, PO_T* y) {
    long long o = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (o >= outputs) return;
    long long plane, oyl, oxl;
    split3(o, outputs, oh, ow, &plane, &oyl, &oxl);
    int oy = (int)oyl, ox = (int)oxl;
    const PO_T* xp = x + plane * height * width;
    double s = 0.0;
    for (int i = 0; i < kh; i++) {
        int yy = oy * sh - ph + i;
        for (int j = 0; j < kw; j++) {
            int xx = ox * sw - pw + j;
            if (yy >= 0 && yy < height && xx >= 0 && xx < width) s = s + (double)xp[(long long)yy * width + xx];
        }
    }
    y[o] = (PO_T)(s * pool_divisor(oy, ox, kh, kw, sh, sw, ph, pw, height, width, include_pad));
}

extern "C" __global__ void pool_avg_backward(const PO_T* g, long long size, int height, int width, int oh, int ow,
                                             int kh, int kw, int sh, int sw, int ph, int pw, int include_pad,
                                             PO_T* dx) {
    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= size) return;
    long long plane, yl, xl;
    split3(i, size, height, width, &plane, &yl, &xl);
    int y = (int)yl, x = (int)xl;
    const PO_T* gp = g + plane * oh * ow;
    PO_T d = (PO_T)0;
    for (int ti = kh - 1; ti >= 0; ti--) {
        int ry = y + ph - ti;
        if (ry < 0 || ry % sh) continue;
        int oy = ry / sh;
        if (oy >= oh) continue;
        for (int tj = kw - 1; tj >= 0; tj--) {
            int rx = x + pw - tj;
            if (rx < 0 || rx % sw) continue;
            int ox = rx / sw;
            if (ox >= ow) continue;
            double share = (double)gp[(long long)oy * ow + ox]
                           * pool_divisor(oy, ox, kh, kw, sh, sw, ph, pw, height, width, include_pad);
            d = (PO_T)((double)d + share);
        }
    }
    dx[i] = d;
}
"""

SIGNATURES = {
    "pool_tiled_max": ("ptr", "i64", "i32", "i32", "i32", "i32", "ptr", "ptr"),
    "pool_to_taps": ("ptr", "ptr", "i64", "i32", "i32", "i32", "i32", "ptr"),
    "pool_avg_forward": ("ptr", "i64") + ("i32",) * 11 + ("ptr",),
    "pool_avg_backward": ("ptr", "i64") + ("i32",) * 11 + ("ptr",),
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


def avg_forward(x, outputs, height, width, oh, ow, kh, kw, sh, sw, ph, pw, include_pad, y):
    cpu_pooling.avg_pool_forward(x, kh, kw, sh, sw, ph, pw, y, bool(include_pad))


def avg_backward(g, size, height, width, oh, ow, kh, kw, sh, sw, ph, pw, include_pad, dx):
    cpu_pooling.avg_pool_backward(g, kh, kw, sh, sw, ph, pw, dx, bool(include_pad))


NUMPY = {"pool_tiled_max": tiled_max, "pool_to_taps": to_taps, "pool_avg_forward": avg_forward,
         "pool_avg_backward": avg_backward}
