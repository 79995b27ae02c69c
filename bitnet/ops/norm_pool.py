"""Batch norm in training mode, an optional tanh, and a max pool whose windows tile the input, as
one autograd op (what ``nn.Sequential`` runs for BatchNorm2d -> [Tanh ->] MaxPool2d).

    y = max_pool(batch_norm(x))                 (act=None)
    y = tanh(max_pool(batch_norm(x)))           (act="tanh"; = max_pool(tanh(batch_norm(x))))

tanh is increasing, so it commutes with the max: applied after the pool it runs on a quarter of the
values (2x2 windows), and the backward needs 1 - y^2 only at the pooled positions. Values: NumPy's
float32 tanh is non-decreasing (checked over every float32 in [0, 10]; it is odd and 1 beyond), so
tanh(max z) = max tanh(z) exactly. The gradient goes to the maximum of the batch-normed z; the
unfused order picks the first maximum of tanh(z), which differs where two values of a window that
differ in z round to the same tanh (close to +-1): there the fused op follows the exact (real
number) derivative, whose maximum is that of z.

Forward: batch statistics (``kernels.batchnorm.channel_stats``), the running averages updated as
``batch_norm`` does, then one pass that normalizes and pools (``kernels.bn_pool``): the normalized
map is never written. Backward: tanh's gradient on the pooled values, then batch norm's backward
on the sparse gradient (``kernels.bn_pool``; its sums run over the pooled positions, see there
for the rounding).
"""
from __future__ import annotations

import numpy as np

from bitnet.kernels import batchnorm as KB
from bitnet.kernels import bn_pool as K
from bitnet.kernels import activations as KA
from bitnet.ops import workspace as W
from bitnet.ops.elementwise import _fused, _unary
from bitnet.ops.norm import update_running
from bitnet.tensor import Function, Tensor


class BatchNormMaxPool(Function):
    float_inputs = "batch_norm_max_pool"  # integer / bool inputs computed in float32 (bitnet.ops.dtypes)

    def forward(self, x, gamma, beta, eps=1e-5, running_mean=None, running_var=None, momentum=0.1,
                kernel=(2, 2), act=None):
        x = np.ascontiguousarray(x)
        n_img, channels, height, width = x.shape
        mean = np.empty(channels, np.float64)
        invstd = np.empty(channels, np.float64)
        KB.channel_stats(x.reshape(n_img, channels, height * width), eps, mean, invstd)
        update_running(running_mean, running_var, mean, invstd, eps, momentum, n_img * height * width)
        kh, kw = kernel
        out = W.empty((n_img, channels, height // kh, width // kw), x.dtype)
        self.argmax = W.empty(out.shape, np.int32)
        K.normalize_max_pool(x, mean, invstd, gamma, beta, kh, kw, out, self.argmax)
        self.x, self.gamma, self.mean, self.invstd = x, gamma, mean, invstd
        self.y = _unary(np.tanh, out) if act == "tanh" else None
        return out if self.y is None else self.y

    def backward(self, g):
        g = np.ascontiguousarray(g)
        if self.y is not None:
            g = _fused(KA.tanh_backward, g, self.y)
        gx = W.empty(self.x.shape, g.dtype)
        gg = np.empty(self.gamma.shape, np.float64)
        gb = np.empty(self.gamma.shape, np.float64)
        K.batch_norm_max_pool_backward(g, self.argmax, self.x, self.mean, self.invstd, self.gamma, gx, gg, gb)
        return gx, gg.astype(g.dtype), gb.astype(g.dtype)


ACTIVATIONS = (None, "tanh")


def batch_norm_max_pool(x, running_mean, running_var, weight=None, bias=None, momentum=0.1, eps=1e-5,
                        kernel=(2, 2), act=None) -> Tensor:
    """``max_pool2d(act(batch_norm(x, training=True)), kernel)`` for x (N, C, H, W) whose height and
    width the window divides or not (the remainder is dropped, as the pool does), as one op; see the
    module docstring. Arguments as for ``batch_norm``; ``act`` None or "tanh"."""
    if act not in ACTIVATIONS:
        raise ValueError(f"batch_norm_max_pool: act must be one of {ACTIVATIONS}, got {act!r}")
    c = x.shape[1]
    device = x.device if isinstance(x, Tensor) else None
    weight = Tensor(np.ones(c, x.dtype), device=device) if weight is None else weight
    bias = Tensor(np.zeros(c, x.dtype), device=device) if bias is None else bias
    return BatchNormMaxPool.apply(x, weight, bias, eps=eps, running_mean=running_mean, running_var=running_var,
                                  momentum=momentum, kernel=tuple(kernel), act=act)
