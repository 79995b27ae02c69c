"""Quantized layers: ``QActivation``, ``QDense``, ``QConv2d`` (BMXNet's interface, Larq's design).

Each is its float twin plus an ``input_quantizer`` applied to the input and a ``kernel_quantizer``
applied to the latent float weights in every forward pass (the latent weights are never
overwritten; the optimizer keeps updating them and the straight-through estimator carries the
gradient back to them):

    QDense:   y = q_in(x) @ q_w(W)^T + b
    QConv2d:  y = conv2d(pad(q_in(x), pad_value), q_w(W)) + b

``act_bit`` / ``weight_bit`` are shorthands (``bitnet.quantizers.for_bits``): 1 = binary
(``ste_sign``), 2..31 = DoReFa k-bit, 32 = full precision (no quantizer). Explicit
``input_quantizer`` / ``kernel_quantizer`` (a name, a config dict or a Quantizer) win over them.
With no quantizers a quantized layer computes exactly what its float twin computes.

``scaling="channel"`` with a binary kernel uses ``magnitude_aware_sign``: sign(W) times the mean
|W| of each output channel (XNOR-Net's alpha). The layer computes it as ``alpha[o] * d[o]`` with ``d``
the dot product of the input with sign(W) (an integer for a binary input), never as a sum of
+-alpha terms: float rounding then leaves exact zeros where d = 0, so the float path, the forward on
bits and the packed model agree on every sign. A binary kernel's latent weights are clipped to
[-1, 1] after every optimizer step (``kernel_clip=True``); without clipping they can grow without
bound, where the gradient no longer flips their sign ("starved weights"), so turning it off warns.

What a layer is, it says itself: ``binary_input`` (its input quantizer's output is exactly +-1),
``binary_kernel`` (its kernel quantizer's output is +-1, or +-1 times a per-channel scale),
``kernel_scale()`` (that scale, or None); see ``Quantizer.output`` in ``bitnet.quantizers``.

Forward on bits: when both the input and the kernel are binary, the forward pass, in training as
in evaluation, runs on the XNOR-popcount kernels (``bitnet.ops.binary``): the same numbers bit for
bit, so the same loss and gradients; the backward pass stays the float one. ``forward_on_bits =
False`` on a layer (or class) turns it off.

Padding of binary convolutions (docs/design.md): a +-1 tensor cannot hold 0, so ``pad_value``
says what the border holds: +1 or -1, or 0 (the float twin's zero padding). The default (None)
is +1 for a 1-bit input quantizer, which is exactly sign() of a zero-padded input (sign(0) = +1),
and 0 otherwise.
"""
from __future__ import annotations

import warnings

import numpy as np

from bitnet import functional as F
from bitnet import quantizers as Q
from bitnet.gpu.arrays import array_module
from bitnet.nn.layers import Conv2d, Dense
from bitnet.nn.module import Module


def _resolve(explicit, bits, kind):
    if explicit is not None:
        return Q.get(explicit)
    return Q.for_bits(bits, kind)


def clip_unit(data: np.ndarray) -> None:
    """Constraint: clip latent weights to [-1, 1] in place (on the CPU or on "cuda")."""
    array_module(data).clip(data, -1.0, 1.0, out=data)


clip_unit.elementwise = True  # optimizers on a device may clip several parameters at once (bitnet.optim.flat)


