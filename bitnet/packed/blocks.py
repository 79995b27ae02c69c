"""The packed residual block and the channels-last float layers around it (stem, shortcuts).

Between packed layers activations stay channels-last, as the kernels produce them, and carry
their signs already packed (``bitnet.packed.featuremap.FeatureMap``).

``PackedResidualBlock`` is the binary ResNet block (Bi-Real shortcuts) on packed layers::

    y   = scale1 * dot(sign(x), W1) + shift1 + shortcut(x)      one kernel call, emits sign(y)
    out = scale2 * dot(sign(y), W2) + shift2 + y                 one kernel call, emits sign(out)

(batch norms folded into scale/shift; both additions happen in the kernels' epilogue). A
downsampling shortcut (avg-pool, float 1x1 convolution, batch norm) runs channels-last as one
float GEMM with the batch norm folded into its columns (``ChannelsLastShortcut``).
"""
from __future__ import annotations

import numpy as np

from bitnet.kernels.gemm import matmul
from bitnet.kernels.im2col import conv_output_size, im2col
from bitnet.kernels.pooling import avg_pool_nhwc
from bitnet.nn.module import Module
from bitnet.packed.featuremap import FeatureMap
from bitnet.packed.fold import conv_batchnorm_affine
from bitnet.packed.kinds import computes_as
from bitnet.tensor import Tensor


def conv_nhwc(x, weight_t, kernel_size, stride=(1, 1), padding=(0, 0)):
    """Float convolution, channels-last, as one GEMM over im2col rows (groups 1, dilation 1):
    ``out[n, oy, ox, o] = sum_{i, j, c} x_pad[n, oy*sh + i, ox*sw + j, c] * weight_t[(i*KW + j)*C + c, o]``
    for ``x`` (N, H, W, C) and ``weight_t`` (KH*KW*C, O): (N, OH, OW, O) float32."""
    (kh, kw), (sh, sw), (ph, pw) = kernel_size, stride, padding
    n, c = x.shape[0], x.shape[3]
    xp = np.pad(x, ((0, 0), (ph, ph), (pw, pw), (0, 0))) if ph or pw else x
    win = np.lib.stride_tricks.sliding_window_view(xp, (kh, kw), axis=(1, 2))[:, ::sh, ::sw]  # (N, OH, OW, C, KH, KW)
    oh, ow = win.shape[1], win.shape[2]
    out = matmul(win.transpose(0, 1, 2, 4, 5, 3).reshape(-1, kh * kw * c), weight_t)
    return out.reshape(n, oh, ow, -1)


def conv_nchw_to_nhwc(x, weight_t, kernel_size, stride=(1, 1), padding=(0, 0), cols=None, out=None, lower=None):
    """Float convolution of an NCHW input to a channels-last output, as one GEMM over im2col columns
    (groups 1, dilation 1): ``out[n, oy, ox, o] = sum_{c, i, j} x_pad[n, c, oy*sh + i, ox*sw + j] *
    weight_t[(c*KH + i)*KW + j, o]`` for ``x`` (N, C, H, W) and ``weight_t`` (C*KH*KW, O), i.e.
    ``W.reshape(O, -1).T``: (N, OH, OW, O) float32. The columns (``kernels.im2col.im2col``) are
    written in runs along the output rows, fast for few channels (a first layer; 1.4x faster than
    ``conv_nhwc`` with one channel), and BLAS reads them transposed. ``cols`` (C*KH*KW, N*OH*OW)
    and ``out`` (N*OH*OW, O), float32, if given, receive the columns and the result (buffers a
    caller reuses); ``lower``, if given, is ``kernels.im2col.prepared_im2col`` for this shape."""
    (kh, kw), (sh, sw), (ph, pw) = kernel_size, stride, padding
    n, c, h, w = x.shape
    oh, ow = conv_output_size(h, kh, sh, ph, 1), conv_output_size(w, kw, sw, pw, 1)
    if cols is None:
        cols = np.empty((c * kh * kw, n * oh * ow), np.float32)
    x = np.ascontiguousarray(x, np.float32)
    if lower is None:
        im2col(x, kh, kw, sh, sw, ph, pw, 1, 1, oh, ow, cols)
    else:
        lower(x, cols)
    return matmul(cols.T, weight_t, out).reshape(n, oh, ow, -1)


