"""Stochastic gradient descent with momentum, dampening, Nesterov and L2 weight decay.

The update is PyTorch's ``torch.optim.SGD``, for a parameter ``p`` with gradient ``g``::

    g  = g + weight_decay * p                      (if weight_decay != 0)
    if momentum != 0:
        b = g                                      (first step of this parameter)
        b = momentum * b + (1 - dampening) * g     (later steps)
        g = g + momentum * b   if nesterov  else  b
    p  = p - lr * g

The momentum buffer ``b`` is kept in ``optimizer.state[p]["momentum_buffer"]``. The update uses only
array operators, so it runs as written on "cuda" too (device arrays, the buffer on the device), with
the same operations in the same order and dtype as on the CPU.
"""
from __future__ import annotations

import numpy as np

from bitnet.gpu.arrays import array_module
from bitnet.optim._checks import check_number
from bitnet.optim.optimizer import Optimizer

__all__ = ["SGD"]


class SGD(Optimizer):
    """SGD(params, lr, momentum=0, dampening=0, weight_decay=0, nesterov=False)."""

    state_spec = {"momentum_buffer": "array"}
    required_state = ()
    elementwise_update = True  # on a device: one update per group (bitnet.optim.flat)

    def __init__(self, params, lr: float, momentum: float = 0.0, dampening: float = 0.0,
                 weight_decay: float = 0.0, nesterov: bool = False):
        super().__init__(params, dict(lr=lr, momentum=momentum, dampening=dampening,
                                      weight_decay=weight_decay, nesterov=nesterov))

    def _check_group(self, group: dict) -> None:
        super()._check_group(group)
        group["momentum"] = check_number("SGD", "momentum", group["momentum"], low=0.0)
        group["dampening"] = check_number("SGD", "dampening", group["dampening"])
        group["weight_decay"] = check_number("SGD", "weight_decay", group["weight_decay"],
                                             low=0.0)
        group["nesterov"] = bool(group["nesterov"])
        if group["nesterov"] and (group["momentum"] <= 0 or group["dampening"] != 0):
            raise ValueError("SGD: nesterov=True needs momentum > 0 and dampening = 0, got "
                             f"momentum={group['momentum']!r}, dampening={group['dampening']!r}")

    def _update(self, data: np.ndarray, grad: np.ndarray, state: dict, group: dict) -> None:
        lr, momentum = group["lr"], group["momentum"]
        if group["weight_decay"] != 0:
            grad = grad + group["weight_decay"] * data
        if momentum != 0:
            buf = state.get("momentum_buffer")
            if buf is None:
                # a 0-d array, not a NumPy scalar, for a 0-d parameter (grad + wd * data is a scalar
                # there), so that the in-place updates below reach the state
                buf = state["momentum_buffer"] = grad.copy() if grad.ndim else array_module(data).array(grad)
            else:
                buf *= momentum
                buf += (1 - group["dampening"]) * grad
            grad = grad + momentum * buf if group["nesterov"] else buf
        data -= lr * grad
