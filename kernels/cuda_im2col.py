"""im2col and col2im of the float convolution as CUDA C kernels (launched by CuPy:
``bitnet.gpu.raw_kernels``), for ``bitnet.gpu.ops.conv_pool``; the emulation runs the CPU's
(``bitnet.kernels.im2col``: the same layout, the same order of additions) in their place.

For x (N, C, H, W), a KH x KW kernel with stride (SH, SW), padding (PH, PW), dilation (DH, DW) and
output (OH, OW), the border read as ``pad_value``::

    im2col   one thread per column entry: cols[(c, i, j), (n, oy, ox)] = x[n, c, y, x] with
             y = oy SH - PH + i DH, x = ox SW - PW + j DW inside the input, else T(pad_value)
    col2im   one thread per input position: dx[n, c, y, x] = T(0), then for the taps (i, j) in
             row-major order whose output (oy, ox) reads (y, x): dx = T(dx + dcols[(c, i, j), (n, oy, ox)])

col2im adds in the CPU kernel's order (the same bits). (T: macro IC_T.) No shared memory, no
barriers: tests/gpu_training/test_cuda_c_sources.py runs the source on the CPU, thread by thread,
against the CPU's kernels.
"""
from __future__ import annotations

from bitnet.kernels import cuda_index
from bitnet.kernels import im2col as cpu_im2col

SOURCE = cuda_index.SOURCE + r"""
extern "C" __global__ void im2col_fill(const IC_T* x, int n_img, int channels, int height, int width, int kh, int kw,
                                       int sh, int sw, int ph, int pw, int dh, int dw, int oh, int ow, double pad_value,
                                       IC_T* cols) {
    long long e = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    long long total = (long long)channels * kh * kw * n_img * oh * ow;
    if (e >= total) return;
    long long row, n, p, c, i, j, oy, ox;
    split3(e, total, n_img, (long long)oh * ow, &row, &n, &p);   /* e = (row N + n) OH OW + p */
    split3(row, (long long)channels * kh * kw, kh, kw, &c, &i, &j);
    split2(p, (long long)oh * ow, ow, &oy, &ox);                  /* p = oy OW + ox */
    int y = (int)oy * sh - ph + (int)i * dh, xx = (int)ox * sw - pw + (int)j * dw;
    IC_T v = (IC_T)pad_value;
    if (y >= 0 && y < height && xx >= 0 && xx < width) v = x[(((long long)n * channels + c) * height + y) * width + xx];
    cols[e] = v;
}

extern "C" __global__ void col2im_add(const IC_T* dcols, int n_img, int channels, int height, int width, int kh, int kw,
                                      int sh, int sw, int ph, int pw, int dh, int dw, int oh, int ow, IC_T* dx) {
    long long p = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    long long total = (long long)n_img * channels * height * width;
    if (p >= total) return;
    long long plane, yy, xw, n, c;
    split3(p, total, height, width, &plane, &yy, &xw);            /* p = (n C + c) H W + y W + x */
    split2(plane, (long long)n_img * channels, channels, &n, &c);
    int y = (int)yy, xx = (int)xw;
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


def im2col_fill(x, n_img, channels, height, width, kh, kw, sh, sw, ph, pw, dh, dw, oh, ow, pad_value, cols):
    cpu_im2col.im2col(x, kh, kw, sh, sw, ph, pw, dh, dw, oh, ow, cols, pad_value)


def col2im_add(dcols, n_img, channels, height, width, kh, kw, sh, sw, ph, pw, dh, dw, oh, ow, dx):
    cpu_im2col.col2im(dcols, kh, kw, sh, sw, ph, pw, dh, dw, oh, ow, dx)


NUMPY = {"im2col_fill": im2col_fill, "col2im_add": col2im_add}
