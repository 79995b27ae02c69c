"""Adam and AdamW: adaptive moment estimation with bias correction (optionally AMSGrad).

The update is PyTorch's ``torch.optim.Adam`` / ``AdamW``; for a parameter ``p`` with gradient
``g`` at step ``t = 1, 2, ...`` (counted per parameter)::

    p   = p * (1 - lr * weight_decay)           AdamW: decoupled weight decay
    g   = g + weight_decay * p                  Adam:  L2 penalty added to the gradient
    m   = beta1 * m + (1 - beta1) * g           (m, v start at 0)
    v   = beta2 * v + (1 - beta2) * g**2
    vm  = max(vm, v)                            (amsgrad only; vm starts at 0)
    den = sqrt(vm or v) / sqrt(1 - beta2**t) + eps
    p   = p - lr / (1 - beta1**t) * m / den

State per parameter: ``step`` (int), ``exp_avg`` (m), ``exp_avg_sq`` (v) and, with amsgrad,
``max_exp_avg_sq`` (vm). ``AdamW`` is ``Adam`` with ``decoupled_weight_decay=True`` and a
default weight decay of 1e-2.

On "cuda" the state is created on the device and the step is one CUDA C kernel launch
(``bitnet.kernels.cuda_adam``): the fused CPU kernel's operations in the same order, each rounded, so
both devices agree bit for bit.
"""
from __future__ import annotations

import math

import numpy as np

from bitnet.gpu.arrays import array_module
from bitnet.gpu.raw_kernels import blocks_for, c_type, launch
from bitnet.kernels import cuda_adam as KA
from bitnet.kernels.optim import adam_update
from bitnet.optim._checks import check_betas, check_number
from bitnet.optim.optimizer import Optimizer

__all__ = ["Adam", "AdamW"]


class Adam(Optimizer):
    """Adam(params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0, amsgrad=False,
    decoupled_weight_decay=False)."""

    state_spec = {"step": "count", "exp_avg": "array", "exp_avg_sq": "nonnegative", "max_exp_avg_sq": "nonnegative"}
    required_state = ("step", "exp_avg", "exp_avg_sq")
    elementwise_update = True  # on a device: one update per group (bitnet.optim.flat)

    def __init__(self, params, lr: float = 1e-3, betas=(0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.0, amsgrad: bool = False,
                 decoupled_weight_decay: bool = False):
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay,
                                      amsgrad=amsgrad,
                                      decoupled_weight_decay=decoupled_weight_decay))

    def _check_group(self, group: dict) -> None:
        super()._check_group(group)
        group["betas"] = check_betas(self._name, group["betas"])
        group["eps"] = check_number(self._name, "eps", group["eps"], low=0.0)
        group["weight_decay"] = check_number(self._name, "weight_decay", group["weight_decay"],
                                             low=0.0)
        group["amsgrad"] = bool(group["amsgrad"])
        group["decoupled_weight_decay"] = bool(group["decoupled_weight_decay"])

    def _update(self, data: np.ndarray, grad: np.ndarray, state: dict, group: dict) -> None:
        lr, (beta1, beta2), wd = group["lr"], group["betas"], group["weight_decay"]
        xp = array_module(data)  # NumPy, or the device's array module for a parameter on "cuda"
        if not state:
            state["step"] = 0
            state["exp_avg"] = xp.zeros(data.shape, data.dtype)
            state["exp_avg_sq"] = xp.zeros(data.shape, data.dtype)
            if group["amsgrad"]:
                state["max_exp_avg_sq"] = xp.zeros(data.shape, data.dtype)
        state["step"] = t = int(state["step"]) + 1
        if wd != 0 and group["decoupled_weight_decay"]:
            data *= 1 - lr * wd
        l2 = 0.0 if group["decoupled_weight_decay"] else wd
        if group["amsgrad"] and "max_exp_avg_sq" not in state:
            state["max_exp_avg_sq"] = xp.zeros(data.shape, data.dtype)
        dt = data.dtype.type
        # The kernels update flat memory in place: the state arrays are kept C-contiguous (a
        # non-contiguous one, e.g. loaded by hand, is replaced by a contiguous copy) and a
        # non-contiguous parameter is updated through a contiguous copy written back.
        for key in ("exp_avg", "exp_avg_sq", "max_exp_avg_sq"):
            if key in state and not state[key].flags.c_contiguous:
                state[key] = xp.ascontiguousarray(state[key])
        m, v = state["exp_avg"], state["exp_avg_sq"]
        vmax = state["max_exp_avg_sq"] if group["amsgrad"] else m  # not read without amsgrad
        p = data if data.flags.c_contiguous else xp.ascontiguousarray(data)
        g = xp.ascontiguousarray(grad, dtype=data.dtype)
        scalars = (dt(beta1), dt(beta2), dt(1 - beta1), dt(1 - beta2), dt(l2), dt(lr / (1 - beta1 ** t)),
                   dt(math.sqrt(1 - beta2 ** t)), dt(group["eps"]))
        if xp is np:
            adam_update(p.reshape(-1), g.reshape(-1), m.reshape(-1), v.reshape(-1), vmax.reshape(-1),
                        bool(group["amsgrad"]), *scalars)
        else:  # one kernel launch (bitnet.kernels.cuda_adam), the same operations
            launch(KA, "adam_step", blocks_for(p.size, KA.THREADS), KA.THREADS,
                   (p, g, m, v, vmax, p.size, int(group["amsgrad"])) + tuple(float(s) for s in scalars),
                   dict(AD_T=c_type(p.dtype)))
        if p is not data:
            data[...] = p

class AdamW(Adam):
    """AdamW(params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2, amsgrad=False):
    Adam with decoupled weight decay ``p *= 1 - lr * weight_decay`` before the Adam step."""

    def __init__(self, params, lr: float = 1e-3, betas=(0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 1e-2, amsgrad: bool = False):
        super().__init__(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay,
                         amsgrad=amsgrad, decoupled_weight_decay=True)
