"""Chains of layers whose output only a binary layer reads, run straight to its packed input bits.

In a packed ``Sequential`` the float layers before a binary layer are often read only through
that layer's sign: binary LeNet's ``Conv2d -> BatchNorm2d -> Tanh -> MaxPool2d -> QActivation ->
PackedConv2d``, and its ``PackedConv2d -> MaxPool2d -> Flatten -> QActivation -> PackedDense``. For
such a chain neither the activation nor the pooled floats need to exist (``kernels.sign_pool``):

    sign(maxpool(act(BN(conv(x))))) = -1  <=>  every value z of the window is < 0,
    z = g * conv(x) + shift,  g, shift: the batch norm (and the conv's bias) per channel,

for an activation that keeps the sign and never decreases (tanh, hardtanh with min < 0 <= max, or
none). So a chain runs as its source layer, channels-last, and one pass that writes the sink's
input bits: the float convolution as one GEMM (``bitnet.packed.blocks.conv_nchw_to_nhwc``) and the
window-AND of the signs, straight to packed words; the sink (``PackedConv2d`` with groups 1, or a
``PackedDense`` after a ``Flatten``) reads them without packing again.

A chain is

    source:   a float Conv2d (groups 1, dilation 1) [+ BatchNorm2d with running statistics],
              or a PackedConv2d (its scale and shift already hold its batch norm);
    middle:   any of Identity, Tanh, HardTanh(min < 0 <= max), and at most one MaxPool2d;
    then:     [Flatten(1, -1)] and any QActivations whose output is a sign;
    sink:     a PackedConv2d with groups 1 (no Flatten) or a PackedDense (after the Flatten).

Chains from a PackedConv2d without pooling or flatten are left alone (nothing to save). What a
chain computes equals the layer-by-layer run except for float rounding: from a PackedConv2d the
bits are identical (same epilogue floats; max pooling, tanh and sign commute exactly); from a float
convolution the GEMM's summation order and the folded batch norm round differently, so a value
within rounding of 0 can take the other sign (``bitnet.packed.model``'s docstring; the tests count
such cases).

The modules stay in the model unchanged (its state, its file, its summary); only the forward of
the ``Sequential`` holding them runs the chains (``bitnet.packed.plan``). A chain with a forward
hook on one of its layers runs layer by layer, so the hook sees what it expects. The float layers' weights are read when a chain first runs on an
input shape and again after ``load_state_dict`` or an array replaced by assignment
(``Module._state_changed``, ``bitnet.packed.plan``): a packed model is a snapshot of the float model
(to change a weight, change the float model and pack it again).
"""
from __future__ import annotations

import numpy as np

from bitnet.kernels.pooling import pool_output_size
from bitnet.kernels.bits import words_for
from bitnet.kernels.im2col import conv_output_size, prepared_im2col
from bitnet.kernels.sign_pool import PoolSigns
from bitnet.packed.blocks import conv_nchw_to_nhwc
from bitnet.packed.fold import conv_batchnorm_affine
from bitnet.packed.kinds import computes_as
from bitnet.packed.layers import PackedConv2d, PackedDense
from bitnet.tensor import Tensor


def _is_float_conv(m) -> bool:
    """A convolution that computes the float ``F.conv2d`` (groups 1, dilation 1): a ``Conv2d``, or a
    ``QConv2d`` without quantizers or scaling that pads with zeros (``computes_as``: not a subclass
    with a forward of its own)."""
    from bitnet.nn.layers import Conv2d
    from bitnet.nn.quantized import QConv2d
    if computes_as(m, QConv2d):
        plain = (m.kernel_quantizer is None and m.input_quantizer is None and m.kernel_scale() is None
                 and (m.pad_value == 0 or not any(m.padding)))
    else:
        plain = computes_as(m, Conv2d)
    return plain and m.groups == 1 and tuple(m.dilation) == (1, 1)


def _keeps_sign(m) -> bool:
    """An activation a with a(z) < 0 exactly where z < 0 that never decreases."""
    from bitnet.nn.layers import HardTanh, Identity, Tanh
    return type(m) in (Identity, Tanh) or (type(m) is HardTanh and m.min_val < 0 <= m.max_val)


def _is_sign(m) -> bool:
    from bitnet.nn.quantized import QActivation
    return computes_as(m, QActivation) and m.quantizer is not None and m.quantizer.output == "sign"


