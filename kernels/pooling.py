"""Max and average pooling over NCHW planes (Numba, parallel over the N*C planes).

For window (KH, KW), stride (SH, SW) and padding (PH, PW) (floor mode):

    max:  y[n, c, oy, ox] = max over i<KH, j<KW of x[n, c, oy*SH - PH + i, ox*SW - PW + j]
          (padding is -inf: it never wins); ``argmax`` stores the flat index y*W + x of the winner
          (the first one in scan order on ties), so the backward routes the whole gradient there.
    avg:  y[n, c, oy, ox] = (1 / (KH*KW)) * sum of the window, padding counted as zeros
          (``count_include_pad=True``, PyTorch's default).
"""
from __future__ import annotations

import numba as nb
import numpy as np

_JIT = dict(nogil=True, cache=True, boundscheck=False, fastmath=False)


@nb.njit(inline="always")
def _window(o, stride, pad, kernel, size):
    """[lo, hi): the input positions of output o's window that lie inside the input."""
    start = o * stride - pad
    return max(start, 0), min(start + kernel, size)


@nb.njit(parallel=True, **_JIT)
def max_pool_forward(x, kh, kw, sh, sw, ph, pw, out, argmax):
    """When the windows tile the input (stride == kernel, no padding: the usual 2x2/2), every
    window lies inside the input and the loop runs without bounds and with branch-free selects
    (8.0-8.2 ms vs 11.9 ms on LeNet's first pooling); otherwise each window is clipped to the input."""
    n_img, channels, height, width = x.shape
    oh, ow = out.shape[2], out.shape[3]
    if sh == kh and sw == kw and ph == 0 and pw == 0:
        for plane in nb.prange(n_img * channels):
            n = plane // channels
            c = plane - n * channels
            for oy in range(oh):
                for ox in range(ow):
                    best_val = x[n, c, oy * kh, ox * kw]
                    best = oy * kh * width + ox * kw
                    for iy in range(oy * kh, oy * kh + kh):
                        for ix in range(ox * kw, ox * kw + kw):
                            v = x[n, c, iy, ix]
                            better = v > best_val
                            best_val = v if better else best_val
                            best = iy * width + ix if better else best
                    out[n, c, oy, ox] = best_val
                    argmax[n, c, oy, ox] = best
        return
    for plane in nb.prange(n_img * channels):
        n = plane // channels
        c = plane - n * channels
        for oy in range(oh):
            y0, y1 = _window(oy, sh, ph, kh, height)
            for ox in range(ow):
                x0, x1 = _window(ox, sw, pw, kw, width)
                best_val = x[n, c, y0, x0]
                best = y0 * width + x0
                for iy in range(y0, y1):
                    for ix in range(x0, x1):
                        v = x[n, c, iy, ix]
                        if v > best_val:
                            best_val = v
                            best = iy * width + ix
                out[n, c, oy, ox] = best_val
                argmax[n, c, oy, ox] = best


@nb.njit(parallel=True, **_JIT)
def max_pool_backward(grad_out, argmax, grad_in):
    """grad_in[n, c, argmax] += grad_out[n, c, oy, ox]; ``grad_in`` is overwritten."""
    n_img, channels, height, width = grad_in.shape
    oh, ow = grad_out.shape[2], grad_out.shape[3]
    for plane in nb.prange(n_img * channels):
        n = plane // channels
        c = plane - n * channels
        grad_in[n, c] = 0
        for oy in range(oh):
            for ox in range(ow):
                k = argmax[n, c, oy, ox]
                grad_in[n, c, k // width, k % width] += grad_out[n, c, oy, ox]


@nb.njit(parallel=True, **_JIT)
def avg_pool_forward(x, kh, kw, sh, sw, ph, pw, out):
    n_img, channels, height, width = x.shape
    oh, ow = out.shape[2], out.shape[3]
    scale = 1.0 / (kh * kw)
    for plane in nb.prange(n_img * channels):
        n = plane // channels
        c = plane - n * channels
        for oy in range(oh):
            y0, y1 = _window(oy, sh, ph, kh, height)
            for ox in range(ow):
                x0, x1 = _window(ox, sw, pw, kw, width)
                acc = 0.0
                for iy in range(y0, y1):
                    for ix in range(x0, x1):
                        acc += x[n, c, iy, ix]
                out[n, c, oy, ox] = acc * scale


@nb.njit(parallel=True, **_JIT)
def avg_pool_backward(grad_out, kh, kw, sh, sw, ph, pw, grad_in):
    """grad_in[n, c, y, x] = sum over windows containing (y, x) of grad_out / (KH*KW)."""
    n_img, channels, height, width = grad_in.shape
    oh, ow = grad_out.shape[2], grad_out.shape[3]
    scale = 1.0 / (kh * kw)
    for plane in nb.prange(n_img * channels):
        n = plane // channels
        c = plane - n * channels
        grad_in[n, c] = 0
        for oy in range(oh):
            y0, y1 = _window(oy, sh, ph, kh, height)
            for ox in range(ow):
                x0, x1 = _window(ox, sw, pw, kw, width)
                g = grad_out[n, c, oy, ox] * scale
                for iy in range(y0, y1):
                    for ix in range(x0, x1):
                        grad_in[n, c, iy, ix] += g


@nb.njit(parallel=True, **_JIT)
def avg_pool_nhwc(x, k, out):
    """Channels-last average pool, window and stride ``k``, no padding:
    ``out[n, oy, ox, c] = (sum_{i, j < k} x[n, k*oy + i, k*ox + j, c]) / k^2``, summed in float64 in
    the order of ``avg_pool_forward`` (so the results are the same bits)."""
    n_img, height, width, channels = x.shape
    oh, ow = out.shape[1], out.shape[2]
    scale = 1.0 / (k * k)
    for row in nb.prange(n_img * oh):
        n = row // oh
        oy = row - n * oh
        acc = np.empty(channels, np.float64)
        for ox in range(ow):
            acc[:] = 0.0
            for iy in range(oy * k, oy * k + k):
                for ix in range(ox * k, ox * k + k):
                    src = x[n, iy, ix]
                    for c in range(channels):
                        acc[c] += src[c]
            dst = out[n, oy, ox]
            for c in range(channels):
                dst[c] = acc[c] * scale
