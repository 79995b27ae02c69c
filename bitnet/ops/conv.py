"""2-D convolution and pooling on NCHW tensors, on the Numba kernels of ``bitnet.kernels``.

conv2d (cross-correlation, as in every DL framework), with G groups, input (N, C, H, W),
weight (O, C/G, KH, KW), optional bias (O,):

    y[n, o, oy, ox] = b[o] + sum_{c in group(o), i, j} w[o, c, i, j] * x[n, c, oy*SH - PH + i*DH, ox*SW - PW + j*DW]

computed as a GEMM on the im2col matrix (see ``bitnet.kernels.im2col``) per group. Backward:
dW = G_rows^T @ cols, dcols = G_rows @ W, dx = col2im(dcols), db = sum of G over (n, oy, ox).
"""
from __future__ import annotations

import numpy as np

from bitnet.kernels import im2col as K
from bitnet.kernels.gemm import matmul as gemm
from bitnet.kernels import pooling as P
from bitnet.tensor import Function, Tensor


def pair(v, name: str) -> tuple:
    """Normalize an int or a 2-sequence of ints to a pair, with a clear error otherwise."""
    if isinstance(v, (int, np.integer)):
        return int(v), int(v)
    try:
        a, b = v
        return int(a), int(b)
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be an int or a pair of ints, got {v!r}") from None


class Conv2d(Function):
    def forward(self, x, w, *bias, stride=(1, 1), padding=(0, 0), dilation=(1, 1), groups=1):
        n_img = x.shape[0]
        n_out, cg, kh, kw = w.shape
        self.geom = (kh, kw) + stride + padding + dilation
        cols, oh, ow = K.im2col_array(x, (kh, kw), stride, padding, dilation)
        wm = w.reshape(n_out, cg * kh * kw)
        og, kg = n_out // groups, cg * kh * kw
        if groups == 1:
            y = gemm(wm, cols)
        else:
            y = np.empty((n_out, cols.shape[1]), dtype=x.dtype)
            for g in range(groups):
                gemm(wm[g * og:(g + 1) * og], cols[g * kg:(g + 1) * kg], out=y[g * og:(g + 1) * og])
        b = bias[0] if bias else np.zeros(n_out, dtype=x.dtype)
        out = np.empty((n_img, n_out, oh, ow), dtype=x.dtype)
        K.swap_leading_axes(y.reshape(n_out, n_img, oh * ow), b, out.reshape(n_img, n_out, oh * ow))
        self.cols, self.w, self.x_shape, self.groups = cols, w, x.shape, groups
        return out

    def backward(self, g):
        n_out, cg, kh, kw = self.w.shape
        n_img, _, oh, ow = g.shape
        groups, og, kg = self.groups, n_out // self.groups, cg * kh * kw
        gt = np.empty((n_out, n_img * oh * ow), dtype=g.dtype)  # g as (O, N*OH*OW)
        K.swap_leading_axes(np.ascontiguousarray(g).reshape(n_img, n_out, oh * ow),
                            np.zeros(n_img, dtype=g.dtype), gt.reshape(n_out, n_img, oh * ow))
        wm = self.w.reshape(n_out, kg)
        gx = gw = None
        if self.needs_grad[1]:
            gw = np.empty_like(wm)
            for gi in range(groups):
                o, k = slice(gi * og, (gi + 1) * og), slice(gi * kg, (gi + 1) * kg)
                gemm(gt[o], self.cols[k].T, out=gw[o])
            gw = gw.reshape(self.w.shape)
        if self.needs_grad[0]:
            if groups == 1:
                dcols = gemm(wm.T, gt)
            else:
                dcols = np.empty_like(self.cols)
                for gi in range(groups):
                    o, k = slice(gi * og, (gi + 1) * og), slice(gi * kg, (gi + 1) * kg)
                    gemm(wm[o].T, gt[o], out=dcols[k])
            gx = np.empty(self.x_shape, dtype=g.dtype)
            kh_, kw_, sh, sw, ph, pw, dh, dw = self.geom
            K.col2im(dcols, kh_, kw_, sh, sw, ph, pw, dh, dw, oh, ow, gx)
        if len(self.needs_grad) == 3:
            gb = gt.sum(axis=1) if self.needs_grad[2] else None
            return gx, gw, gb
        return gx, gw


