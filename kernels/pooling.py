"""Max and average pooling over NCHW planes (Numba; the N*C planes split across bitnet's threads).

For window (KH, KW), stride (SH, SW) and padding (PH, PW), output position (oy, ox) covers the input
rows oy*SH - PH .. oy*SH - PH + KH - 1 (columns alike), clipped to the input:

    max:  y[n, c, oy, ox] = max of the window (padding is -inf: it never wins); NaN propagates as in
          PyTorch: a window holding a NaN gives NaN. ``argmax`` stores the flat index y*W + x of the
          winner: the last NaN in scan order if the window has one, else the first maximum (ties), so
          the backward routes the whole gradient there (PyTorch's ``v > best || isnan(v)`` rule).
    avg:  y[n, c, oy, ox] = (sum of the window) / D, with D (PyTorch's divisor):
          count_include_pad=True (default): the window clipped to the padded input,
          (min(y0 + KH, H + PH) - y0) * (min(x0 + KW, W + PW) - x0) with y0 = oy*SH - PH, i.e.
          KH*KW except for ceil-mode windows hanging over the padded border;
          count_include_pad=False: the number of input elements in the window.

The output size per axis (``pool_output_size``) is floor((L + 2P - K) / S) + 1, or with ``ceil_mode``
ceil((L + 2P - K) / S) + 1 less one if the last window would start in the right padding (PyTorch's
rule), so every window holds at least one input element.
"""
from __future__ import annotations

import numba as nb
import numpy as np

from bitnet.kernels.atomics import claimed
from bitnet.kernels.threads import parallel

_JIT = dict(nogil=True, cache=True, boundscheck=False, fastmath=False)


def pool_output_size(size: int, kernel: int, stride: int, padding: int, ceil_mode: bool = False) -> int:
    """Output length along one axis (see the module docstring); raises if the window does not fit."""
    span = size + 2 * padding - kernel
    out = (span + (stride - 1 if ceil_mode else 0)) // stride + 1
    if ceil_mode and (out - 1) * stride >= size + padding:
        out -= 1
    if span < 0 or out <= 0:
        raise ValueError(f"pooling window of size {kernel} does not fit an input of size {size} with "
                         f"padding {padding}; use a larger input, a smaller window or more padding")
    return out


@nb.njit(inline="always")
def _window(o, stride, pad, kernel, size):
    """[lo, hi): the input positions of output o's window that lie inside the input."""
    start = o * stride - pad
    return max(start, 0), min(start + kernel, size)


@nb.njit(inline="always")
def _divisor(oy, ox, kh, kw, sh, sw, ph, pw, height, width, count_include_pad):
    """The average pool's divisor D of window (oy, ox) (module docstring)."""
    y0, x0 = oy * sh - ph, ox * sw - pw
    if count_include_pad:
        return (min(y0 + kh, height + ph) - y0) * (min(x0 + kw, width + pw) - x0)
    return (min(y0 + kh, height) - max(y0, 0)) * (min(x0 + kw, width) - max(x0, 0))


def max_pool_forward(x, kh, kw, sh, sw, ph, pw, out, argmax):
    """The output size is ``out``'s (floor or ceil mode); ``out`` and ``argmax`` are C-contiguous.
    When the windows tile the input (stride == kernel, no padding, no window past the edge: the
    usual 2x2/2), every window lies inside the input and a loop with no bounds and branch-free
    selects runs, one separately compiled function per plane: for 2x2 windows on 1-D row views
    (``_max_pool_2x2_row``; LeNet's first pooling, (128, 64, 24, 24), one AMD Zen 4 core: 1.4 ms,
    against 6.0 ms for the same loop on flat indices with the window as constants, which had taken
    5.9-6.3 ms against 10-12 ms for 4-D indexing on an Intel core); otherwise each window is clipped
    to the input. ``v != v`` is the NaN test."""
    n_img, channels, height, width = x.shape
    oh, ow = out.shape[2], out.shape[3]
    cost = oh * ow * kh * kw
    if sh == kh and sw == kw and ph == 0 and pw == 0 and oh * kh <= height and ow * kw <= width:
        x = np.ascontiguousarray(x)
        parallel(_max_pool_tiled, n_img * channels, x.reshape(-1), kh, kw, height, width, oh, ow,
                 out.reshape(-1), argmax.reshape(-1), cost=cost)
        return
    parallel(_max_pool_forward, n_img * channels, x, kh, kw, sh, sw, ph, pw, out, argmax, cost=cost)