class ChannelsLastConv2d(Module):
    """A float convolution with its batch norm folded (and a ReLU), channels-last, as one GEMM over
    im2col rows (the float stem of a packed ResNet):

        out[q, o] = relu( sum_{i, j, c} x_pad[n, oh*sh + i, ow*sw + j, c] * W[o, c, i, j] * g[o] + shift[o] )

    with ``g``, ``shift`` from the batch norm and the conv bias (``conv_batchnorm_affine``)."""

    def __init__(self, weight, scale, shift, stride=(1, 1), padding=(0, 0), relu=False):
        super().__init__()
        o, c, kh, kw = weight.shape
        folded = weight.astype(np.float64) * np.asarray(scale, np.float64)[:, None, None, None]
        self.register_buffer("weight_t", np.ascontiguousarray(folded.transpose(2, 3, 1, 0).reshape(-1, o), np.float32))
        self.register_buffer("shift", np.asarray(shift, np.float32))
        self.kernel_size, self.stride, self.padding, self.relu = (kh, kw), tuple(stride), tuple(padding), bool(relu)
        self.in_channels, self.out_channels = c, o

    @classmethod
    def from_sequential(cls, seq):
        """From ``Sequential(Conv2d, BatchNorm2d[, ReLU])`` (groups 1, dilation 1, running
        statistics); None for anything else."""
        from bitnet.nn.layers import BatchNorm2d, Conv2d, ReLU
        mods = list(seq._modules.values())
        if len(mods) not in (2, 3) or not computes_as(mods[0], Conv2d) or not computes_as(mods[1], BatchNorm2d):
            return None
        conv, bn = mods[0], mods[1]
        if (len(mods) == 3 and not computes_as(mods[2], ReLU)) or conv.groups != 1 or conv.dilation != (1, 1) \
                or not bn.track_running_stats:
            return None
        g, shift = conv_batchnorm_affine(conv, bn)
        return cls(conv.weight.data, g, shift, conv.stride, conv.padding, relu=len(mods) == 3)

    def forward(self, x) -> "FeatureMap":
        fm = FeatureMap.from_tensor(x)
        n, h, w, c = fm.nhwc.shape
        if c != self.in_channels:
            raise ValueError(f"{self!r} expects {self.in_channels} channels, got a map of shape {fm.nhwc.shape} (N, H, W, C)")
        out = conv_nhwc(fm.nhwc, self.weight_t, self.kernel_size, self.stride, self.padding)
        out += self.shift
        if self.relu:
            np.maximum(out, 0, out=out)
        return FeatureMap.of(out)

    def bind(self, shape):
        """``call(x)`` for NCHW float inputs ``x`` of ``shape``: what ``forward`` computes, as an
        (N, OH, OW, O) array, with the padded map, the im2col rows and the output made here once and
        reused by every call (the result is valid until the next call; ``call.nbytes``): the same
        rows, the same GEMM, the same values."""
        n, c, h, w = shape
        if c != self.in_channels:
            raise ValueError(f"{self!r} expects {self.in_channels} channels, got input of shape {tuple(shape)}")
        (kh, kw), (sh, sw), (ph, pw) = self.kernel_size, self.stride, self.padding
        padded = np.zeros((n, h + 2 * ph, w + 2 * pw, c), np.float32)  # (its border stays 0)
        inner = padded[:, ph:ph + h, pw:pw + w]
        win = np.lib.stride_tricks.sliding_window_view(padded, (kh, kw), axis=(1, 2))[:, ::sh, ::sw]
        oh, ow = win.shape[1], win.shape[2]
        win = win.transpose(0, 1, 2, 4, 5, 3)
        rows = np.empty((n * oh * ow, kh * kw * c), np.float32)
        out = np.empty((n * oh * ow, self.out_channels), np.float32)

        def call(x):
            np.copyto(inner, x.transpose(0, 2, 3, 1))
            np.copyto(rows.reshape(win.shape), win)
            y = matmul(rows, self.weight_t, out)
            y += self.shift
            if self.relu:
                np.maximum(y, 0, out=y)
            return y.reshape(n, oh, ow, -1)
        call.nbytes = padded.nbytes + rows.nbytes + out.nbytes
        return call

    def extra_repr(self):
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
                f"padding={self.padding}, relu={self.relu}")


