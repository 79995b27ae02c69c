"""Packed binary layers: ``PackedConv2d`` and ``PackedDense``, inference-only twins of a binary
``QConv2d`` / ``QDense`` (sign input, binary kernel) with the batch norm after them folded in.

A packed layer holds its filters as uint64 words (packed once, ``kernels.xnor_conv.pack_filters``)
and a per-channel ``scale`` and ``shift`` (``bitnet.packed.fold``). Its forward binarizes and packs
the float input (``sign(x)``: the layer's input quantizer), runs the fused XNOR-popcount
convolution and returns ``scale * dot + shift`` (+ ``residual``), float32, as the float layer
and its batch norm would (within float rounding; the dot products themselves are exact integers,
``dots(x)`` returns them).

If the input tensor carries ``packed_signs`` (a ``SignedTensor`` made by a packed layer asked to
``emit_signs``), those words are used instead of packing again.
"""
from __future__ import annotations

import numpy as np

from bitnet.kernels import bitpack
from bitnet.kernels import xnor_conv as XC
from bitnet.kernels.bits import unpack_reference, words_for
from bitnet.nn.module import Module
from bitnet.packed.featuremap import FeatureMap
from bitnet.packed.fold import fold_batchnorm
from bitnet.tensor import Tensor

class SignedTensor(Tensor):
    """A float tensor that also carries its signs packed for the next binary layer:
    ``packed_signs`` (N, H, W, 1, words) uint64 with bit = (data < 0)."""
    __slots__ = ("packed_signs",)


def packable(layer) -> bool:
    """True for a QConv2d / QDense that runs on bits: a binary input (+-1) and a binary kernel (+-1, or
    +-1 times a per-channel scale), as the layer itself says (``binary_input``, ``binary_kernel``), whose
    forward is its class's (``bitnet.packed.kinds.computes_as``: a subclass with a forward of its own
    computes something else and stays as it is)."""
    from bitnet.nn.quantized import QConv2d, QDense
    from bitnet.packed.kinds import computes_as
    return (computes_as(layer, QConv2d) or computes_as(layer, QDense)) and layer.binary_input and layer.binary_kernel


