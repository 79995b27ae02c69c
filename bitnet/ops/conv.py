"""2-D convolution on NCHW tensors, on the Numba kernels of ``bitnet.kernels``.

conv2d (cross-correlation, as in every DL framework), with G groups, input (N, C, H, W),
weight (O, C/G, KH, KW), optional bias (O,):

    y[n, o, oy, ox] = b[o] + sum_{c in group(o), i, j} w[o, c, i, j] * x[n, c, oy*SH - PH + i*DH, ox*SW - PW + j*DW]

computed per group as a GEMM with the lowered (im2col) input; see ``bitnet.kernels.im2col``.
Two lowerings, chosen per layer by measurement (LeNet, batch 128, forward + backward):

- column layout (few channels per group, e.g. a first layer on grey images): cols is
  (G*Cg*KH*KW, N*OH*OW); per image n, with cols_n = cols[:, n*P:(n+1)*P] (P = OH*OW) and G_n the
  output gradient's image n as (O, P): y_n = W @ cols_n straight into NCHW, dW = sum_n G_n @ cols_n^T,
  dcols_n = W^T @ G_n, dx = col2im(dcols) (``kernels.gemm.matmul_each`` / ``matmul_sum``: on LeNet's
  first layer, one thread, forward 4.2 ms (5.3 with the bias) and dW 6.2-6.4 ms, against 6.9-8.2 and
  8.1-8.5 ms for one (O, N*P) product each way and the moves between (O, N*P) and NCHW).
- channels-last rows (at least 16 channels per group): x goes to NHWC, rows is
  (N*OH*OW, G*KH*KW*Cg) with contiguous channel runs, y = rows @ Wr^T is (N*OH*OW, O) with the
  weight reordered to Wr (O, KH*KW*Cg); dW = G^T @ rows, drows = G @ Wr, dx = col2im_rows(drows).
  For 64 channels this took 51-59 ms against 80-95 ms for the column layout; for 1 channel
  27-42 ms against 13-14 ms.

db = sum of the output gradient over (n, oy, ox) in both.

ROWS_GEMMS: in the rows layout's backward, BLAS runs dW as (rows^T @ G)^T and drows as G times the
transpose of a contiguous W^T: on LeNet's binary conv2 ((8192, 1600) rows, 64 outputs, one thread)
15.7 and 17.5 ms against 20.1 and 21.6 ms for G^T @ rows and G @ W. The sums are the same terms
in BLAS's order for that shape, so dW and dx may differ from the other form in the last bits.
"""
from __future__ import annotations

import numpy as np

from bitnet.kernels import im2col as K
from bitnet.kernels.gemm import matmul as gemm
from bitnet.kernels.gemm import matmul_each, matmul_sum
from bitnet.ops import conv_chunks
from bitnet.ops import workspace as W
from bitnet.ops.dims import pair
from bitnet.tensor import Function, Tensor

ROWS_MIN_CHANNELS = 16  # channels per group from which the channels-last lowering is used


