"""Bop, the binary optimizer: flip a binary weight when its gradient momentum is strong enough.

Helwegen, Widdicombe, Geiger, Liu, Cheng and Nusselder, "Latent Weights Do Not Exist: Rethinking
Binarized Neural Network Optimization", NeurIPS 2019 (arXiv:1906.02107). Instead of treating the
latent float weights as real weights, Bop keeps every binary weight at exactly -1 or +1 and flips
it when an exponential moving average of its gradient passes a threshold and points the same way
as the weight (so that gradient descent would push it through zero). For a parameter ``w`` with
gradient ``g`` (``sign(0) = +1``; ``m`` starts at 0)::

    m = (1 - gamma) * m + gamma * g
    w = -sign(w)   where |m| > threshold and sign(m) == sign(w)        (flip)
    w =  sign(w)   elsewhere                                           (keep)

``gamma`` (the adaptivity rate) sets how far back the average looks, ``threshold`` how strong it
must be; the comparison is strict, so ``|m| == threshold`` does not flip. After a step the
parameter holds exactly +-1 (latent values from before the first step are read through their
sign). There is no learning rate. The paper's defaults are ``threshold=1e-8, gamma=1e-4``.

Bop is meant for binary kernels only (see ``bitnet.optim.routing``: ``bop_and_adam`` sends the
binary kernels to Bop and everything else to Adam). State per parameter: ``step`` (int) and
``exp_avg`` (``m``), in the parameter's dtype, on the parameter's device: the update is written once with
the parameter's array module (NumPy, or CuPy / its emulation on "cuda") and gives the same bits on both.
"""
from __future__ import annotations

import numpy as np

from bitnet.gpu.arrays import array_module
from bitnet.optim._checks import check_number
from bitnet.optim.optimizer import Optimizer

__all__ = ["Bop"]


class Bop(Optimizer):
    """Bop(params, threshold=1e-8, gamma=1e-4): flip binary weights on gradient momentum.

    ``threshold >= 0``, ``0 < gamma <= 1``; see the module docstring for the update."""

    state_spec = {"step": "count", "exp_avg": "array"}
    required_state = ("step", "exp_avg")
    elementwise_update = True  # on a device: one update per group (bitnet.optim.flat)

    def __init__(self, params, threshold: float = 1e-8, gamma: float = 1e-4):
        super().__init__(params, dict(threshold=threshold, gamma=gamma))

    def _check_group(self, group: dict) -> None:
        super()._check_group(group)
        group["threshold"] = check_number(self._name, "threshold", group["threshold"], low=0.0)
        group["gamma"] = check_number(self._name, "gamma (adaptivity rate)", group["gamma"],
                                      low=0.0, low_open=True, high=1.0)

    def _update(self, data: np.ndarray, grad: np.ndarray, state: dict, group: dict) -> None:
        xp = array_module(data)
        if not state:
            state["step"] = 0
            state["exp_avg"] = xp.zeros_like(data)
        state["step"] = int(state["step"]) + 1
        dt = data.dtype.type
        gamma, threshold = dt(group["gamma"]), dt(group["threshold"])
        m = state["exp_avg"]
        m[...] = (dt(1) - gamma) * m + gamma * grad
        # +-1 in data's dtype (astype: whatever dtype an array module gives where() of two scalars)
        w_sign = xp.where(data >= 0, dt(1), dt(-1)).astype(data.dtype, copy=False)
        m_sign = xp.where(m >= 0, dt(1), dt(-1)).astype(data.dtype, copy=False)
        flip = (xp.abs(m) > threshold) & (m_sign == w_sign)
        data[...] = xp.where(flip, -w_sign, w_sign)
