"""Elementwise primitives and matmul on "cuda" (``bitnet.ops.elementwise``'s classes, same math).

What differs from the CPU classes is only where they call NumPy functions, host workspaces or Numba
kernels; backward passes that are plain array math are inherited. Neg and ReLU need no class here:
they are marked ``devices = ("cpu", "cuda")``.

- Add, Sub, Mul, Div: ``a op b`` with NumPy's broadcasting; the result dtype is NumPy's
  ``np.result_type`` of the operands, as on the CPU, whatever CuPy's rule for NumPy scalars is
  (the operands are cast to it first, as NumPy's ufunc loops do).
- Pow: ``x ** p`` for a constant p; d/dx = p x^(p-1), 0 where p = 0.
- Exp, Log: d/dx = exp(x), 1/x.
- Tanh: y = tanh(x), d/dx = g (1 - y^2); Sigmoid: y = 1/(1 + e^-x) from e = exp(-|x|) (no overflow),
  d/dx = g y (1 - y): the backward passes one CUDA C kernel each (``bitnet.kernels.cuda_activations``)
  that rounds as the CPU's fused Numba kernels do (g cast to y's dtype; Numba's float64 steps).
- Clamp: min(max(x, lo), hi), gradient passed where lo <= x <= hi (inclusive) or lo < x < hi.
- Where: where(cond, a, b) for a constant mask (a host mask is copied to the device).
MatMul needs no class here either: ``bitnet.ops.elementwise.MatMul`` is written for both devices (its
``_matmul`` sends device arrays to their module's matmul, cuBLAS on CuPy).
"""
from __future__ import annotations

import numpy as np

from bitnet.gpu.arrays import array_module, is_device_array, xp
from bitnet.gpu.dispatch import implements
from bitnet.gpu.raw_kernels import blocks_for, c_type, launch
from bitnet.kernels import cuda_activations as KA
from bitnet.ops import elementwise as E


def _promote(a, b):
    """``(a, b)`` cast to ``np.result_type(a, b)`` (device arrays by dtype, NumPy scalars as NumPy sees
    them), so that CuPy computes in the dtype NumPy gives the CPU path."""
    dtype = np.result_type(a.dtype if is_device_array(a) else a, b.dtype if is_device_array(b) else b)
    return _cast(a, dtype), _cast(b, dtype)


def _cast(x, dtype):
    if x.dtype == dtype:
        return x
    return x.astype(dtype) if is_device_array(x) else dtype.type(x)


class _Binary:
    """Forward of the binary arithmetic ops on device arrays (one of them may be a NumPy scalar)."""

    op = None

    def forward(self, a, b):
        self.shapes = a.shape, b.shape  # (NumPy scalars have one too)
        return self.op(*_promote(a, b))


@implements(E.Add)
class Add(_Binary, E.Add):
    """y = a + b; d/da = g, d/db = g, each summed over its broadcast axes."""

    op = staticmethod(lambda a, b: a + b)


@implements(E.Sub)
class Sub(_Binary, E.Sub):
    """y = a - b; d/da = g, d/db = -g."""

    op = staticmethod(lambda a, b: a - b)


@implements(E.Mul)
class Mul(E.Mul):
    """y = a * b; d/da = g b, d/db = g a."""

    def forward(self, a, b):
        self.a, self.b = a, b  # the backward computes with the operands as they came, as on the CPU
        x, y = _promote(a, b)
        return x * y


@implements(E.Div)
class Div(E.Div):
    """y = a / b; d/da = g / b, d/db = -g a / b^2. (Integer operands divide to float64, as in NumPy.)"""

    def forward(self, a, b):
        self.a, self.b = a, b
        x, y = _promote(a, b)
        return x / y


