"""Max and average pooling on "cuda", by window taps: one strided slice of the (padded) input per
tap (i, j) < (KH, KW), elementwise device ops across taps. The semantics are the CPU's
(``bitnet.ops.pool``, ``bitnet.kernels.pooling``), output sizes included (floor / ceil mode):

- max: the window's positions inside the input are scanned row-major from the first one; a value
  replaces the best when it is greater or NaN, so the output is the first maximum, or the last NaN;
  the tap that won (``argtap``) gets the whole gradient. Positions outside the input never win.
- avg: y = (sum of the window in float64, row-major) * (1.0 / D) rounded to the input's dtype, D as
  on the CPU (count_include_pad: the window clipped to the padded input; else its input positions);
  dL/dx = sum over the windows holding x of g * (1.0 / D), added in float64 and rounded to the dtype
  in the CPU's order (windows row-major: taps in reverse order).

Both give the CPU's bits: the same operations in the same order. Max pooling runs as array
operations over the taps: windows that hang past the input (padding, ceil mode) read a padded copy,
the backward crops it. Average pooling runs as one CUDA C kernel each way (``bitnet.kernels.
cuda_pooling``; NumPy functions on the emulation), which skip the positions outside the input.
"""
from __future__ import annotations

import numpy as np

from bitnet.gpu.arrays import array_module
from bitnet.gpu.dispatch import implements
from bitnet.gpu.raw_kernels import blocks_for, c_type, launch
from bitnet.kernels import cuda_pooling as KP
from bitnet.ops import pool as cpu_pool


def _geometry(x_shape, kernel, stride, padding, ceil_mode):
    """(OH, OW) and the padding (top, bottom, left, right) that every window's taps need."""
    oh, ow = cpu_pool._out_shape(x_shape, kernel, stride, padding, ceil_mode)[2:]
    (kh, kw), (sh, sw), (ph, pw) = kernel, stride, padding
    height, width = x_shape[2:]
    bottom = max(0, (oh - 1) * sh + kh - height - ph)
    right = max(0, (ow - 1) * sw + kw - width - pw)
    return (oh, ow), (ph, bottom, pw, right)


def _padded(x, pads, fill=0):
    """x with ``pads`` (top, bottom, left, right) of ``fill`` around its planes (x itself if none)."""
    if not any(pads):
        return x
    xp = array_module(x)
    top, bottom, left, right = pads
    n_img, channels, height, width = x.shape
    out = xp.full((n_img, channels, top + height + bottom, left + width + right), fill, dtype=x.dtype)
    out[:, :, top:top + height, left:left + width] = x
    return out


def _taps(kernel, stride, out_hw):
    """``[(t, i, j, (rows, cols))]``: each tap's index, position, and slices of the padded input."""
    (kh, kw), (sh, sw), (oh, ow) = kernel, stride, out_hw
    return [(i * kw + j, i, j, (slice(i, i + (oh - 1) * sh + 1, sh), slice(j, j + (ow - 1) * sw + 1, sw)))
            for i in range(kh) for j in range(kw)]


def _starts(xp, n_out, stride, pad):
    """The first input position of each output's window along one axis (may be negative)."""
    return xp.arange(n_out, dtype=np.int64) * stride - pad


def _crop(xp, gx, x_shape, pads):
    if not any(pads):
        return gx
    top, left = pads[0], pads[2]
    return xp.ascontiguousarray(gx[:, :, top:top + x_shape[2], left:left + x_shape[3]])


@implements(cpu_pool.MaxPool2d)
class MaxPool2d(cpu_pool.MaxPool2d):
    """``max_pool2d`` on "cuda" (module docstring). Saved: ``argtap`` (N, C, OH, OW) int32, the
    winning tap i*KW + j of each window; ``x_shape``, ``kernel``, ``stride``, ``pads``."""

    def forward(self, x, kernel=(2, 2), stride=(2, 2), padding=(0, 0), ceil_mode=False):
        xp = array_module(x)
        (oh, ow), pads = _geometry(x.shape, kernel, stride, padding, ceil_mode)
        taps = _taps(kernel, stride, (oh, ow))
        xpad = _padded(x, pads)
        best = xpad[(slice(None), slice(None)) + taps[0][3]].copy()
        argtap = xp.zeros(best.shape, dtype=np.int32)
        if any(pads):  # row/column masks: tap inside the input; tap is the window's first input position
            height, width = x.shape[2:]
            y0 = _starts(xp, oh, stride[0], padding[0]).reshape(-1, 1)
            x0 = _starts(xp, ow, stride[1], padding[1]).reshape(1, -1)
            first_y, first_x = xp.maximum(y0, 0), xp.maximum(x0, 0)
        for t, i, j, (rows, cols) in taps[1:] if not any(pads) else taps:
            v = xpad[:, :, rows, cols]
            better = (v > best) | (v != v)
            if any(pads):
                yi, xj = y0 + i, x0 + j
                inside = ((yi >= 0) & (yi < height)) & ((xj >= 0) & (xj < width))
                better = (better & inside) | ((yi == first_y) & (xj == first_x))
            best = xp.where(better, v, best)
            argtap = xp.where(better, np.int32(t), argtap)
        self.argtap, self.x_shape, self.kernel, self.stride, self.pads = argtap, x.shape, kernel, stride, pads
        return xp.ascontiguousarray(best)

    def backward(self, g):
        """gx[window's winning position] += g[window], windows in row-major order (the CPU's)."""
        xp = array_module(g)
        n_img, channels, height, width = self.x_shape
        top, bottom, left, right = self.pads
        gx = xp.zeros((n_img, channels, top + height + bottom, left + width + right), dtype=g.dtype)
        zero = xp.zeros((), dtype=g.dtype)
        for t, _, _, (rows, cols) in reversed(_taps(self.kernel, self.stride, g.shape[2:])):
            gx[:, :, rows, cols] += xp.where(self.argtap == t, g, zero)
        return _crop(xp, gx, self.x_shape, self.pads)


@implements(cpu_pool.AvgPool2d)
class AvgPool2d(cpu_pool.AvgPool2d):
    """``avg_pool2d`` on "cuda" (module docstring): one CUDA C kernel each way for float32 / float64
    (``bitnet.kernels.cuda_pooling``: the same sums in the same order). Saved: the geometry."""

    def forward(self, x, kernel=(2, 2), stride=(2, 2), padding=(0, 0), ceil_mode=False, count_include_pad=True):
        xp = array_module(x)
        (oh, ow), _ = _geometry(x.shape, kernel, stride, padding, ceil_mode)
        x = xp.ascontiguousarray(x)
        y = xp.empty((x.shape[0], x.shape[1], oh, ow), x.dtype)
        self.geometry = (x.shape[2], x.shape[3], oh, ow) + tuple(kernel) + tuple(stride) + tuple(padding) + (
            int(bool(count_include_pad)),)
        self.x_shape = x.shape
        launch(KP, "pool_avg_forward", blocks_for(y.size, KP.THREADS), KP.THREADS, (x, y.size) + self.geometry + (y,),
               dict(PO_T=c_type(x.dtype)))
        return y

    def backward(self, g):
        xp = array_module(g)
        g = xp.ascontiguousarray(g)
        dx = xp.empty(self.x_shape, g.dtype)
        launch(KP, "pool_avg_backward", blocks_for(dx.size, KP.THREADS), KP.THREADS,
               (g, dx.size) + self.geometry + (dx,), dict(PO_T=c_type(g.dtype)))
        return dx
