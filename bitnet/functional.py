"""The functional interface: every differentiable primitive as a plain function of tensors.

``import bitnet.functional as F`` then ``F.conv2d(x, w)``, ``F.cross_entropy(logits, y)``, ...
The primitives themselves (with their backward passes) live in ``bitnet.ops``.
"""
from bitnet.ops.conv import conv2d  # noqa: F401
from bitnet.ops.pool import avg_pool2d, max_pool2d  # noqa: F401
from bitnet.ops.elementwise import (  # noqa: F401
    add, clip, div, exp, hardtanh, log, matmul, mul, neg, pow, relu, sigmoid, sub, tanh, where)
from bitnet.ops.loss import cross_entropy, dropout, log_softmax, softmax  # noqa: F401
from bitnet.ops.norm import batch_norm  # noqa: F401
from bitnet.ops.reduce import argmax, argmin, max, mean, min, sum  # noqa: F401
from bitnet.ops.shape import (  # noqa: F401
    cat, concatenate, flatten, getitem, pad, permute, reshape, stack, transpose)
from bitnet.ops.elementwise import _matmul
from bitnet.tensor import Tensor, is_grad_enabled


def _data(t):
    return t.data if isinstance(t, Tensor) else t


def linear(x, weight, bias=None):
    """y = x @ weight^T + bias, weight of shape (out_features, in_features)."""
    if x.shape[-1] != weight.shape[1]:
        raise ValueError(f"linear: input has {x.shape[-1]} features but the weight expects "
                         f"{weight.shape[1]} (weight shape {weight.shape})")
    if not (is_grad_enabled() and any(isinstance(t, Tensor) and t.requires_grad for t in (x, weight, bias))):
        # nothing to differentiate (inference): the same kernels without building a graph
        y = _matmul(_data(x), _data(weight).T)
        return Tensor(y if bias is None else y + _data(bias))
    y = matmul(x, transpose(weight, 0, 1))
    return y if bias is None else add(y, bias)