@implements(E.Pow)
class Pow(E.Pow):
    """x ** p for a constant exponent p (a number, or an array moved to the device); d/dx = p x^(p-1),
    and 0 where p = 0 (also at x = 0)."""

    def forward(self, a, exponent):
        m = array_module(a)
        if is_device_array(exponent) or np.ndim(exponent) > 0:
            if not is_device_array(exponent):
                exponent = m.asarray(exponent)
            if a.dtype.kind == "f":
                exponent = exponent.astype(a.dtype, copy=False)
        elif a.dtype.kind == "f":
            exponent = a.dtype.type(exponent)
        elif isinstance(exponent, np.ndarray):  # a 0-d host array: CuPy takes NumPy scalars, not arrays
            exponent = exponent[()]
        self.a, self.p = a, exponent
        return a ** exponent

    def backward(self, g):
        m = array_module(g)
        p, a = self.p, self.a
        if not is_device_array(p):  # one number: decided on the host, no device sync
            if p == 0:
                return m.zeros(g.shape, g.dtype)
            return g * p * a ** (p - 1)
        with np.errstate(invalid="ignore", divide="ignore"):
            full = g * p * a ** (p - 1)
        return m.where(p == 0, m.zeros((), g.dtype), full)


@implements(E.Exp)
class Exp(E.Exp):
    """y = exp(x); d/dx = g y."""

    def forward(self, a):
        self.out = array_module(a).exp(a)
        return self.out


@implements(E.Log)
class Log(E.Log):
    """y = log(x); d/dx = g / x."""

    def forward(self, a):
        self.a = a
        return array_module(a).log(a)


@implements(E.Tanh)
class Tanh(E.Tanh):
    """y = tanh(x); d/dx = g (1 - y^2)."""

    def forward(self, a):
        self.out = array_module(a).tanh(a)
        return self.out

    def backward(self, g):
        return activation_backward("tanh_backward", g, self.out)


@implements(E.Sigmoid)
class Sigmoid(E.Sigmoid):
    """y = 1 / (1 + e^-x) as 1/(1+e) for x >= 0 and e/(1+e) below, e = exp(-|x|); d/dx = g y (1 - y)."""

    def forward(self, a):
        m = array_module(a)
        e = m.exp(-m.abs(a))
        self.out = m.where(a >= 0, 1 / (1 + e), e / (1 + e)).astype(a.dtype, copy=False)
        return self.out

    def backward(self, g):
        return activation_backward("sigmoid_backward", g, self.out)


def activation_backward(kernel, g, y):
    """tanh's g (1 - y^2) or sigmoid's g y (1 - y) for its output y, rounded as the CPU's Numba kernels
    round them (``bitnet.kernels.cuda_activations``: g cast to y's dtype, float64 steps, one rounding
    at the end); one kernel launch."""
    m = array_module(y)
    g = m.ascontiguousarray(g if g.dtype == y.dtype else g.astype(y.dtype))
    y = m.ascontiguousarray(y)
    dx = m.empty(y.shape, y.dtype)
    launch(KA, kernel, blocks_for(y.size, KA.THREADS), KA.THREADS, (g, y, y.size, dx), dict(AC_T=c_type(y.dtype)))
    return dx


def _bound(x, default, m):
    """A clamp bound as the CPU uses it: ``default`` (+-inf) for None, arrays moved to the device."""
    if x is None:
        return default
    if is_device_array(x) or not isinstance(x, np.ndarray):
        return x
    return m.asarray(x) if x.ndim > 0 else x[()]  # (CuPy takes NumPy scalars, not 0-d host arrays)


@implements(E.Clamp)
class Clamp(E.Clamp):
    """min(max(x, lo), hi); the gradient passes where lo <= x <= hi (``inclusive``) or lo < x < hi."""

    def forward(self, a, lo=None, hi=None, inclusive=True):
        m = array_module(a)
        lo_, hi_ = _bound(lo, -np.inf, m), _bound(hi, np.inf, m)
        self.mask = (a >= lo_) & (a <= hi_) if inclusive else (a > lo_) & (a < hi_)
        return m.clip(a, lo_, hi_).astype(a.dtype, copy=False)


@implements(E.Where)
class Where(E.Where):
    """y = where(cond, a, b); d/da = where(cond, g, 0), d/db = where(cond, 0, g), unbroadcast."""

    def forward(self, a, b, cond=None):
        m = xp()
        cond = cond if is_device_array(cond) else m.asarray(np.asarray(cond, dtype=bool))
        self.cond, self.shapes = cond, (a.shape, b.shape)
        return m.where(cond, a, b)

    def backward(self, g):
        m = array_module(g)
        zero = m.zeros((), g.dtype)
        return (E.unbroadcast(m.where(self.cond, g, zero), self.shapes[0]),
                E.unbroadcast(m.where(self.cond, zero, g), self.shapes[1]))
