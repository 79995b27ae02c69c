"""im2col and col2im of the float convolution as CUDA C kernels (launched by CuPy:
``bitnet.gpu.raw_kernels``) and the same two in NumPy (the emulation's), for ``bitnet.gpu.ops.conv_pool``.

For x (N, C, H, W), a KH x KW kernel with stride (SH, SW), padding (PH, PW), dilation (DH, DW) and
output (OH, OW), the border read as ``pad_value``::

    im2col   one thread per column entry: cols[(c, i, j), (n, oy, ox)] = x[n, c, y, x] with
             y = oy SH - PH + i DH, x = ox SW - PW + j DW inside the input, else T(pad_value)
    col2im   one thread per input position: dx[n, c, y, x] = T(0), then for the taps (i, j) in
             row-major order whose output (oy, ox) reads (y, x): dx = T(dx + dcols[(c, i, j), (n, oy, ox)])

col2im adds in the order of the per-tap loop it replaces (the same bits). (T: macro IC_T.) No shared
memory, no barriers: tests/gpu_training/test_cuda_c_sources.py runs the source on the CPU, thread by
thread, against the NumPy versions.
"""
from __future__ import annotations

import numpy as np

SOURCE = r"""
extern "C" __global__ void im2col_fill(const IC_T* x, int n_img, int channels, int height, int width, int kh, int kw,
                                       int sh, int sw, int ph, int pw, int dh, int dw, int oh, int ow, double pad_value,
                                       IC_T* cols) {
    long long e = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    long long columns = (long long)n_img * oh * ow;
    if (e >= (long long)channels * kh * kw * columns) return;
    long long row = e / columns, col = e % columns;
    int c = (int)(row / (kh * kw)), i = (int)((row / kw) % kh), j = (int)(row % kw);
    int n = (int)(col / ((long long)oh * ow)), oy = (int)((col / ow) % oh), ox = (int)(col % ow);
    int y = oy * sh - ph + i * dh, xx = ox * sw - pw + j * dw;
    IC_T v = (IC_T)pad_value;
    if (y >= 0 && y < height && xx >= 0 && xx < width) v = x[(((long long)n * channels + c) * height + y) * width + xx];
    cols[e] = v;
}

extern "C" __global__ void col2im_add(const IC_T* dcols, int n_img, int channels, int height, int width, int kh, int kw,
                                      int sh, int sw, int ph, int pw, int dh, int dw, int oh, int ow, IC_T* dx) {
    long long p = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (p >= (long long)n_img * channels * height * width) return;
    int xx = (int)(p % width), y = (int)((p / width) % height);
    int c = (int)((p / ((long long)width * height)) % channels), n = (int)(p / ((long long)width * height * channels));
    long long columns = (long long)n_img * oh * ow;
    IC_T acc = (IC_T)0;
    for (int i = 0; i < kh; i++) {
        int ry = y + ph - i * dh;
        if (ry < 0 || ry % sh) continue;
        int oy = ry / sh;
        if (oy >= oh) continue;
        for (int j = 0; j < kw; j++) {
            int rx = xx + pw - j * dw;
            if (rx < 0 || rx % sw) continue;
            int ox = rx / sw;
            if (ox >= ow) continue;
            long long row = ((long long)c * kh + i) * kw + j;
            acc = acc + dcols[row * columns + ((long long)n * oh + oy) * ow + ox];
        }
    }
    dx[p] = acc;
}
"""

SIGNATURES = {
    "im2col_fill": ("ptr",) + ("i32",) * 14 + ("f64", "ptr"),
    "col2im_add": ("ptr",) + ("i32",) * 14 + ("ptr",),
}

THREADS = 256


def _tap_slices(i, j, sh, sw, dh, dw, oh, ow):
    y0, x0 = i * dh, j * dw
    return slice(y0, y0 + (oh - 1) * sh + 1, sh), slice(x0, x0 + (ow - 1) * sw + 1, sw)


def im2col_fill(x, n_img, channels, height, width, kh, kw, sh, sw, ph, pw, dh, dw, oh, ow, pad_value, cols):
    padded = np.full((n_img, channels, height + 2 * ph, width + 2 * pw), pad_value, x.dtype)
    padded[:, :, ph:ph + height, pw:pw + width] = x.reshape(n_img, channels, height, width)
    out = cols.reshape(channels, kh, kw, n_img, oh, ow)
    for i in range(kh):
        for j in range(kw):
            rows, columns = _tap_slices(i, j, sh, sw, dh, dw, oh, ow)
            out[:, i, j] = padded[:, :, rows, columns].transpose(1, 0, 2, 3)


def col2im_add(dcols, n_img, channels, height, width, kh, kw, sh, sw, ph, pw, dh, dw, oh, ow, dx):
    d = dcols.reshape(channels, kh, kw, n_img, oh, ow)
    gx = np.zeros((n_img, channels, height + 2 * ph, width + 2 * pw), dx.dtype)
    for i in range(kh):
        for j in range(kw):
            rows, columns = _tap_slices(i, j, sh, sw, dh, dw, oh, ow)
            gx[:, :, rows, columns] += d[:, i, j].transpose(1, 0, 2, 3)
    dx.reshape(n_img, channels, height, width)[...] = gx[:, :, ph:ph + height, pw:pw + width]


NUMPY = {"im2col_fill": im2col_fill, "col2im_add": col2im_add}