class SignChain:
    """``modules[start:stop]`` of a Sequential run as one chain (module docstring); ``stop`` is the
    sink's index: the chain's output (a Tensor of uint64 words) is the sink's input."""

    def __init__(self, start, stop, source, bn, pool, flat):
        self.start, self.stop = start, stop
        self.source, self.bn, self.pool, self.flat = source, bn, pool, flat
        self._runs = {}  # input shape -> prepared run (at most 8)

    def reset(self):
        """Forget what was read from the layers and prepared (done again at the next call)."""
        self._runs = {}

    def __deepcopy__(self, memo):
        from bitnet.nn.module import deepcopy_without
        return deepcopy_without(self, memo, ("_runs",))

    def _conv_constants(self):
        """The float source's GEMM operand (C*KH*KW, O) and per-channel scale and shift (float32)."""
        g, shift = conv_batchnorm_affine(self.source, self.bn)
        w = self.source.weight.data
        weight_t = np.ascontiguousarray(w.reshape(w.shape[0], -1).T, np.float32)
        return weight_t, g.astype(np.float32), shift.astype(np.float32)

    def _prepare(self, shape, bound=False):
        """``run(data) -> words`` for inputs of ``shape``: the source layer channels-last, then the
        prepared window-sign pass (``kernels.sign_pool.PoolSigns``). ``bound``: every array the run
        writes is made here and reused by each call (its result is valid until the next call;
        ``run.nbytes`` says how much it holds): the same kernels on the same values."""
        src = self.source
        if isinstance(src, PackedConv2d):
            if len(shape) == 5:   # packed words (N, H, W, G, CWg)
                n, h, w = shape[:3]
            else:                 # floats (N, C, H, W)
                n, h, w = shape[0], shape[2], shape[3]
            (kh, kw), (sh, sw), (ph, pw), (dh, dw) = src.kernel_size, src.stride, src.padding, src.dilation
            oh, ow = (conv_output_size(h, kh, sh, ph, dh), conv_output_size(w, kw, sw, pw, dw))
            g = shift = None
            xb_shape = (n, h, w, src.groups, words_for(src.in_channels // src.groups))
            call = src._prepared(xb_shape, layout="nhwc")
            conv = call.bind() if bound else call
            held = conv.nbytes if bound else 0

            def source(data):  # what src(Tensor(data)) computes, channels-last
                return conv(src._packed_input(data))
        else:
            if len(shape) != 4 or shape[1] != src.in_channels:
                raise ValueError(f"{src!r} expects input (N, {src.in_channels}, H, W), got {shape}")
            weight_t, g, shift = self._conv_constants()
            n, h, w = shape[0], shape[2], shape[3]
            (kh, kw), (sh, sw), (ph, pw) = src.kernel_size, src.stride, src.padding
            oh, ow = conv_output_size(h, kh, sh, ph, 1), conv_output_size(w, kw, sw, pw, 1)

            cols = y = lower = None
            if bound:
                cols = np.empty((shape[1] * kh * kw, n * oh * ow), np.float32)
                y = np.empty((n * oh * ow, src.out_channels), np.float32)
                lower = prepared_im2col(shape, kh, kw, sh, sw, ph, pw, 1, 1, oh, ow)
            held = 0 if cols is None else cols.nbytes + y.nbytes

            def source(data):
                return conv_nchw_to_nhwc(data, weight_t, src.kernel_size, src.stride, src.padding, cols, y, lower)
        if self.pool is None:
            kernel = stride = (1, 1)
            padding, size = (0, 0), (oh, ow)
        else:
            p = self.pool
            kernel, stride, padding = p.kernel_size, p.stride, p.padding
            size = tuple(pool_output_size(v, k, s, q, p.ceil_mode) for v, k, s, q in zip((oh, ow), kernel, stride, padding))
        signs = PoolSigns((n, oh, ow, src.out_channels), g, shift, kernel, stride, padding, size, self.flat)
        if bound:
            signs = signs.bind()
            held += signs.nbytes
        flat = self.flat

        def run(data):
            bits = signs(source(data))
            return bits if flat else bits[:, :, :, None, :]
        run.nbytes = held
        return run

    def bind(self, shape):
        """A bound run for inputs of ``shape`` (``_prepare``), for a plan's own use."""
        return self._prepare(tuple(shape), bound=True)

    def run(self, data: np.ndarray) -> np.ndarray:
        """The sink's input words for the chain's input array ``data``."""
        run = self._runs.get(data.shape)
        if run is None:
            if len(self._runs) >= 8:
                self._runs = {}
            run = self._runs[data.shape] = self._prepare(data.shape)
        return run(data)

    def __call__(self, x) -> Tensor:
        return Tensor(self.run(x.data if isinstance(x, Tensor) else np.asarray(x)))


def find_chains(seq) -> list[SignChain]:
    """The chains of the Sequential ``seq``'s children (module docstring), in order."""
    from bitnet.nn.layers import BatchNorm2d, Flatten, MaxPool2d
    mods = list(seq._modules.values())
    chains, i = [], 0
    while i < len(mods):
        src = mods[i]
        if not (_is_float_conv(src) or isinstance(src, PackedConv2d)):
            i += 1
            continue
        j, bn, pool, flat = i + 1, None, None, False
        if _is_float_conv(src) and j < len(mods) and computes_as(mods[j], BatchNorm2d) and mods[j].track_running_stats:
            bn, j = mods[j], j + 1
        while j < len(mods) and (_keeps_sign(mods[j]) or (pool is None and type(mods[j]) is MaxPool2d)):
            pool = mods[j] if type(mods[j]) is MaxPool2d else pool
            j += 1
        if j < len(mods) and type(mods[j]) is Flatten and (mods[j].start_dim, mods[j].end_dim) == (1, -1):
            flat, j = True, j + 1
        while j < len(mods) and _is_sign(mods[j]):
            j += 1
        sink = mods[j] if j < len(mods) else None
        fits = (isinstance(sink, PackedDense) if flat else
                isinstance(sink, PackedConv2d) and sink.groups == 1 and sink.in_channels == src.out_channels)
        if fits and (pool is not None or flat or not isinstance(src, PackedConv2d)):
            chains.append(SignChain(i, j, src, bn, pool, flat))
            i = j
        else:
            i += 1
    return chains
