"""Runs of layers inside ``nn.Sequential`` that run as one fused op in training.

Inside a ``Sequential`` the tensors between its layers are visible to nobody but the next layer
(and to forward hooks, so a layer with hooks is never fused), so a run of layers may be computed
by one op that gives the same result. ``fused_step(modules, i, x)`` returns ``(output, next index)``
when the layers from ``i`` on form such a run, else None. The runs:

- ``BatchNorm2d -> [Tanh ->] MaxPool2d`` with batch statistics (training, or no running stats) and
  windows that tile the input (stride = window, no padding): ``bitnet.ops.norm_pool``, which never
  writes the normalized map and runs tanh on the pooled values only. The values are those of the
  layers one by one (tanh up to one float32 ulp, see there); gradients up to float64 rounding of
  batch norm's sums, and for tanh the choice of the window's maximum among values that tanh rounds
  to the same number (see ``bitnet.ops.norm_pool``).

``Sequential.fuse = False`` (on an instance or the class) runs every layer on its own.
"""
from __future__ import annotations

import numpy as np

from bitnet.nn.layers import BatchNorm2d, MaxPool2d, Tanh
from bitnet.tensor import Tensor


def _plain(m) -> bool:
    return not m._forward_hooks


def _bn_pool(modules, i, x):
    bn = modules[i]
    if not (type(bn) is BatchNorm2d and _plain(bn) and isinstance(x, Tensor) and x.ndim == 4
            and x.shape[1] == bn.num_features and x.dtype in (np.float32, np.float64)
            and (bn.training or not bn.track_running_stats) and x.shape[0] * x.shape[2] * x.shape[3] > 1):
        return None
    j, act = i + 1, None
    if j < len(modules) and type(modules[j]) is Tanh and _plain(modules[j]):
        j, act = j + 1, "tanh"
    if j >= len(modules):
        return None
    pool = modules[j]
    from bitnet.kernels.bn_pool import tiles
    if not (type(pool) is MaxPool2d and _plain(pool) and tiles(x.shape, pool.kernel_size, pool.stride, pool.padding)):
        return None
    if pool.ceil_mode and (x.shape[2] % pool.kernel_size[0] or x.shape[3] % pool.kernel_size[1]):
        return None  # a partial window at the edge
    from bitnet.ops.norm_pool import batch_norm_max_pool
    y = batch_norm_max_pool(x, bn.running_mean, bn.running_var, bn.weight, bn.bias, momentum=bn._factor(),
                            eps=bn.eps, kernel=pool.kernel_size, act=act)
    return y, j + 1


RUNS = (_bn_pool,)


def fused_step(modules, i, x):
    """``(output, index of the next layer)`` if a fusable run starts at ``modules[i]``, else None."""
    for run in RUNS:
        step = run(modules, i, x)
        if step is not None:
            return step
    return None
