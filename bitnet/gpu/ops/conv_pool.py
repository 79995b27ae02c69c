"""2-D convolution on "cuda": im2col (one kernel), then batched GEMMs over the groups (cuBLAS on CuPy).

For input x (N, C, H, W), weight w (O, C/G, KH, KW), G groups, optional bias b (O,), and the
border of the padded input filled with ``pad_value`` (0; +-1 for a binary convolution):

    y[n, o, oy, ox] = b[o] + sum_{c in group(o), i, j} w[o, c, i, j] * xp[n, c, oy*SH + i*DH, ox*SW + j*DW]

with xp = x padded by (PH, PW). Lowering (the column layout of ``bitnet.ops.conv``):

    cols[c, i, j, n, oy, ox] = xp[n, c, oy*SH + i*DH, ox*SW + j*DW]

built by one kernel (``bitnet.kernels.cuda_im2col``; NumPy on the emulation), viewed as
(G, Cg*KH*KW, N*OH*OW); then
Y_g = W_g @ cols_g (W_g: (O/G, Cg*KH*KW)) for all g in one batched matmul, and Y (O, N, OH*OW) is
moved to NCHW. Backward, with G_g the output gradient as (O/G, N*OH*OW):

    dW_g = G_g @ cols_g^T,   db[o] = sum_{n, oy, ox} g[n, o, oy, ox],
    dx, stride 1: a convolution of g, padded by DH*(KH-1) - PH (and DW*(KW-1) - PW), with the kernel
        flipped and its channels swapped within each group (``input_gradient``): one im2col, one GEMM
    dx, other strides: dcols_g = W_g^T @ G_g, then col2im (one kernel: each input position adds
        the entries of dcols that im2col read from it, taps in row-major order)

and the border is cropped. These are a few kernel launches per convolution whatever its kernel size
(a copy per tap before). Sums run in GEMM order, not the CPU's BLAS order: results agree to rounding.

``conv2d_forward`` / ``conv2d_backward`` are plain functions on device arrays, for other GPU ops
(the binary convolution) to reuse; ``Conv2d`` is the autograd primitive's "cuda" implementation.
"""
from __future__ import annotations

from bitnet.gpu.arrays import array_module
from bitnet.gpu.dispatch import implements
from bitnet.gpu.raw_kernels import blocks_for, c_type, launch
from bitnet.kernels import cuda_im2col as KI
from bitnet.kernels.im2col import conv_output_size
from bitnet.ops import conv as cpu_conv


def output_size(x_shape, w_shape, stride, padding, dilation):
    """(OH, OW) of the convolution (floor mode; raises if the kernel does not fit)."""
    return tuple(conv_output_size(x_shape[2 + a], w_shape[2 + a], stride[a], padding[a], dilation[a])
                 for a in range(2))


def _geometry_args(x_shape, kernel, stride, padding, dilation, out_hw):
    return tuple(int(v) for v in (tuple(x_shape) + tuple(kernel) + tuple(stride) + tuple(padding) + tuple(dilation)
                                  + tuple(out_hw)))


def im2col(x, kernel, stride, padding, dilation, pad_value=0.0):
    """cols (C*KH*KW, N*OH*OW) with cols[(c, i, j), (n, oy, ox)] = xp[n, c, oy*SH + i*DH, ox*SW + j*DW]
    (module docstring), on x's device: one kernel launch (``bitnet.kernels.cuda_im2col``), the border
    read as ``pad_value``."""
    xp = array_module(x)
    n_img, channels, _, _ = x.shape
    oh, ow = output_size(x.shape, (0, 0) + tuple(kernel), stride, padding, dilation)
    x = xp.ascontiguousarray(x)
    cols = xp.empty((channels * kernel[0] * kernel[1], n_img * oh * ow), x.dtype)
    launch(KI, "im2col_fill", blocks_for(cols.size, KI.THREADS), KI.THREADS,
           (x,) + _geometry_args(x.shape, kernel, stride, padding, dilation, (oh, ow)) + (float(pad_value), cols),
           dict(IC_T=c_type(x.dtype)))
    return cols


def col2im(dcols, x_shape, kernel, stride, padding, dilation):
    """dx (N, C, H, W): the sum of dcols (C*KH*KW, N*OH*OW) back onto the input positions im2col
    read them from (taps in row-major order, as one add per tap would); entries read from the border
    are dropped. One kernel launch."""
    xp = array_module(dcols)
    oh, ow = output_size(x_shape, (0, 0) + tuple(kernel), stride, padding, dilation)
    dcols = xp.ascontiguousarray(dcols)
    dx = xp.empty(tuple(x_shape), dcols.dtype)
    launch(KI, "col2im_add", blocks_for(dx.size, KI.THREADS), KI.THREADS,
           (dcols,) + _geometry_args(x_shape, kernel, stride, padding, dilation, (oh, ow)) + (dx,),
           dict(IC_T=c_type(dcols.dtype)))
    return dx


