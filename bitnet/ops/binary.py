"""Binary convolution and matrix product whose forward pass runs on packed bits, for training.

When both operands hold only +-1 values (a sign input quantizer and a sign kernel quantizer), the
float forward of a convolution or dense layer computes integer dot products, exactly, with float
GEMMs. These ops compute the same numbers with the XNOR-popcount kernels instead
(``bitnet.kernels.xnor_conv``):

    conv:   y[n, o, oy, ox] = dot(x_pad[n, :, window], w[o]) + b[o]   (x_pad: pad_value at the border)
    matmul: y[n, o] = dot(x[n], w[o])

where ``dot`` of +-1 vectors of length K is ``K - 2 * popcount(bits(x) XOR bits(w))``: exact
integers, converted to float32 and added to the bias exactly as the float path does, so outputs
and the loss are bit for bit those of the float path.

The backward pass is the float one (the straight-through estimators upstream need float gradients
of the +-1 operands): d/dx = g conv^T w, d/dw = g conv x, with the lowered (im2col) input built
only then, from the saved +-1 input. A forward without gradients (evaluation) never builds it.
Both products of the backward pass have a +-1 factor and need no multiplications. In the
channels-last layout, where every entry of the lowered input is +-1 (no border of zeros), a
convolution computes d/dw and d/dx by table lookup (``bitnet.ops.sign_backward``; tables of signed
sums, ``bitnet.kernels.sign_tables``: 2.1-2.8x a float GEMM), and so does the matrix product: the
same sums in another order, within their rounding bound; the bias's gradient stays the float
path's bits. ``forward_on_bits = False`` on a layer gives the float path's bits for every gradient.
"""
from __future__ import annotations

import numpy as np

from bitnet.kernels import bitpack
from bitnet.kernels import im2col as K
from bitnet.kernels import sign_tables as ST
from bitnet.kernels import xnor_conv as XC
from bitnet.ops import conv_chunks, sign_backward
from bitnet.ops import workspace as W
from bitnet.ops.conv import Conv2d
from bitnet.ops.elementwise import MatMul
from bitnet.tensor import Tensor


class BinaryConv2d(Conv2d):
    """conv2d of +-1 tensors, forward on bits; ``pad_value`` fills the border (+1, -1 or 0)."""

    def forward(self, x, w, *bias, stride=(1, 1), padding=(0, 0), dilation=(1, 1), groups=1, pad_value=0.0):
        n_img, channels, height, width = x.shape
        n_out, cg, kh, kw = w.shape
        corr = None
        if pad_value == 0 and any(padding):
            corr = XC.zero_pad_correction(w, (height, width), stride, padding, dilation)
        bits = bitpack.pack_nchw(np.ascontiguousarray(x, np.float32), groups)
        packed = (bits, XC.pack_filters(w, groups), channels, n_out, (kh, kw), stride, padding, dilation)
        self._setup(x.shape, x.dtype, w, stride, padding, dilation, groups)
        # the backward lowers the channels-last rows from the bits: x itself is kept only for the column layout
        self.saved = (None if self.rows else x, bits, x.dtype, pad_value)
        if x.dtype == np.float32 and (not bias or bias[0].dtype == np.float32):
            # the affine epilogue's 1.0 * float32(dot) + b is the float path's float32(dot) + b, exactly
            shift = bias[0] if bias else np.zeros(n_out, np.float32)
            y = XC.xnor_conv2d(*packed, padword=XC.pad_words(cg, pad_value), corr=corr,
                               scale=np.ones(n_out, np.float32), shift=shift, layout="nhwc")
            n, oh, ow = y.shape[:3]
            out = W.empty((n, n_out, oh, ow), np.float32)  # NHWC -> NCHW on bitnet's threads
            K.transpose_inner(np.ascontiguousarray(y).reshape(n, oh * ow, n_out), np.zeros(n_out, np.float32),
                              out.reshape(n, n_out, oh * ow))
            return out
        dots = XC.xnor_conv2d(*packed, padword=XC.pad_words(cg, pad_value), corr=corr, dots=True)
        out = W.empty(dots.shape, x.dtype)
        out[...] = dots
        if bias:
            out += bias[0][None, :, None, None]
        return out

    def backward(self, g):
        """The float path's backward. Its explicit border of ``pad_value`` is lowered as padding
        that reads as ``pad_value`` (no padded copy of x), and col2im drops the border's gradient
        (which the float path computes and slices off): the same sums in the same order. In the
        channels-last layout the lowered matrix is made from the forward's packed bits, so the +-1
        input itself is not kept (``kernels.im2col.im2col_rows_bits``). Where the border reads +-1
        (or there is none) the whole backward runs by table lookup instead
        (``bitnet.ops.sign_backward``), the whole batch as one chunk when the layer does not chunk."""
        x, bits, dtype, pad_value = self.saved
        self.per = self._images_per_chunk()
        if not self.rows:
            self._lower(x, pad_value)
            return super().backward(g)
        lowering = conv_chunks.BitsLowering(bits, self.x_shape[1], dtype, self.geom, self.out_hw, pad_value)
        if lowering.tables:  # no float GEMM (bitnet.ops.sign_backward); a batch that does not chunk is one chunk
            per = self.per if self.per is not None else max(1, self.x_shape[0])
            grads = sign_backward.backward(g, self.w, self.x_shape, self.geom, self.groups, self.out_hw, lowering,
                                           per, self._wanted())
            return grads if len(self.needs_grad) == 3 else grads[:2]
        if self.per is not None:  # lowered chunk by chunk, never as a whole (bitnet.ops.conv_chunks)
            return self._chunked(g, lowering, self.per)
        self.lowered = lowering.whole()
        return super().backward(g)