class PackedConv2d(Module):
    """Binary convolution on packed bits; see the module docstring."""

    def __init__(self, filters, in_channels, out_channels, kernel_size, stride=(1, 1), padding=(0, 0),
                 dilation=(1, 1), groups=1, pad_value=1.0, scale=None, shift=None):
        super().__init__()
        self.in_channels, self.out_channels, self.groups = int(in_channels), int(out_channels), int(groups)
        self.kernel_size, self.stride = tuple(kernel_size), tuple(stride)
        self.padding, self.dilation = tuple(padding), tuple(dilation)
        if pad_value not in (-1, 0, 1):
            raise ValueError(f"PackedConv2d: pad_value must be -1, 0 or +1, got {pad_value!r}")
        self.pad_value = float(pad_value)
        self._padword = XC.pad_words(self.in_channels // self.groups, self.pad_value)
        self.register_buffer("filters", np.ascontiguousarray(filters, np.uint64))
        ones = np.ones(out_channels, np.float32)
        self.register_buffer("scale", ones if scale is None else np.asarray(scale, np.float32))
        self.register_buffer("shift", 0 * ones if shift is None else np.asarray(shift, np.float32))
        self.emit_signs = False
        self._corr = {}
        self._calls = {}  # prepared kernel calls (kernels.xnor_conv.XnorConv2d) per input shape and options

    @classmethod
    def from_layer(cls, layer, bn=None, weights=True):
        """Pack a binary ``QConv2d`` (``packable``), folding ``bn`` (a batch norm after it) in; with
        ``weights=False`` only its shapes (zero filters, unit scale, zero shift: a file's weights
        are loaded into it)."""
        if not packable(layer):
            raise TypeError(f"cannot pack {layer!r}: it needs a sign input quantizer and a binary sign kernel")
        if weights:
            scale, shift = fold_batchnorm(layer, bn)
            filters = XC.pack_filters(layer.weight.data, layer.groups)
        else:
            scale = shift = None
            filters = np.zeros(XC.filter_panels_shape(layer.weight.shape, layer.groups), np.uint64)
        return cls(filters, layer.in_channels, layer.out_channels, layer.kernel_size, layer.stride, layer.padding,
                   layer.dilation, layer.groups, layer.pad_value, scale, shift)

    def _state_changed(self):
        self._corr, self._calls = {}, {}  # derived from the filters, scale and shift

    def __deepcopy__(self, memo):
        from bitnet.nn.module import deepcopy_without
        return deepcopy_without(self, memo, ("_corr", "_calls"))  # (a copy prepares calls on its own arrays)

    def _taps(self):
        """Per-tap sums of the filters' +-1 values (O, KH, KW), from the packed words."""
        g = self.filters.shape[0]
        kh, kw = self.kernel_size
        words = XC.unpanel_words(self.filters, self.out_channels // g).reshape(self.out_channels, kh, kw, -1)
        return unpack_reference(words, self.in_channels // g).sum(axis=-1).astype(np.int64)

    def _correction(self, hw):
        if self.pad_value != 0 or not any(self.padding):
            return None
        if hw not in self._corr:
            self._corr[hw] = XC.zero_pad_correction(self._taps(), hw, self.stride, self.padding, self.dilation)
        return self._corr[hw]

    def _packed_input(self, x):
        bits = getattr(x, "packed_signs", None)
        if bits is not None and self.groups == 1:
            return bits
        data = x.data if isinstance(x, Tensor) else x
        if isinstance(data, np.ndarray) and data.dtype == np.uint64 and data.ndim == 5:
            return data  # already packed (N, H, W, G, CWg)
        if not isinstance(data, np.ndarray) or data.ndim != 4 or data.shape[1] != self.in_channels:
            raise ValueError(f"{self!r} expects input (N, {self.in_channels}, H, W), got "
                             f"{getattr(data, 'shape', type(data).__name__)}")
        return bitpack.pack_nchw(np.asarray(data, np.float32), self.groups)

    def _xnor(self, xb, residual=None, dots=False, emit=False, layout="nchw"):
        """The packed convolution of packed input ``xb`` through a prepared kernel call, made once per
        input shape and options (at most 8 kept; made again after ``load_state_dict``)."""
        return self._prepared(xb.shape, residual is not None, dots, emit, layout)(xb, residual)

    def _prepared(self, shape, residual=False, dots=False, emit=False, layout="nchw"):
        """The prepared kernel call (``kernels.xnor_conv.XnorConv2d``) for packed inputs of ``shape``."""
        key = (shape, residual, dots, emit, layout)
        call = self._calls.get(key)
        if call is None:
            if len(self._calls) >= 8:
                self._calls = {}
            call = XC.XnorConv2d(shape, self.filters, self.in_channels, self.out_channels, self.kernel_size,
                                 self.stride, self.padding, self.dilation, padword=self._padword,
                                 corr=self._correction(shape[1:3]), scale=None if dots else self.scale,
                                 shift=None if dots else self.shift, residual=residual, dots=dots,
                                 emit_bits=emit, layout=layout)
            self._calls[key] = call
        return call

    def dots(self, x) -> np.ndarray:
        """The exact integer dot products ``conv(sign(x), sign(W))`` (N, O, OH, OW) int32."""
        return self._xnor(self._packed_input(x), dots=True)

    def forward(self, x, residual=None):
        if isinstance(x, FeatureMap):
            return self._forward_channels_last(x, residual)
        res = None if residual is None else (residual.data if isinstance(residual, Tensor) else residual)
        out = self._xnor(self._packed_input(x), res, emit=self.emit_signs)
        if self.emit_signs:
            y, bits = out
            t = SignedTensor(y)
            t.packed_signs = bits
            return t
        return Tensor(out)

    def _forward_channels_last(self, fm, residual):
        """FeatureMap in (its packed signs used when present), FeatureMap out (with its signs packed
        when ``emit_signs``); ``residual``: a FeatureMap or an (N, OH, OW, O) array."""
        xb = self._nhwc_input(fm.nhwc, fm.bits)
        res = residual.nhwc if isinstance(residual, FeatureMap) else residual
        emit = self._emits_nhwc()
        out = self._xnor(xb, res, emit=emit, layout="nhwc")
        return FeatureMap.of(*out) if emit else FeatureMap.of(out)

    def _nhwc_input(self, nhwc, bits=None):
        """The packed input (N, H, W, G, CWg) of a channels-last map: its handed-over signs ``bits``
        where they fit, else packed now."""
        n, h, w, c = nhwc.shape
        if c != self.in_channels:
            raise ValueError(f"{self!r} expects {self.in_channels} channels, got a feature map of shape "
                             f"{nhwc.shape} (N, H, W, C)")
        g = self.groups
        if bits is None or g != 1 or bits.shape[:3] != (n, h, w):
            bits = bitpack.pack_rows(np.ascontiguousarray(nhwc).reshape(-1, c // g)).reshape(n, h, w, g, -1)
        return bits

    def _emits_nhwc(self) -> bool:
        """Whether a channels-last run hands over its signs packed (``emit_signs``, where the kernel
        can: one group, or whole panels per group)."""
        g = self.groups
        return self.emit_signs and (g == 1 or (self.out_channels // g) % self.filters.shape[3] == 0)

    def extra_repr(self):
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
                f"padding={self.padding}, dilation={self.dilation}, groups={self.groups}, pad_value={self.pad_value:g}")


class PackedDense(Module):
    """Binary dense layer on packed bits: a 1x1 ``PackedConv2d`` over (N, in_features) rows."""

    def __init__(self, filters, in_features, out_features, scale=None, shift=None):
        super().__init__()
        self.in_features, self.out_features = int(in_features), int(out_features)
        self.conv = PackedConv2d(filters, in_features, out_features, (1, 1), scale=scale, shift=shift)

    @classmethod
    def from_layer(cls, layer, bn=None, weights=True):
        """Pack a binary ``QDense`` (``packable``), folding ``bn`` (a batch norm after it) in; with
        ``weights=False`` only its shapes (as ``PackedConv2d.from_layer``)."""
        if not packable(layer):
            raise TypeError(f"cannot pack {layer!r}: it needs a sign input quantizer and a binary sign kernel")
        w = layer.weight.data
        if not weights:
            filters = np.zeros(XC.filter_panels_shape(w.shape + (1, 1)), np.uint64)
            return cls(filters, layer.in_features, layer.out_features)
        scale, shift = fold_batchnorm(layer, bn)
        return cls(XC.pack_filters(w.reshape(w.shape + (1, 1))), layer.in_features, layer.out_features, scale, shift)

    def _packed_input(self, x):
        """The signs of ``x`` packed as rows (rows, 1, 1, 1, words): ``x`` (..., in_features) floats
        (every axis before the last is a row, as ``QDense`` reads them) or packed rows (N, words)."""
        data = x.data if isinstance(x, Tensor) else x
        w = words_for(self.in_features)
        if isinstance(data, np.ndarray) and data.dtype == np.uint64 and data.ndim == 2:  # already packed rows
            if data.shape[1] != w:
                raise ValueError(f"PackedDense({self.extra_repr()}) expects {self.in_features} features ({w} packed words a row), got packed "
                                 f"rows of shape {data.shape} ({data.shape[1]} words: "
                                 f"{64 * (data.shape[1] - 1) + 1}..{64 * data.shape[1]} features); does the model's "
                                 "input have the size the model was built for?")
            return data.reshape(data.shape[0], 1, 1, 1, -1)
        if not isinstance(data, np.ndarray) or data.ndim < 1 or data.shape[-1] != self.in_features:
            raise ValueError(f"PackedDense({self.extra_repr()}) expects inputs with {self.in_features} features in the last axis, got "
                             f"{getattr(data, 'shape', type(data).__name__)}")
        bits = bitpack.pack_rows(np.asarray(data, np.float32).reshape(-1, self.in_features))
        return bits.reshape(bits.shape[0], 1, 1, 1, -1)

    def _rows_shape(self, x) -> tuple:
        """The output's shape for input ``x``: its leading axes and ``out_features``."""
        data = x.data if isinstance(x, Tensor) else x
        return tuple(data.shape[:-1]) + (self.out_features,)

    def dots(self, x) -> np.ndarray:
        """The exact integer dot products ``sign(x) @ sign(W)^T`` (..., O) int32."""
        return self.conv.dots(self._packed_input(x)).reshape(self._rows_shape(x))

    def forward(self, x):
        y = self.conv(self._packed_input(x))
        return Tensor(y.data.reshape(self._rows_shape(x)))

    def extra_repr(self):
        return f"{self.in_features}, {self.out_features}"
