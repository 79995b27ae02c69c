"""The quantizers of ``bitnet.quantizers`` on "cuda": the same forward and straight-through backward,
written with the device array module (CuPy, or its emulation) instead of the CPU's Numba passes.

Sign convention, as on the CPU: ``sign(x) = -1 where x < 0, else +1`` (zero, -0.0 and NaN give +1).
Every output keeps x's float dtype (integer / bool inputs become float32). The math per quantizer:

- ste_sign:      forward sign(x); backward g where |x| <= clip_value (boundary included, NaN gives 0),
                 0 elsewhere; g everywhere with clip_value None;
- approx_sign:   forward sign(x); backward g (2 - 2|x|) where |x| <= 1, else 0;
- swish_sign:    forward sign(x); backward g beta (2 - beta x tanh(beta x / 2)) / (1 + cosh(beta x)),
                 0 where cosh overflows;
- ste_heaviside: forward 1 where x >= 0 (NaN too), else 0; backward as ste_sign's;
- magnitude_aware_sign: forward alpha[o] sign(w), alpha = mean |w| over all axes but 0; backward
                 ste_sign's gradient times alpha (alpha under stop-gradient);
- dorefa_activation: forward round(clip(x, 0, 1) (2^k - 1)) / (2^k - 1) (round half to even);
                 backward g where 0 <= x <= 1, else 0;
- dorefa_weight: forward 2 q(tanh(w) / (2 m) + 1/2) - 1, m = max |tanh(w)| (1 where that is 0);
                 backward g (1 - tanh(w)^2) / m.

sign and ste_sign's backward (the binary layers') are one CUDA C kernel each for float32 / float64
(``bitnet.kernels.cuda_sign``; NumPy functions on the emulation), the others array operations.
Selects and single roundings are exact, so sign, the clip windows and the DoReFa roundings match
the CPU bit for bit; tanh / cosh (swish_sign's backward, dorefa_weight) and the mean of
magnitude_aware_sign may differ from NumPy's in the last bits on a real GPU. No host sync: the
CPU's "every |x| within the clip" shortcut (a reduction read on the host) is not taken, the select
gives the same values; dorefa_weight's ``m == 0`` test stays on the device.
"""
from __future__ import annotations

import numpy as np

from bitnet import quantizers as Q
from bitnet.gpu.arrays import array_module
from bitnet.gpu.dispatch import implements
from bitnet.gpu.raw_kernels import blocks_for, c_type, launch, takes
from bitnet.kernels import cuda_sign as KS


def _select(xp, cond, a, b, dtype):
    """``where(cond, a, b)`` in ``dtype`` (a and b scalars or arrays of that dtype; the cast guards
    against an array module that promotes two scalars differently)."""
    out = xp.where(cond, a, b)
    return out if out.dtype == dtype else out.astype(dtype)


def _own_kernels(*arrays):
    """Whether ``bitnet.kernels.cuda_sign`` takes these arrays (float32 / float64; same shape)."""
    return all(takes(a.dtype) for a in arrays) and len({a.shape for a in arrays}) == 1


def sign(x):
    """-1 where x < 0, +1 elsewhere (zero and NaN included), in x's dtype; one kernel launch
    (``bitnet.kernels.cuda_sign``) for float32 / float64."""
    xp, one = array_module(x), x.dtype.type(1)
    if not _own_kernels(x):
        return _select(xp, x < 0, -one, one, x.dtype)
    x = xp.ascontiguousarray(x)
    y = xp.empty(x.shape, x.dtype)
    launch(KS, "sign_forward", blocks_for(x.size, KS.THREADS), KS.THREADS, (x, x.size, y), dict(SG_X=c_type(x.dtype)))
    return y


def pass_within(g, x, clip_value):
    """g where |x| <= clip_value (in x's dtype; NaN x gives 0), 0 elsewhere; g if clip_value is None;
    one kernel launch for float32 / float64."""
    if clip_value is None:
        return g
    xp = array_module(x)
    if not _own_kernels(g, x):
        return _select(xp, xp.abs(x) <= x.dtype.type(clip_value), g, g.dtype.type(0), g.dtype)
    g, x = xp.ascontiguousarray(g), xp.ascontiguousarray(x)
    dx = xp.empty(g.shape, g.dtype)
    launch(KS, "ste_backward", blocks_for(g.size, KS.THREADS), KS.THREADS, (g, x, g.size, float(clip_value), dx),
           dict(SG_X=c_type(x.dtype), SG_G=c_type(g.dtype)))
    return dx