class BinaryMatMul(MatMul):
    """``x @ w^T`` for +-1 matrices x (N, K) and w (O, K) (passed as ``w^T``), forward on bits;
    backward by table lookup (module docstring)."""

    def forward(self, a, b):
        self.a, self.b = a, b
        k = a.shape[1]
        dots = XC.xnor_gemm(bitpack.pack_rows(np.ascontiguousarray(b.T, np.float32)),
                            bitpack.pack_rows(np.ascontiguousarray(a, np.float32)), k)  # (O, N) view
        out = W.empty((a.shape[0], b.shape[1]), a.dtype)
        out[...] = dots.T
        return out

    def backward(self, g):
        """d/da = g w = (w^T g^T)^T and d/d(w^T) = x^T g, both by table lookup from the +-1 factor's
        signs (``kernels.sign_tables``): g's rows, or its columns, four at a time."""
        g = np.ascontiguousarray(g)
        ga = gb = None
        if self.needs_grad[0]:
            w = np.ascontiguousarray(self.b.T)  # (O, K)
            idx = W.empty((ST.groups_of(w.shape[0]), w.shape[1]), np.uint8)
            ST.row_signs(w, idx)
            gat = W.empty((w.shape[1], g.shape[0]), g.dtype)  # (K, N)
            ST.signs_t_matmul(idx, w.shape[0], g.T, gat)
            ga = W.empty((g.shape[0], w.shape[1]), g.dtype)
            ga[...] = gat.T
        if self.needs_grad[1]:
            a = np.ascontiguousarray(self.a)
            idx = W.empty((ST.groups_of(a.shape[0]), a.shape[1]), np.uint8)
            ST.row_signs(a, idx)
            gb = W.empty(self.b.shape, g.dtype)
            ST.signs_t_matmul(idx, a.shape[0], g, gb)
        return ga, gb


def binary_conv2d(x: Tensor, weight: Tensor, bias=None, stride=(1, 1), padding=(0, 0), dilation=(1, 1),
                  groups=1, pad_value=0.0) -> Tensor:
    """conv2d of +-1 tensors with the border filled with ``pad_value``, on bits (module docstring).
    The caller guarantees +-1 values (outputs of sign quantizers); shapes as for ``conv2d``."""
    args = (x, weight) if bias is None else (x, weight, bias)
    return BinaryConv2d.apply(*args, stride=tuple(stride), padding=tuple(padding), dilation=tuple(dilation),
                              groups=groups, pad_value=float(pad_value))


def binary_linear(x: Tensor, weight: Tensor, bias=None) -> Tensor:
    """``x @ weight^T + bias`` for +-1 tensors x (N, K) and weight (O, K), on bits."""
    from bitnet.ops.elementwise import add
    from bitnet.ops.shape import transpose
    y = BinaryMatMul.apply(x, transpose(weight, 0, 1))
    return y if bias is None else add(y, bias)
