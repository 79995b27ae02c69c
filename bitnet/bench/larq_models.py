"""bitnet's zoo networks in Larq, the binary-network library on TensorFlow / Keras: what a Larq user
would train (``bitnet bench train``: the "larq" framework) and deploy (``bitnet bench model``: the
"larq keras" and "lce" columns, the latter the Larq Compute Engine's converter and interpreter).

``larq_twin(bitnet_model)`` reads a bitnet model module by module and builds the same network as a
Keras model, with its weights: channels-last (Keras's layout on the CPU; inputs are transposed
once with ``to_nhwc``), so a convolution's weight (O, C, KH, KW) becomes (KH, KW, C, O) and the
dense layer after a ``Flatten`` gets its rows permuted from (C, H, W) to (H, W, C) order. The binary
layers are Larq's own: ``QuantConv2D`` / ``QuantDense`` with ``ste_sign`` on input and kernel
(sign(0) = +1, the gradient where |x| <= 1: bitnet's ``ste_sign``) and the ``weight_clip``
constraint (latent weights clipped to [-1, 1] after each step, as bitnet's kernel constraint);
``QActivation(1)`` is an ``Activation(SteSign())``. A convolution with stride 1 and a centred border
is Keras's "same" (for a binary one with Larq's ``pad_values``: the border of +1, which the LCE
fuses into its binary convolution); any other border is padded explicitly before a "valid"
convolution: with stride 2, "same" would put the border on the bottom and right only, a different
function. Batch norms: epsilon 1e-5, momentum
0.9 (Keras's momentum is PyTorch's and bitnet's 1 - 0.1). The twin computes the bitnet model's
function to float rounding (``check_twin``).

Needs ``tensorflow``, ``tf-keras`` and ``larq`` (``larq-compute-engine`` for the LCE column). They
pin NumPy below 2, so they live in a virtual environment of their own with bitnet installed into
it (docs/benchmarks.md, "Against Larq"). Larq 0.14 needs Keras 2 as ``tf.keras``: the first use of
TensorFlow here sets ``TF_USE_LEGACY_KERAS=1`` (and quiets TensorFlow's log) where TensorFlow is not
imported yet; importing this module sets nothing.
"""
from __future__ import annotations

import os
import sys

import numpy as np

PACKAGES = ("tensorflow", "tf_keras", "larq")


def missing(lce=False) -> str | None:
    """Why the Larq columns cannot run here (a sentence), or None."""
    import importlib.util
    absent = [p for p in PACKAGES + (("larq_compute_engine",) if lce else ()) if importlib.util.find_spec(p) is None]
    if not absent:
        return None
    return (f"{', '.join(absent)} not installed (they need NumPy < 2: in a virtual environment, pip install "
            "tensorflow-cpu tf-keras larq larq-compute-engine; then, in the checkout, pip install -e .; "
            "docs/benchmarks.md, 'Against Larq')")


def _tf():
    """TensorFlow, imported with Keras 2 as ``tf.keras`` (Larq 0.14 needs it) and its log quieted:
    the variables are read at TensorFlow's first import, so they are set only before that."""
    if "tensorflow" not in sys.modules:
        os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf
    return tf


def to_nhwc(x: np.ndarray) -> np.ndarray:
    """NCHW images as the channels-last array a Keras model takes (a copy)."""
    return np.ascontiguousarray(x.transpose(0, 2, 3, 1)) if x.ndim == 4 else np.ascontiguousarray(x)


def set_threads(threads: int) -> None:
    """TensorFlow's intra-op pool to ``threads`` and one inter-op thread (before its first op)."""
    tf = _tf()
    tf.config.threading.set_intra_op_parallelism_threads(threads)
    tf.config.threading.set_inter_op_parallelism_threads(1)