class Conv2d(Function):
    float_inputs = "conv2d"  # integer / bool inputs computed in float32 (bitnet.ops.dtypes)

    def forward(self, x, w, *bias, stride=(1, 1), padding=(0, 0), dilation=(1, 1), groups=1):
        oh, ow = self._setup(x.shape, x.dtype, w, stride, padding, dilation, groups)
        n_img, n_out = x.shape[0], w.shape[0]
        b = bias[0] if bias else np.zeros(n_out, dtype=x.dtype)
        out = W.empty((n_img, n_out, oh, ow), dtype=x.dtype)
        p = oh * ow
        self.per = self._images_per_chunk()
        if self.per is not None:  # chunk by chunk, no lowered matrix kept (bitnet.ops.conv_chunks)
            self.x, self.lowered = x, None
            return conv_chunks.forward(x, w, b, self.geom, groups, (oh, ow), self.per, out)
        rows = self._lower(x)
        if self.rows:
            wm = K.weights_by_tap(w, W.empty((n_out, w[0].size), w.dtype))  # (O, KH*KW*Cg)
            y = W.empty((n_img * p, n_out), dtype=x.dtype)
            for o, k in self.slices:
                gemm(rows[:, k], wm[o].T, out=y[:, o])
            K.transpose_inner(y.reshape(n_img, p, n_out), b, out.reshape(n_img, n_out, p))
        else:  # a product per image, straight into NCHW
            wm, cols, out3 = w.reshape(n_out, -1), _per_image(rows, n_img, p), out.reshape(n_img, n_out, p)
            for o, k in self.slices:
                matmul_each(wm[o], cols[:, k], out3[:, o], b[o] if bias else None)
        return out

    def _setup(self, x_shape, dtype, w, stride, padding, dilation, groups):
        """Geometry, group slices and the choice of lowering (of an input of ``dtype``); returns (OH, OW)."""
        self.dtype = np.dtype(dtype)
        n_img, channels, height, width = x_shape
        n_out, cg, kh, kw = w.shape
        self.geom = (kh, kw) + tuple(stride) + tuple(padding) + tuple(dilation)
        oh = K.conv_output_size(height, kh, stride[0], padding[0], dilation[0])
        ow = K.conv_output_size(width, kw, stride[1], padding[1], dilation[1])
        og, kg = n_out // groups, cg * kh * kw
        self.slices = [(slice(g * og, (g + 1) * og), slice(g * kg, (g + 1) * kg)) for g in range(groups)]
        self.w, self.x_shape, self.groups, self.out_hw = w, x_shape, groups, (oh, ow)
        self.rows = cg >= ROWS_MIN_CHANNELS
        return oh, ow

    def _lower(self, x, pad_value=0.0):
        """The lowered input in the layout ``_setup`` chose (``self.lowered``, kept for the backward
        pass; the padding reads as ``pad_value``)."""
        n_img, channels, height, width = x.shape
        w, groups = self.w, self.groups
        n_out, cg, kh, kw = w.shape
        kg, (oh, ow) = cg * kh * kw, self.out_hw
        p = oh * ow
        if self.rows:
            xh = W.empty((n_img, height * width, channels), dtype=x.dtype)
            K.transpose_inner(np.ascontiguousarray(x).reshape(n_img, channels, height * width),
                              np.zeros(height * width, x.dtype), xh)
            rows = W.empty((n_img * p, groups * kg), dtype=x.dtype)
            K.im2col_rows(xh.reshape(n_img, height, width, channels), groups, *self.geom, oh, ow, rows, pad_value)
        else:
            rows = W.empty((groups * kg, n_img * p), dtype=x.dtype)  # the column layout
            K.im2col(np.ascontiguousarray(x), *self.geom, oh, ow, rows, pad_value)
        self.lowered = rows
        return rows

    def _wanted(self):
        """(gx, gw, gb) wanted: the input's, the weight's, and a bias's that wants its gradient."""
        return (self.needs_grad[0], self.needs_grad[1], len(self.needs_grad) == 3 and self.needs_grad[2])

    def _chunked(self, g, lowering, per):
        """The backward pass chunk by chunk (``bitnet.ops.conv_chunks``), as ``backward`` returns it."""
        gx, gw, gb = conv_chunks.backward(g, self.w, self.x_shape, self.geom, self.groups, self.out_hw,
                                          lowering, per, self._wanted())
        return (gx, gw, gb) if len(self.needs_grad) == 3 else (gx, gw)

    def _images_per_chunk(self):
        """``conv_chunks.images_per_chunk`` for this layer in the rows layout, else None."""
        if not self.rows:
            return None
        oh, ow = self.out_hw
        row_bytes = oh * ow * self.groups * self.slices[0][1].stop * self.dtype.itemsize
        return conv_chunks.images_per_chunk(self.x_shape[0], row_bytes)

    def backward(self, g):
        if self.per is not None:  # lowered again chunk by chunk from the saved input
            lowering = conv_chunks.FloatLowering(self.x, self.geom, self.groups, self.out_hw)
            return self._chunked(g, lowering, self.per)
        n_img, n_out, oh, ow = g.shape
        p = oh * ow
        g3 = np.ascontiguousarray(g).reshape(n_img, n_out, p)
        low, geom, groups = self.lowered, self.geom, self.groups
        gw = W.empty(self.w.shape, g.dtype) if self.needs_grad[1] else None
        gx = W.empty(self.x_shape, dtype=g.dtype) if self.needs_grad[0] else None
        want_gb = self._wanted()[2]
        if self.rows:
            gr = W.empty((n_img, p, n_out), dtype=g.dtype)  # G as (N*OH*OW, O)
            K.transpose_inner(g3, np.zeros(p, g.dtype), gr)
            gr = gr.reshape(n_img * p, n_out)
            gb = gr.sum(axis=0) if want_gb else None
            if gw is not None:  # as dW^T = rows^T @ G: 1.3x faster than G^T @ rows (see ROWS_GEMMS)
                for o, k in self.slices:
                    gwt = gemm(low[:, k].T, gr[:, o], out=W.empty((k.stop - k.start, o.stop - o.start), g.dtype))
                    K.weights_from_rows(gwt, gw[o])
            if gx is not None:
                drows = W.empty_like(low)
                # G @ (W^T)^T with W^T (KH*KW*Cg, O) contiguous: 1.2x faster than G @ W
                wt = K.weights_to_rows(self.w, W.empty((self.w[0].size, n_out), self.w.dtype))
                for o, k in self.slices:
                    gemm(gr[:, o], wt[:, o].T, out=drows[:, k])
                c, h, w_ = self.x_shape[1:]
                gxh = W.empty((n_img, h, w_, c), dtype=g.dtype)
                K.col2im_rows(drows, groups, *geom, oh, ow, gxh)
                K.transpose_inner(gxh.reshape(n_img, h * w_, c), np.zeros(c, g.dtype),
                                  gx.reshape(n_img, c, h * w_))
        else:  # products per image with G in NCHW (g3[n] is G_n (O, OH*OW))
            gb = g3.sum(axis=(0, 2)) if want_gb else None
            wm, cols = self.w.reshape(n_out, -1), _per_image(low, n_img, p)
            if gw is not None:  # dW = sum_n G_n @ cols_n^T
                for o, k in self.slices:
                    matmul_sum(g3[:, o], cols[:, k].transpose(0, 2, 1), out=gw[o].reshape(o.stop - o.start, -1))
            if gx is not None:  # dcols_n = W^T @ G_n
                dcols = W.empty_like(low)
                for o, k in self.slices:
                    matmul_each(wm[o].T, g3[:, o], _per_image(dcols, n_img, p)[:, k])
                K.col2im(dcols, *geom, oh, ow, gx)
        return (gx, gw, gb) if len(self.needs_grad) == 3 else (gx, gw)


def _per_image(cols, n_img, p):
    """The column layout's (K, N*P) matrix as a view (N, K, P): image n's columns, cols[:, n*P:(n+1)*P]."""
    return cols.reshape(cols.shape[0], n_img, p).transpose(1, 0, 2)


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