def conv2d(x, weight, bias=None, stride=1, padding=0, dilation=1, groups=1) -> Tensor:
    """2-D convolution of x (N, C, H, W) with weight (O, C/groups, KH, KW); see module doc."""
    stride, padding, dilation = pair(stride, "stride"), pair(padding, "padding"), pair(dilation, "dilation")
    if x.ndim != 4:
        raise ValueError(f"conv2d expects a 4-D input (N, C, H, W), got shape {x.shape}; "
                         "add a batch axis with x.reshape(1, *x.shape) for a single image")
    if weight.ndim != 4:
        raise ValueError(f"conv2d expects a 4-D weight (O, C/groups, KH, KW), got shape {weight.shape}")
    if groups < 1 or x.shape[1] % groups or weight.shape[0] % groups:
        raise ValueError(f"conv2d: groups={groups} must divide both the input channels "
                         f"({x.shape[1]}) and the output channels ({weight.shape[0]})")
    if x.shape[1] != weight.shape[1] * groups:
        raise ValueError(f"conv2d: input has {x.shape[1]} channels but the weight expects "
                         f"{weight.shape[1] * groups} (weight shape {weight.shape}, groups={groups})")
    if min(stride) < 1 or min(dilation) < 1 or min(padding) < 0:
        raise ValueError(f"conv2d: need stride >= 1, dilation >= 1, padding >= 0; got stride="
                         f"{stride}, dilation={dilation}, padding={padding}")
    if bias is not None and bias.shape != (weight.shape[0],):
        raise ValueError(f"conv2d: bias shape {bias.shape} must be ({weight.shape[0]},)")
    args = (x, weight) if bias is None else (x, weight, bias)
    return Conv2d.apply(*args, stride=stride, padding=padding, dilation=dilation, groups=groups)


# -- pooling --------------------------------------------------------------------------------------

class MaxPool2d(Function):
    def forward(self, x, kernel=(2, 2), stride=(2, 2), padding=(0, 0)):
        oh = K.conv_output_size(x.shape[2], kernel[0], stride[0], padding[0], 1)
        ow = K.conv_output_size(x.shape[3], kernel[1], stride[1], padding[1], 1)
        out = np.empty(x.shape[:2] + (oh, ow), dtype=x.dtype)
        self.argmax = np.empty(out.shape, dtype=np.int32)
        P.max_pool_forward(np.ascontiguousarray(x), *kernel, *stride, *padding, out, self.argmax)
        self.x_shape = x.shape
        return out

    def backward(self, g):
        gx = np.empty(self.x_shape, dtype=g.dtype)
        P.max_pool_backward(np.ascontiguousarray(g), self.argmax, gx)
        return gx


class AvgPool2d(Function):
    def forward(self, x, kernel=(2, 2), stride=(2, 2), padding=(0, 0)):
        oh = K.conv_output_size(x.shape[2], kernel[0], stride[0], padding[0], 1)
        ow = K.conv_output_size(x.shape[3], kernel[1], stride[1], padding[1], 1)
        out = np.empty(x.shape[:2] + (oh, ow), dtype=x.dtype)
        P.avg_pool_forward(np.ascontiguousarray(x), *kernel, *stride, *padding, out)
        self.geom, self.x_shape = kernel + stride + padding, x.shape
        return out

    def backward(self, g):
        gx = np.empty(self.x_shape, dtype=g.dtype)
        P.avg_pool_backward(np.ascontiguousarray(g), *self.geom, gx)
        return gx


def _pool_args(x, kernel_size, stride, padding, name):
    if x.ndim != 4:
        raise ValueError(f"{name} expects a 4-D input (N, C, H, W), got shape {x.shape}")
    kernel = pair(kernel_size, "kernel_size")
    stride = kernel if stride is None else pair(stride, "stride")
    padding = pair(padding, "padding")
    if min(kernel) < 1 or min(stride) < 1 or min(padding) < 0:
        raise ValueError(f"{name}: need kernel_size >= 1, stride >= 1, padding >= 0; got "
                         f"{kernel}, {stride}, {padding}")
    if padding[0] > kernel[0] // 2 or padding[1] > kernel[1] // 2:
        raise ValueError(f"{name}: padding {padding} must be at most half the kernel size {kernel}")
    return dict(kernel=kernel, stride=stride, padding=padding)


def max_pool2d(x, kernel_size, stride=None, padding=0) -> Tensor:
    """Max over KHxKW windows (stride defaults to the window); see ``bitnet.kernels.pooling``."""
    return MaxPool2d.apply(x, **_pool_args(x, kernel_size, stride, padding, "max_pool2d"))


def avg_pool2d(x, kernel_size, stride=None, padding=0) -> Tensor:
    """Mean over KHxKW windows, padding counted as zeros (count_include_pad)."""
    return AvgPool2d.apply(x, **_pool_args(x, kernel_size, stride, padding, "avg_pool2d"))
