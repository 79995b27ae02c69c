"""Which batch norms fold into which binary layers, and the folded per-channel affine.

A binary layer (``binary_kernel``: +-1 weights, maybe scaled) computes, per output channel c,

    y_c = alpha_c * d_c + b_c

with d_c the dot product of the (quantized) input with sign(W_c), alpha_c the magnitude-aware scale
(1 without one) and b_c the bias (0 without one). A batch norm in eval mode that consumes y directly,
and nothing else does, computes ``gamma_c * (y_c - mean_c) / sqrt(var_c + eps) + beta_c``; both
together are one affine map of d:

    z_c = scale_c * d_c + shift_c,
    scale_c = alpha_c * gamma_c / sqrt(var_c + eps),
    shift_c = (b_c - mean_c) * gamma_c / sqrt(var_c + eps) + beta_c,

so a packed file stores 2 float32 per channel instead of alpha, bias and the batch norm's four
vectors. The folding is computed in float64 and rounded once to float32; it changes the rounding of
the float path (outputs agree within float tolerance, not bit for bit).

Which pairs fold: in a ``Sequential``, a binary layer immediately followed by a batch norm; in
other modules, the pairs listed in the class attribute ``FOLDABLE_BATCHNORMS`` (names of two
children, e.g. ``(("conv1", "bn1"),)``), which a module declares when its forward feeds the layer's
output to that batch norm and to nothing else. Batch norms that use batch statistics at eval time
(``track_running_stats=False``) never fold.
"""
from __future__ import annotations

import numpy as np


def has_binary_kernel(module) -> bool:
    """True for a quantized layer whose kernel is binary (+-1, or +-1 times a per-channel scale)."""
    return bool(getattr(module, "binary_kernel", False))


def _foldable_bn(module) -> bool:
    from bitnet.nn.layers import _BatchNorm
    from bitnet.packed.kinds import computes_as
    return computes_as(module, _BatchNorm) and module.track_running_stats


def _local_pairs(module):
    from bitnet.nn.container import Sequential
    children = module._modules
    if isinstance(module, Sequential):
        names = [n for n, m in children.items() if m is not None]
        return list(zip(names, names[1:]))
    return list(getattr(type(module), "FOLDABLE_BATCHNORMS", ()))


def batchnorm_pairs(model) -> list:
    """``[(layer_name, batchnorm_name), ...]`` (dotted names from ``model.named_modules()``) of
    every batch norm that folds into the binary layer before it; see the module docstring."""
    pairs = []
    for prefix, module in model.named_modules():
        for a, b in _local_pairs(module):
            la, lb = module._modules.get(a), module._modules.get(b)
            if la is not None and lb is not None and has_binary_kernel(la) and _foldable_bn(lb):
                dot = f"{prefix}." if prefix else ""
                pairs.append((dot + a, dot + b))
    return pairs


def fold_batchnorm(layer, bn=None):
    """The per-channel ``(scale, shift)`` (float32) with ``layer`` followed by ``bn`` (or alone)
    equal to ``scale * d + shift`` for the layer's integer dot products d; see the module docstring."""
    w = layer.weight.data.astype(np.float64)
    out = w.shape[0]
    alpha = np.ones(out)
    if layer.kernel_scale() is not None:  # the quantizer's alpha, in float64
        alpha = layer.kernel_quantizer.scale(w)
    bias = np.zeros(out) if layer.bias is None else layer.bias.data.astype(np.float64)
    if bn is None:
        return alpha.astype(np.float32), bias.astype(np.float32)
    if bn.num_features != out:
        raise ValueError(f"cannot fold {bn!r} into {layer!r}: {bn.num_features} features, {out} channels")
    g, b = batchnorm_affine(bn)
    return (alpha * g).astype(np.float32), (bias * g + b).astype(np.float32)


def batchnorm_affine(bn):
    """An eval-mode batch norm as ``y = g * x + b`` per channel (float64):
    ``g = gamma / sqrt(var + eps)``, ``b = beta - mean * g``."""
    gamma = 1.0 if bn.weight is None else bn.weight.data.astype(np.float64)  # affine=False: gamma 1, beta 0
    beta = 0.0 if bn.bias is None else bn.bias.data.astype(np.float64)
    g = gamma / np.sqrt(bn.running_var.astype(np.float64) + bn.eps)
    return g, beta - bn.running_mean.astype(np.float64) * g


def conv_batchnorm_affine(conv, bn=None):
    """A float layer with bias ``b_c`` followed by ``bn`` (or alone) as ``g * (W x) + shift`` per
    output channel (float64): ``g``, ``shift`` = ``batchnorm_affine(bn)`` with the bias carried
    through, ``shift = beta - mean * g + b_c * g`` (without ``bn``: g = 1, shift = b_c)."""
    out = conv.weight.data.shape[0]
    bias = np.zeros(out) if conv.bias is None else conv.bias.data.astype(np.float64)
    if bn is None:
        return np.ones(out), bias
    g, b = batchnorm_affine(bn)
    return g, b + bias * g