class ChannelsLastShortcut(Module):
    """Avg-pool ``k`` (k = 1: none), then a float 1x1 convolution with its batch norm folded:
    ``out[q, o] = sum_c pool(x)[q, c] * (W[o, c] * g[o]) + shift[o]``, on channels-last maps.
    ``ceil_mode``: the pool's (a map whose size k does not divide gets a last, clipped window, as
    the stride-k convolution beside it gets a last output); without it such a map is an error."""

    def __init__(self, pool: int, weight: np.ndarray, scale: np.ndarray, shift: np.ndarray, ceil_mode=False):
        super().__init__()
        self.pool, self.ceil_mode = int(pool), bool(ceil_mode)
        self.register_buffer("weight_t", np.ascontiguousarray((weight * scale[:, None]).T, np.float32))
        self.register_buffer("shift", np.asarray(shift, np.float32))

    @classmethod
    def from_modules(cls, shortcut):
        """From the float ``Sequential(AvgPool2d(k) or Identity, Conv2d 1x1, BatchNorm2d)``; None
        when it has another form (the block then runs it on NCHW tensors)."""
        from bitnet.nn.layers import AvgPool2d, BatchNorm2d, Conv2d, Identity
        mods = list(shortcut._modules.values())
        if len(mods) != 3 or not computes_as(mods[1], Conv2d) or not computes_as(mods[2], BatchNorm2d):
            return None  # (computes_as: a QConv2d is not a float Conv2d)
        pool, conv, bn = mods
        if computes_as(pool, Identity):
            k, ceil = 1, False
        elif (computes_as(pool, AvgPool2d) and pool.kernel_size == pool.stride and pool.padding == (0, 0)
              and pool.kernel_size[0] == pool.kernel_size[1]):  # (without padding, count_include_pad is moot)
            k, ceil = pool.kernel_size[0], pool.ceil_mode
        else:
            return None
        if (conv.kernel_size != (1, 1) or conv.stride != (1, 1) or conv.padding != (0, 0) or conv.groups != 1
                or not bn.track_running_stats):
            return None
        g, shift = conv_batchnorm_affine(conv, bn)
        w = conv.weight.data.reshape(conv.out_channels, -1).astype(np.float64)
        return cls(k, w, g, shift, ceil)

    def pooled_size(self, h: int, w: int) -> tuple:
        """The pooled map's (H, W) for an (h, w) map; ValueError where k does not divide it and the
        pool is not in ceil mode (the float shortcut would not fit the block's other branch)."""
        k = self.pool
        if self.ceil_mode:
            return -(-h // k), -(-w // k)
        if h % k or w % k:
            raise ValueError(f"{self!r}: a {h}x{w} map does not split into {k}x{k} pooling windows")
        return h // k, w // k

    def forward(self, fm: FeatureMap) -> FeatureMap:
        return FeatureMap.of(self._run(fm.nhwc))

    def _run(self, x, pooled=None, out=None):
        """The (N, H', W', O) result for the channels-last map ``x``; ``pooled`` and ``out``, if given,
        receive the pooled map and the GEMM's result (arrays a bound call reuses)."""
        n, h, w, c = x.shape
        k = self.pool
        if k > 1:
            if pooled is None:
                pooled = np.empty((n, *self.pooled_size(h, w), c), np.float32)
            avg_pool_nhwc(np.ascontiguousarray(x), k, pooled)
            x = pooled
        y = matmul(x.reshape(-1, c), self.weight_t, out)  # BLAS kept single-threaded: see kernels.gemm
        y += self.shift
        return y.reshape(x.shape[:3] + (-1,))

    def bind(self, shape):
        """``call(x)`` for channels-last maps of ``shape``: ``forward``'s values, in arrays made here
        once and reused by every call (valid until the next; ``call.nbytes``)."""
        n, h, w, c = shape
        size = self.pooled_size(h, w) if self.pool > 1 else (h, w)
        pooled = np.empty((n, *size, c), np.float32) if self.pool > 1 else None
        out = np.empty((n * size[0] * size[1], self.weight_t.shape[1]), np.float32)

        def call(x):
            return self._run(x, pooled, out)
        call.nbytes = out.nbytes + (0 if pooled is None else pooled.nbytes)
        return call

    def extra_repr(self):
        ceil = ", ceil_mode=True" if self.ceil_mode else ""
        return f"pool={self.pool}{ceil}, {self.weight_t.shape[0]} -> {self.weight_t.shape[1]}"


class PackedResidualBlock(Module):
    """The binary ResNet block on packed layers; see the module docstring. ``shortcut``: None
    (identity), a ``ChannelsLastShortcut``, ``Sequential(PackedConv2d, Identity)`` (a binary
    shortcut with its batch norm folded), or any module taking NCHW tensors."""

    def __init__(self, conv1, conv2, shortcut=None):
        super().__init__()
        self.conv1, self.conv2, self.shortcut = conv1, conv2, shortcut
        conv1.emit_signs = conv2.emit_signs = True

    def forward(self, x):
        fm = FeatureMap.from_tensor(x)
        from bitnet.packed.layers import PackedConv2d
        first = next(iter(self.shortcut._modules.values()), None) if self.shortcut is not None else None
        if self.shortcut is None:
            sc = fm
        elif isinstance(self.shortcut, ChannelsLastShortcut):
            sc = self.shortcut(fm)
        elif isinstance(first, PackedConv2d):  # a binary shortcut: Sequential(packed conv, Identity) on the map
            sc = self.shortcut(fm)
        else:
            sc = FeatureMap.from_tensor(self.shortcut(Tensor(fm.data)))
        y = self.conv1(fm, residual=sc)
        return self.conv2(y, residual=y)