class _Builder:
    """Keras layers for bitnet modules, applied to a Keras tensor; keeps (layer, weights) to set
    once the model is built."""

    def __init__(self):
        tf = _tf()
        import larq as lq
        self.tf, self.lq, self.L = tf, lq, tf.keras.layers
        self.weights = []

    def _layer(self, layer, weights, x):
        y = layer(x)
        self.weights.append((layer, weights))
        return y

    def _binary_kwargs(self):
        return dict(input_quantizer="ste_sign", kernel_quantizer="ste_sign", kernel_constraint="weight_clip")

    def conv(self, m, x, binary):
        if m.groups != 1 or m.dilation != (1, 1):
            raise ValueError(f"larq twin: {m!r} has groups or dilation, which the twins do not use")
        (ph, pw), (kh, kw) = m.padding, m.kernel_size
        w = [np.transpose(m.weight.data, (2, 3, 1, 0))] + ([m.bias.data] if m.bias is not None else [])
        value = float(m.pad_value) if binary else 0.0
        # stride 1 with a centred border: Keras's "same" (and Larq's pad_values), which the LCE fuses
        same = (ph or pw) and m.stride == (1, 1) and (2 * ph, 2 * pw) == (kh - 1, kw - 1)
        if (ph or pw) and not same:
            tf = self.tf
            x = self.L.Lambda(lambda t: tf.pad(t, [[0, 0], [ph, ph], [pw, pw], [0, 0]], constant_values=value))(x)
        args = dict(filters=m.out_channels, kernel_size=m.kernel_size, strides=m.stride,
                    padding="same" if same else "valid", use_bias=m.bias is not None)
        if binary:
            pad = {"pad_values": value} if same else {}
            layer = self.lq.layers.QuantConv2D(**args, **self._binary_kwargs(), **pad)
        else:
            layer = self.L.Conv2D(**args)
        return self._layer(layer, w, x)

    def dense(self, m, x, binary, flat_from=None):
        w = m.weight.data  # (out, in)
        if flat_from is not None:  # the input was flattened from (C, H, W) in bitnet, (H, W, C) here
            c, h, wd = flat_from
            w = w.reshape(-1, c, h, wd).transpose(0, 2, 3, 1).reshape(w.shape[0], -1)
        weights = [np.ascontiguousarray(w.T)] + ([m.bias.data] if m.bias is not None else [])
        args = dict(units=m.out_features, use_bias=m.bias is not None)
        layer = self.lq.layers.QuantDense(**args, **self._binary_kwargs()) if binary else self.L.Dense(**args)
        return self._layer(layer, weights, x)

    def batch_norm(self, m, x):
        layer = self.L.BatchNormalization(momentum=1.0 - m.momentum, epsilon=m.eps)
        return self._layer(layer, [m.weight.data, m.bias.data, m.running_mean, m.running_var], x)

    def module(self, m, x, flat_from=None):
        """``(y, flat_from)``: ``m`` applied to ``x``; ``flat_from``: (C, H, W) of the last Flatten."""
        from bitnet import nn
        from bitnet.models.resnet import BasicBlock, ResNet
        name = type(m).__name__
        if isinstance(m, nn.Sequential):
            for child in m._modules.values():
                x, flat_from = self.module(child, x, flat_from)
            return x, flat_from
        if type(m) is ResNet:
            x, _ = self.module(m.stem, x)
            x, _ = self.module(m.stages, x)
            return self.dense(m.fc, self.L.GlobalAveragePooling2D()(x), False), None
        if type(m) is BasicBlock and m.binary:  # y = bn1(conv1(x)) + sc(x); out = bn2(conv2(y)) + y
            sc = x if m.shortcut is None else self.module(m.shortcut, x)[0]
            y = self.L.Add()([self.batch_norm(m.bn1, self.conv(m.conv1, x, True)), sc])
            return self.L.Add()([self.batch_norm(m.bn2, self.conv(m.conv2, y, True)), y]), None
        if type(m) in (nn.QConv2d, nn.QDense) and _ste_sign(m.input_quantizer) and _ste_sign(m.kernel_quantizer):
            return (self.conv(m, x, True), None) if type(m) is nn.QConv2d else (self.dense(m, x, True, flat_from), None)
        if type(m) is nn.QActivation and _ste_sign(m.quantizer):
            return self.L.Activation(self.lq.quantizers.SteSign())(x), flat_from
        if type(m) is nn.Conv2d:
            return self.conv(m, x, False), None
        if type(m) is nn.Dense:
            return self.dense(m, x, False, flat_from), None
        if type(m) in (nn.BatchNorm2d, nn.BatchNorm1d):
            return self.batch_norm(m, x), flat_from
        if type(m) in (nn.Tanh, nn.ReLU):
            return self.L.Activation(name.lower())(x), flat_from
        if type(m) in (nn.MaxPool2d, nn.AvgPool2d) and m.padding == (0, 0) and m.stride == m.kernel_size:
            pool = self.L.MaxPool2D if type(m) is nn.MaxPool2d else self.L.AveragePooling2D
            return pool(m.kernel_size)(x), None
        if type(m) is nn.Flatten:
            return self.L.Flatten()(x), tuple(int(d) for d in (x.shape[3], x.shape[1], x.shape[2]))
        if type(m) is nn.Identity:
            return x, flat_from
        raise ValueError(f"larq twin: no Keras layer for {m!r}")


def _ste_sign(quantizer) -> bool:
    """bitnet's ``ste_sign`` with clip value 1: Larq's ``ste_sign`` (its default clip value)."""
    from bitnet.quantizers import SteSign
    return type(quantizer) is SteSign and quantizer.clip_value == 1.0


def larq_twin(bitnet_model, input_shape):
    """The Keras model computing ``bitnet_model`` (module docstring) on channels-last inputs of the
    NCHW ``input_shape`` (C, H, W), with its weights and batch-norm statistics."""
    b = _Builder()
    c, h, w = input_shape
    inp = b.tf.keras.Input((h, w, c))
    out, _ = b.module(bitnet_model, inp)
    model = b.tf.keras.Model(inp, out)
    for layer, weights in b.weights:
        layer.set_weights([np.asarray(v, np.float32) for v in weights])
    return model


def check_twin(bitnet_model, twin, x: np.ndarray) -> float:
    """Largest |difference| of the eval-mode outputs of ``bitnet_model`` and ``twin`` on NCHW ``x``
    (float rounding; more where a value within rounding of 0 takes the other sign)."""
    from bitnet.tensor import Tensor, no_grad
    was = bitnet_model.training
    bitnet_model.eval()
    try:
        with no_grad():
            ours = bitnet_model(Tensor(x)).data
    finally:
        bitnet_model.train(was)
    return float(np.abs(twin(to_nhwc(x), training=False).numpy() - ours).max())


def lce_interpreter(twin, threads: int):
    """The twin converted by the Larq Compute Engine (binary layers as its bconv2d / bitpacked ops)
    and its interpreter with ``threads`` threads: ``predict(nhwc_batch)``."""
    import larq_compute_engine as lce
    from larq_compute_engine.tflite.python.interpreter import Interpreter
    return Interpreter(lce.convert_keras_model(twin), num_threads=threads)