@nb.njit(**_JIT)
def _max_pool_tiled(x, kh, kw, height, width, oh, ow, out, argmax, counter, chunk):
    """One thread's share of the tiling case of ``max_pool_forward``, on flat arrays."""
    for plane in claimed(counter, chunk, out.size // (oh * ow)):
        _max_pool_tiled_plane(x, kh, kw, width, oh, ow, out, argmax, plane * height * width, plane * oh * ow)


@nb.njit(**_JIT)
def _max_pool_tiled_plane(x, kh, kw, width, oh, ow, out, argmax, x0, o0):
    """One plane of the tiling case (flat arrays; the plane starts at x0 in x, o0 in out): 2x2
    windows row by row on 1-D views, other windows on flat indices."""
    if kh == 2 and kw == 2:
        for oy in range(oh):
            r0 = x0 + 2 * oy * width
            _max_pool_2x2_row(x[r0:r0 + width], x[r0 + width:r0 + 2 * width], 2 * oy * width,
                              out[o0 + oy * ow:o0 + (oy + 1) * ow], argmax[o0 + oy * ow:o0 + (oy + 1) * ow])
        return
    for oy in range(oh):
        for ox in range(ow):
            start = x0 + oy * kh * width + ox * kw
            best_val = x[start]
            best = start
            for i in range(kh):
                for j in range(kw):
                    k = start + i * width + j
                    v = x[k]
                    better = (v > best_val) | (v != v)
                    best_val = v if better else best_val
                    best = k if better else best
            out[o0 + oy * ow + ox] = best_val
            argmax[o0 + oy * ow + ox] = best - x0


@nb.njit(**_JIT)
def _max_pool_forward(x, kh, kw, sh, sw, ph, pw, out, argmax, counter, chunk):
    """One thread's share of ``max_pool_forward`` (windows clipped to the input): the planes it claims."""
    n_img, channels, height, width = x.shape
    oh, ow = out.shape[2], out.shape[3]
    for plane in claimed(counter, chunk, n_img * channels):
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
                        if v > best_val or v != v:
                            best_val = v
                            best = iy * width + ix
                out[n, c, oy, ox] = best_val
                argmax[n, c, oy, ox] = best


@nb.njit(inline="always")
def _max_pool_2x2_row(top, bottom, i0, out, argmax):
    """2x2 windows over two input rows (``i0``: the top row's flat index in the plane): the same
    selection as the general loop (scan order top-left, top-right, bottom-left, bottom-right; the
    first maximum, or the last NaN) on 1-D views, which LLVM vectorizes (4.4x the general loop's
    speed on LeNet's 24 x 24 planes)."""
    width = top.size
    for ox in range(out.size):
        k = i0 + 2 * ox
        best, at = top[2 * ox], k
        v = top[2 * ox + 1]
        better = (v > best) | (v != v)
        best, at = (v, k + 1) if better else (best, at)
        v = bottom[2 * ox]
        better = (v > best) | (v != v)
        best, at = (v, k + width) if better else (best, at)
        v = bottom[2 * ox + 1]
        better = (v > best) | (v != v)
        best, at = (v, k + width + 1) if better else (best, at)
        out[ox] = best
        argmax[ox] = at


def max_pool_backward(grad_out, argmax, grad_in):
    """grad_in[n, c, argmax] += grad_out[n, c, oy, ox]; ``grad_in`` (C-contiguous) is overwritten.
    Flat indices, one separately compiled function per plane (as the forward's tiling case)."""
    n_img, channels, height, width = grad_in.shape
    plane_out = grad_out.shape[2] * grad_out.shape[3]
    parallel(_max_pool_backward, n_img * channels, np.ascontiguousarray(grad_out).reshape(-1),
             np.ascontiguousarray(argmax).reshape(-1), grad_in.reshape(-1), height * width, plane_out,
             cost=height * width)


@nb.njit(**_JIT)
def _max_pool_backward(grad_out, argmax, grad_in, plane_in, plane_out, counter, chunk):
    """One thread's share of ``max_pool_backward``: the planes it claims."""
    for plane in claimed(counter, chunk, grad_in.size // max(plane_in, 1)):
        _max_pool_backward_plane(grad_out, argmax, grad_in, plane * plane_in, plane * plane_out, plane_in, plane_out)


@nb.njit(**_JIT)
def _max_pool_backward_plane(grad_out, argmax, grad_in, i0, o0, plane_in, plane_out):
    for k in range(i0, i0 + plane_in):
        grad_in[k] = 0
    for o in range(o0, o0 + plane_out):
        grad_in[i0 + argmax[o]] += grad_out[o]


def _tiles_2x2(x_shape, out_shape, kh, kw, sh, sw, ph, pw) -> bool:
    """2x2 windows with stride 2 and no padding, every window inside the input (D = 4)."""
    return ((kh, kw, sh, sw, ph, pw) == (2, 2, 2, 2, 0, 0)
            and 2 * out_shape[2] <= x_shape[2] and 2 * out_shape[3] <= x_shape[3])


def avg_pool_forward(x, kh, kw, sh, sw, ph, pw, out, count_include_pad=True):
    """out = window sum (float64, row-major order) times 1/D; the output size is ``out``'s. 2x2 windows
    that tile the input run a loop on 1-D row views (the same sums: resnet18-binary's first shortcut,
    (64, 64, 32, 32), one thread: 7.7 -> 1.4 ms)."""
    if _tiles_2x2(x.shape, out.shape, kh, kw, sh, sw, ph, pw):
        parallel(_avg_pool_2x2, x.shape[0] * x.shape[1], np.ascontiguousarray(x), out, cost=4 * out.shape[2] * out.shape[3])
        return
    parallel(_avg_pool_forward, x.shape[0] * x.shape[1], x, kh, kw, sh, sw, ph, pw, out, count_include_pad,
             cost=out.shape[2] * out.shape[3] * kh * kw)


@nb.njit(**_JIT)
def _avg_pool_2x2(x, out, counter, chunk):
    """One thread's share of the 2x2 tiling case of ``avg_pool_forward``: the planes it claims."""
    n_img, channels = x.shape[0], x.shape[1]
    scale = 1.0 / 4
    for plane in claimed(counter, chunk, n_img * channels):
        n = plane // channels
        p, o = x[n, plane - n * channels], out[n, plane - n * channels]
        for oy in range(o.shape[0]):
            top, bottom, dst = p[2 * oy], p[2 * oy + 1], o[oy]
            for ox in range(dst.size):
                acc = 0.0
                acc += top[2 * ox]
                acc += top[2 * ox + 1]
                acc += bottom[2 * ox]
                acc += bottom[2 * ox + 1]
                dst[ox] = acc * scale


@nb.njit(**_JIT)
def _avg_pool_forward(x, kh, kw, sh, sw, ph, pw, out, count_include_pad, counter, chunk):
    """One thread's share of ``avg_pool_forward``: the planes it claims."""
    n_img, channels, height, width = x.shape
    oh, ow = out.shape[2], out.shape[3]
    for plane in claimed(counter, chunk, n_img * channels):
        n = plane // channels
        c = plane - n * channels
        for oy in range(oh):
            y0, y1 = _window(oy, sh, ph, kh, height)
            for ox in range(ow):
                x0, x1 = _window(ox, sw, pw, kw, width)
                scale = 1.0 / _divisor(oy, ox, kh, kw, sh, sw, ph, pw, height, width, count_include_pad)
                acc = 0.0
                for iy in range(y0, y1):
                    for ix in range(x0, x1):
                        acc += x[n, c, iy, ix]
                out[n, c, oy, ox] = acc * scale


def avg_pool_backward(grad_out, kh, kw, sh, sw, ph, pw, grad_in, count_include_pad=True):
    """grad_in[n, c, y, x] = sum over windows containing (y, x) of grad_out / D (for 2x2 windows that
    tile the input: grad_out / 4 at the window's four positions, 0 where no window reads; the same
    values, on 1-D row views)."""
    if _tiles_2x2(grad_in.shape, grad_out.shape, kh, kw, sh, sw, ph, pw):
        parallel(_avg_pool_2x2_backward, grad_in.shape[0] * grad_in.shape[1], np.ascontiguousarray(grad_out),
                 grad_in, cost=4 * grad_out.shape[2] * grad_out.shape[3])
        return
    parallel(_avg_pool_backward, grad_in.shape[0] * grad_in.shape[1], grad_out, kh, kw, sh, sw, ph, pw, grad_in,
             count_include_pad,
             cost=grad_out.shape[2] * grad_out.shape[3] * kh * kw)


@nb.njit(**_JIT)
def _avg_pool_backward(grad_out, kh, kw, sh, sw, ph, pw, grad_in, count_include_pad, counter, chunk):
    """One thread's share of ``avg_pool_backward``: the planes it claims."""
    n_img, channels, height, width = grad_in.shape
    oh, ow = grad_out.shape[2], grad_out.shape[3]
    for plane in claimed(counter, chunk, n_img * channels):
        n = plane // channels
        c = plane - n * channels
        grad_in[n, c] = 0
        for oy in range(oh):
            y0, y1 = _window(oy, sh, ph, kh, height)
            for ox in range(ow):
                x0, x1 = _window(ox, sw, pw, kw, width)
                scale = 1.0 / _divisor(oy, ox, kh, kw, sh, sw, ph, pw, height, width, count_include_pad)
                g = grad_out[n, c, oy, ox] * scale
                for iy in range(y0, y1):
                    for ix in range(x0, x1):
                        grad_in[n, c, iy, ix] += g


@nb.njit(**_JIT)
def _avg_pool_2x2_backward(grad_out, grad_in, counter, chunk):
    """One thread's share of the 2x2 tiling case of ``avg_pool_backward``: the planes it claims."""
    n_img, channels = grad_in.shape[0], grad_in.shape[1]
    scale = 1.0 / 4
    for plane in claimed(counter, chunk, n_img * channels):
        n = plane // channels
        gi, go = grad_in[n, plane - n * channels], grad_out[n, plane - n * channels]
        oh, ow = go.shape[0], go.shape[1]
        gi[2 * oh:] = 0  # rows and columns no window reads (odd sizes)
        gi[:, 2 * ow:] = 0
        for oy in range(oh):
            top, bottom, src = gi[2 * oy], gi[2 * oy + 1], go[oy]
            for ox in range(ow):
                g = src[ox] * scale
                top[2 * ox] = g
                top[2 * ox + 1] = g
                bottom[2 * ox] = g
                bottom[2 * ox + 1] = g


def avg_pool_nhwc(x, k, out):
    """Channels-last average pool, window and stride ``k``, no padding:
    ``out[n, oy, ox, c] = (sum_{i, j < k} x[n, k*oy + i, k*ox + j, c]) / D``, summed in float64 in
    the order of ``avg_pool_forward`` (so the results are the same bits). The output size is
    ``out``'s: floor(H / k) (every window whole, D = k^2) or ceil(H / k) (ceil mode: the last window
    of an axis whose size k does not divide is clipped to the input, and D counts the elements it
    holds, PyTorch's divisor without padding)."""
    parallel(_avg_pool_nhwc, x.shape[0] * out.shape[1], x, k, out, cost=out.shape[2] * out.shape[3] * k * k)


@nb.njit(**_JIT)
def _avg_pool_nhwc(x, k, out, counter, chunk):
    """One thread's share of ``avg_pool_nhwc``: the planes it claims."""
    n_img, height, width, channels = x.shape
    oh, ow = out.shape[1], out.shape[2]
    for row in claimed(counter, chunk, n_img * oh):
        n = row // oh
        oy = row - n * oh
        y1 = min(oy * k + k, height)
        acc = np.empty(channels, np.float64)
        for ox in range(ow):
            x1 = min(ox * k + k, width)
            scale = 1.0 / ((y1 - oy * k) * (x1 - ox * k))
            acc[:] = 0.0
            for iy in range(oy * k, y1):
                for ix in range(ox * k, x1):
                    src = x[n, iy, ix]
                    for c in range(channels):
                        acc[c] += src[c]
            dst = out[n, oy, ox]
            for c in range(channels):
                dst[c] = acc[c] * scale