@implements(Q._SteSignFn)
class SteSignGPU(Q._SteSignFn):
    def forward(self, x, clip_value=1.0):
        self.x, self.clip_value = Q._float(x), clip_value
        return sign(self.x)

    def backward(self, g):
        self.owned_grads = () if self.clip_value is None else (0,)  # g itself, else a new array
        return pass_within(g, self.x, self.clip_value)


@implements(Q._ApproxSignFn)
class ApproxSignGPU(Q._ApproxSignFn):
    def forward(self, x):
        self.x = Q._float(x)
        return sign(self.x)

    def backward(self, g):
        xp = array_module(g)
        a = xp.abs(self.x)
        return _select(xp, a <= 1, g * (2 - 2 * a), g.dtype.type(0), g.dtype)


@implements(Q._SwishSignFn)
class SwishSignGPU(Q._SwishSignFn):
    def forward(self, x, beta=5.0):
        self.x, self.beta = Q._float(x), beta
        return sign(self.x)

    def backward(self, g):
        xp = array_module(g)
        b = self.x.dtype.type(self.beta)
        with np.errstate(over="ignore", invalid="ignore"):  # (the emulation's NumPy; CuPy does not warn)
            y = b * self.x
            den = 1 + xp.cosh(y)
            d = b * (2 - y * xp.tanh(y / 2)) / den
        return _select(xp, xp.isinf(den), g.dtype.type(0), g * d, g.dtype)


@implements(Q._SteHeavisideFn)
class SteHeavisideGPU(Q._SteHeavisideFn):
    def forward(self, x, clip_value=1.0):
        self.x, self.clip_value = Q._float(x), clip_value
        t = self.x.dtype.type
        return _select(array_module(x), self.x < 0, t(0), t(1), self.x.dtype)

    def backward(self, g):
        return pass_within(g, self.x, self.clip_value)


@implements(Q._MagnitudeAwareSignFn)
class MagnitudeAwareSignGPU(Q._MagnitudeAwareSignFn):
    def forward(self, w, clip_value=1.0):
        xp = array_module(w)
        self.w, self.clip_value = Q._float(w), clip_value
        self.alpha = xp.mean(xp.abs(self.w), axis=tuple(range(1, self.w.ndim)), keepdims=True)
        return sign(self.w) * self.alpha

    def backward(self, g):
        return pass_within(g, self.w, self.clip_value) * self.alpha


def _round_levels(v, bits):
    """round(v (2^k - 1)) / (2^k - 1), round half to even (CuPy's round is rint for 0 decimals)."""
    n = v.dtype.type(2 ** bits - 1)
    return array_module(v).round(v * n) / n


@implements(Q._DoReFaActivationFn)
class DoReFaActivationGPU(Q._DoReFaActivationFn):
    def forward(self, x, bits):
        self.x = Q._float(x)
        return _round_levels(array_module(x).clip(self.x, 0, 1), bits)

    def backward(self, g):
        inside = (self.x >= 0) & (self.x <= 1)
        return _select(array_module(g), inside, g, g.dtype.type(0), g.dtype)


@implements(Q._DoReFaWeightFn)
class DoReFaWeightGPU(Q._DoReFaWeightFn):
    def forward(self, w, bits):
        xp = array_module(w)
        w = Q._float(w)
        one = w.dtype.type(1)
        self.t = xp.tanh(w)
        if self.t.size:
            m = xp.max(xp.abs(self.t))               # a 0-d device array: no host sync
            self.m = _select(xp, m == 0, one, m, w.dtype)
        else:
            self.m = one
        return 2 * _round_levels(self.t / (2 * self.m) + w.dtype.type(0.5), bits) - 1

    def backward(self, g):
        return g * (1 - self.t * self.t) / self.m
