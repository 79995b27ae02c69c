"""Max and average pooling of NCHW tensors, on the Numba kernels of ``bitnet.kernels.pooling``.

For window (KH, KW), stride (SH, SW) (default: the window) and padding (PH, PW) <= half the window:

    max_pool2d: y[n, c, oy, ox] = max_{i<KH, j<KW} x[n, c, oy*SH - PH + i, ox*SW - PW + j] over the
                positions inside the input; a window holding a NaN gives NaN (PyTorch). The gradient
                goes to the winner (the first maximum, or the last NaN).
    avg_pool2d: y[n, c, oy, ox] = (sum of the window) / D, D = KH*KW with ``count_include_pad=True``
                (padding counted as zeros; windows hanging over the padded border in ceil mode count
                only up to it), or the number of input elements in the window with
                ``count_include_pad=False``. dL/dx[y, x] = sum over the windows w holding (y, x) of g_w / D_w.

``ceil_mode=True`` rounds the output size up (an extra, partial window at the bottom/right), as
PyTorch: out = ceil((L + 2P - K) / S) + 1, less one if that window would start in the right padding.
"""
from __future__ import annotations

import numpy as np

from bitnet.kernels import pooling as P
from bitnet.ops import workspace as W
from bitnet.ops.dims import pair
from bitnet.tensor import Function, Tensor


def _out_shape(x_shape, kernel, stride, padding, ceil_mode):
    return tuple(x_shape[:2]) + tuple(P.pool_output_size(x_shape[2 + i], kernel[i], stride[i], padding[i], ceil_mode)
                                      for i in range(2))


class MaxPool2d(Function):
    float_inputs = "max_pool2d"  # integer / bool inputs computed in float32 (bitnet.ops.dtypes)

    def forward(self, x, kernel=(2, 2), stride=(2, 2), padding=(0, 0), ceil_mode=False):
        out = W.empty(_out_shape(x.shape, kernel, stride, padding, ceil_mode), dtype=x.dtype)
        self.argmax = W.empty(out.shape, dtype=np.int32)
        P.max_pool_forward(np.ascontiguousarray(x), *kernel, *stride, *padding, out, self.argmax)
        self.x_shape = x.shape
        return out

    def backward(self, g):
        gx = W.empty(self.x_shape, dtype=g.dtype)
        P.max_pool_backward(np.ascontiguousarray(g), self.argmax, gx)
        return gx


class AvgPool2d(Function):
    float_inputs = "avg_pool2d"

    def forward(self, x, kernel=(2, 2), stride=(2, 2), padding=(0, 0), ceil_mode=False, count_include_pad=True):
        out = W.empty(_out_shape(x.shape, kernel, stride, padding, ceil_mode), dtype=x.dtype)
        P.avg_pool_forward(np.ascontiguousarray(x), *kernel, *stride, *padding, out, count_include_pad)
        self.geom, self.x_shape, self.count_include_pad = kernel + stride + padding, x.shape, count_include_pad
        return out

    def backward(self, g):
        gx = W.empty(self.x_shape, dtype=g.dtype)
        P.avg_pool_backward(np.ascontiguousarray(g), *self.geom, gx, self.count_include_pad)
        return gx


def _pool_args(x, kernel_size, stride, padding, ceil_mode, name):
    if x.ndim != 4:
        raise ValueError(f"{name} expects a 4-D input (N, C, H, W), got shape {x.shape}; add a batch axis "
                         "with x.reshape(1, *x.shape) for a single image")
    kernel = pair(kernel_size, "kernel_size")
    stride = kernel if stride is None else pair(stride, "stride")
    padding = pair(padding, "padding")
    if min(kernel) < 1 or min(stride) < 1 or min(padding) < 0:
        raise ValueError(f"{name}: need kernel_size >= 1, stride >= 1, padding >= 0; got "
                         f"{kernel}, {stride}, {padding}")
    if padding[0] > kernel[0] // 2 or padding[1] > kernel[1] // 2:
        raise ValueError(f"{name}: padding {padding} must be at most half the kernel size {kernel}")
    return dict(kernel=kernel, stride=stride, padding=padding, ceil_mode=bool(ceil_mode))


def max_pool2d(x, kernel_size, stride=None, padding=0, ceil_mode=False) -> Tensor:
    """Max over KHxKW windows (stride defaults to the window); see the module docstring."""
    return MaxPool2d.apply(x, **_pool_args(x, kernel_size, stride, padding, ceil_mode, "max_pool2d"))


def avg_pool2d(x, kernel_size, stride=None, padding=0, ceil_mode=False, count_include_pad=True) -> Tensor:
    """Mean over KHxKW windows (stride defaults to the window); padding counted as zeros unless
    ``count_include_pad=False``; see the module docstring."""
    return AvgPool2d.apply(x, **_pool_args(x, kernel_size, stride, padding, ceil_mode, "avg_pool2d"),
                           count_include_pad=bool(count_include_pad))