def input_gradient(g, w, x_shape, padding, dilation, groups):
    """dx of a convolution with stride 1, as a convolution of g: with q = DH*(KH-1) - PH (likewise for
    the columns) and w flipped, its input and output channels swapped within each group,

        dx[n, c, y, x] = sum_{o in group(c), i, j} w[o, c, KH-1-i, KW-1-j] * gq[n, o, y + i*DH, x + j*DW]

    with gq = g padded by q (cropped by -q where q < 0): the sum of the module docstring's col2im,
    in one im2col of g and one GEMM."""
    xp = array_module(g)
    n_out, cg, kh, kw = w.shape
    og = n_out // groups
    q = [dilation[a] * (w.shape[2 + a] - 1) - padding[a] for a in range(2)]
    crop = [max(-v, 0) for v in q]
    if any(crop):
        g = g[:, :, crop[0]:g.shape[2] - crop[0], crop[1]:g.shape[3] - crop[1]]
    flipped = xp.ascontiguousarray(w.reshape(groups, og, cg, kh, kw)[:, :, :, ::-1, ::-1].transpose(0, 2, 1, 3, 4))
    gx = conv2d_forward(g, flipped.reshape(groups * cg, og, kh, kw), None, (1, 1), tuple(max(v, 0) for v in q),
                        dilation, groups)
    assert gx.shape == tuple(x_shape), (gx.shape, x_shape)
    return gx


def conv2d_lowered(x, w, bias, stride, padding, dilation, groups, pad_value=0.0):
    """``(y, cols)``: the convolution (module docstring) and its lowered input, kept for dW."""
    xp = array_module(x)
    n_img = x.shape[0]
    n_out, cg, kh, kw = w.shape
    oh, ow = output_size(x.shape, w.shape, stride, padding, dilation)
    cols = im2col(x, (kh, kw), stride, padding, dilation, pad_value)
    y = xp.matmul(w.reshape(groups, n_out // groups, cg * kh * kw), cols.reshape(groups, cg * kh * kw, -1))
    out = xp.ascontiguousarray(y.reshape(n_out, n_img, oh, ow).transpose(1, 0, 2, 3))
    if bias is not None:
        out += bias.reshape(1, n_out, 1, 1)
    return out, cols


def conv2d_forward(x, w, bias, stride, padding, dilation, groups, pad_value=0.0):
    """y (N, O, OH, OW) = conv2d(x, w) + bias (module docstring); ``bias`` may be None."""
    return conv2d_lowered(x, w, bias, stride, padding, dilation, groups, pad_value)[0]


def conv2d_backward(x, w, g, stride, padding, dilation, groups, need_x, need_w, need_b, cols=None, pad_value=0.0):
    """``(gx, gw, gb)`` for the output gradient g (N, O, OH, OW), None where not needed (module
    docstring). gx uses only ``x``'s shape; gw uses ``cols`` (``conv2d_lowered``'s lowered input) when
    given, else lowers ``x`` again with ``pad_value`` at the border."""
    xp = array_module(g)
    n_img, n_out, oh, ow = g.shape
    _, cg, kh, kw = w.shape
    og, k = n_out // groups, cg * kh * kw
    gt = xp.ascontiguousarray(g.transpose(1, 0, 2, 3)).reshape(n_out, n_img * oh * ow)  # G as (O, N*OH*OW)
    gb = gt.sum(axis=1) if need_b else None
    gw = gx = None
    if need_w:
        if cols is None:
            cols = im2col(x, (kh, kw), stride, padding, dilation, pad_value)
        gw = xp.matmul(gt.reshape(groups, og, -1), cols.reshape(groups, k, -1).transpose(0, 2, 1)).reshape(w.shape)
    if need_x and tuple(stride) == (1, 1) and pad_value != 0 and any(padding):
        # QConv2d's float path pads x with pad_value itself and convolves without padding: dx is
        # computed the same way here (then cropped), so that its sums are that path's to the bit
        (ph, pw), (n_img, channels, height, width) = padding, x.shape
        padded = (n_img, channels, height + 2 * ph, width + 2 * pw)
        gx = input_gradient(g, w, padded, (0, 0), dilation, groups)
        gx = xp.ascontiguousarray(gx[:, :, ph:ph + height, pw:pw + width])
    elif need_x and tuple(stride) == (1, 1):
        gx = input_gradient(g, w, x.shape, padding, dilation, groups)
    elif need_x:
        dcols = xp.matmul(w.reshape(groups, og, k).transpose(0, 2, 1), gt.reshape(groups, og, -1))
        gx = col2im(dcols.reshape(groups * k, -1), x.shape, (kh, kw), stride, padding, dilation)
    return gx, gw, gb


@implements(cpu_conv.Conv2d)
class Conv2d(cpu_conv.Conv2d):
    """``bitnet.ops.conv.Conv2d`` on "cuda" (module docstring). Saved for the backward: ``x``, ``w``,
    ``cols`` (the lowered input, only when the weight wants a gradient), ``stride``, ``padding``,
    ``dilation``, ``groups``."""

    owned_grads = (0, 1, 2)  # new arrays (GEMMs, col2im, sums): a leaf keeps them without a copy

    def forward(self, x, w, *bias, stride=(1, 1), padding=(0, 0), dilation=(1, 1), groups=1):
        self.x, self.w, self.stride, self.padding, self.dilation, self.groups = x, w, stride, padding, dilation, groups
        out, cols = conv2d_lowered(x, w, bias[0] if bias else None, stride, padding, dilation, groups)
        self.cols = cols if self.needs_grad[1] else None
        return out

    def backward(self, g):
        need = self.needs_grad
        gx, gw, gb = conv2d_backward(self.x, self.w, g, self.stride, self.padding, self.dilation, self.groups,
                                     need[0], need[1], len(need) == 3 and need[2], cols=self.cols)
        return (gx, gw, gb) if len(need) == 3 else (gx, gw)