class _QuantizedWeights:
    """Shared set-up of QDense and QConv2d: quantizers, scaling, clipping, forward on bits."""

    forward_on_bits = True

    def _setup_quantizers(self, act_bit, weight_bit, input_quantizer, kernel_quantizer, scaling, kernel_clip):
        if scaling not in (None, "channel"):
            raise ValueError(f"{type(self).__name__}: scaling must be None or 'channel', got {scaling!r}")
        kq = _resolve(kernel_quantizer, weight_bit, "weight")
        if scaling == "channel":
            if kernel_quantizer is not None or kq is None or kq.output != "sign":
                raise ValueError(f"{type(self).__name__}: scaling='channel' applies to a binary kernel "
                                 f"given by weight_bit=1; got weight_bit={weight_bit}, "
                                 f"kernel_quantizer={kernel_quantizer!r}. Pass "
                                 "kernel_quantizer='magnitude_aware_sign' to combine it otherwise.")
            kq = Q.get("magnitude_aware_sign")
        self.input_quantizer = _resolve(input_quantizer, act_bit, "activation")
        self.kernel_quantizer = kq
        self.kernel_clip = bool(kernel_clip)
        if kq is not None and kq.precision == 1:
            if kernel_clip:
                self.weight.constraint = clip_unit
                clip_unit(self.weight.data)
            else:
                warnings.warn(f"{type(self).__name__}: a binary kernel without weight clipping: latent "
                              "weights can grow until their gradient no longer flips their sign "
                              "(starved weights); keep kernel_clip=True unless you know why.",
                              stacklevel=3)

    @property
    def binary_input(self) -> bool:
        """True when the input quantizer's output is exactly -1 or +1."""
        return self.input_quantizer is not None and self.input_quantizer.output == "sign"

    @property
    def binary_kernel(self) -> bool:
        """True when the kernel quantizer's output is +-1, or +-1 times one scale per output channel."""
        kq = self.kernel_quantizer
        return kq is not None and kq.output in ("sign", "scaled_sign")

    def kernel_scale(self):
        """alpha (out,) of a scaled binary kernel (``scaled_sign``), None otherwise."""
        kq = self.kernel_quantizer
        return kq.scale(self.weight.data) if kq is not None and kq.output == "scaled_sign" else None

    def runs_on_bits(self) -> bool:
        """True when this layer's forward uses the packed kernels (see the module docstring)."""
        return self.forward_on_bits and self.binary_input and self.binary_kernel

    def quantized_input(self, x):
        return x if self.input_quantizer is None else self.input_quantizer(x)

    def quantized_weight(self):
        """The quantized kernel; for a scaled binary kernel its +-1 factor (the layer applies
        ``kernel_scale()`` to its output)."""
        kq = self.kernel_quantizer
        if kq is None:
            return self.weight
        return kq.sign_part(self.weight) if kq.output == "scaled_sign" else kq(self.weight)

    def _finish(self, y, scale, axis_shape):
        """``scale * y + bias`` for a scaled kernel (``y`` computed without the bias)."""
        y = F.mul(y, scale.reshape(axis_shape))
        return y if self.bias is None else F.add(y, F.reshape(self.bias, axis_shape))

    def _quant_config(self) -> dict:
        """The quantizers as explicit configs, ``act_bit`` / ``weight_bit`` as their precisions (32 for
        none): what a constructor needs to rebuild them, whatever they were built from."""
        iq, kq = self.input_quantizer, self.kernel_quantizer
        return dict(act_bit=32 if iq is None else int(iq.precision), weight_bit=32 if kq is None else int(kq.precision),
                    input_quantizer=None if iq is None else iq.get_config(),
                    kernel_quantizer=None if kq is None else kq.get_config(), kernel_clip=self.kernel_clip)

    def _quant_repr(self):
        q = lambda v: "None" if v is None else v.get_config()["name"]  # noqa: E731
        return f", input_quantizer={q(self.input_quantizer)}, kernel_quantizer={q(self.kernel_quantizer)}"


class QActivation(Module):
    """Quantize activations: ``act_bit`` (1 = sign with a straight-through estimator, 2..31 =
    DoReFa k-bit on [0, 1], 32 = identity) or an explicit ``quantizer``."""

    def __init__(self, act_bit: int = 1, quantizer=None):
        super().__init__()
        self.act_bit = act_bit
        self.quantizer = _resolve(quantizer, act_bit, "activation")

    @classmethod
    def state_bytes(cls, config):
        cls._arguments(config)
        return 0

    def forward(self, x):
        return x if self.quantizer is None else self.quantizer(x)

    def get_config(self) -> dict:
        q = self.quantizer
        return dict(act_bit=32 if q is None else int(q.precision), quantizer=None if q is None else q.get_config())

    def extra_repr(self):
        return "quantizer=None" if self.quantizer is None else f"quantizer={self.quantizer!r}"


class QDense(_QuantizedWeights, Dense):
    """``Dense`` with quantized input and weights; see the module docstring."""

    def __init__(self, in_features, out_features, bias=True, act_bit=1, weight_bit=1, input_quantizer=None,
                 kernel_quantizer=None, scaling=None, kernel_clip=True, rng=None):
        super().__init__(in_features, out_features, bias=bias, rng=rng)
        self._setup_quantizers(act_bit, weight_bit, input_quantizer, kernel_quantizer, scaling, kernel_clip)

    state_bytes = Dense.__dict__["state_bytes"]  # Dense's parameters (latent float weights): its formula

    def forward(self, x):
        if x.ndim < 1 or x.shape[-1] != self.in_features:
            raise ValueError(f"{self!r} expects inputs with {self.in_features} features in the last "
                             f"axis, got shape {x.shape}; flatten conv features with Flatten() first")
        scale = self.kernel_scale()
        bias = self.bias if scale is None else None
        if x.ndim == 2 and self.runs_on_bits():
            from bitnet.ops.binary import binary_linear
            y = binary_linear(self.quantized_input(x), self.quantized_weight(), bias)
        else:
            y = F.linear(self.quantized_input(x), self.quantized_weight(), bias)
        return y if scale is None else self._finish(y, scale, (-1,))

    def get_config(self) -> dict:
        return dict(super().get_config(), **self._quant_config())

    def extra_repr(self):
        return super().extra_repr() + self._quant_repr()


class QConv2d(_QuantizedWeights, Conv2d):
    """``Conv2d`` with quantized input and weights and a ``pad_value``; see the module docstring."""

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, dilation=1, groups=1,
                 bias=True, act_bit=1, weight_bit=1, input_quantizer=None, kernel_quantizer=None,
                 pad_value=None, scaling=None, kernel_clip=True, rng=None):
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias, rng=rng)
        self._setup_quantizers(act_bit, weight_bit, input_quantizer, kernel_quantizer, scaling, kernel_clip)
        if pad_value is None:  # what the 1-bit quantizers (sign, heaviside) make of a zero-padded border
            one_bit = self.input_quantizer is not None and self.input_quantizer.precision == 1
            pad_value = 1.0 if one_bit else 0.0
        if pad_value not in (-1, 0, 1):
            raise ValueError(f"QConv2d: pad_value must be -1, 0 or +1, got {pad_value!r}")
        self.pad_value = float(pad_value)

    state_bytes = Conv2d.__dict__["state_bytes"]  # Conv2d's parameters (latent float weights): its formula

    def forward(self, x):
        self.check_input(x)
        xq, wq = self.quantized_input(x), self.quantized_weight()
        scale = self.kernel_scale()
        bias = self.bias if scale is None else None
        if self.runs_on_bits():
            from bitnet.ops.binary import binary_conv2d
            y = binary_conv2d(xq, wq, bias, self.stride, self.padding, self.dilation, self.groups, self.pad_value)
        else:
            ph, pw = self.padding
            padding = self.padding
            if self.pad_value != 0 and (ph or pw):
                xq, padding = F.pad(xq, ((ph, ph), (pw, pw)), value=self.pad_value), 0
            y = F.conv2d(xq, wq, bias, self.stride, padding, self.dilation, self.groups)
        return y if scale is None else self._finish(y, scale, (1, -1, 1, 1))

    def get_config(self) -> dict:
        return dict(super().get_config(), pad_value=self.pad_value, **self._quant_config())

    def extra_repr(self):
        return super().extra_repr() + self._quant_repr() + f", pad_value={self.pad_value:g}"
