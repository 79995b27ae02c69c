"""Elementwise primitives and matmul, each forward with its backward right below it.

Binary operations broadcast like NumPy; their backward sums the gradient over the broadcast axes
(``unbroadcast``) so every input receives a gradient of its own shape. Python scalars adopt the
dtype of the tensor they meet (float32 stays float32).
"""
from __future__ import annotations

import numpy as np

from bitnet.gpu.arrays import array_module, is_device_array
from bitnet.kernels import activations as K
from bitnet.kernels.gemm import matmul as gemm
from bitnet.kernels.threads import parallel_binary, parallel_ufunc
from bitnet.ops import workspace as W
from bitnet.ops.dtypes import float_operand, float_operands
from bitnet.tensor import Function, Tensor


def unbroadcast(grad: np.ndarray, shape: tuple) -> np.ndarray:
    """Sum ``grad`` down to ``shape``: the adjoint of NumPy broadcasting ``shape -> grad.shape``."""
    if grad.shape == shape:
        return grad
    lead = grad.ndim - len(shape)
    if lead:
        grad = grad.sum(axis=tuple(range(lead)))
    axes = tuple(i for i, n in enumerate(shape) if n == 1 and grad.shape[i] != 1)
    if axes:
        grad = grad.sum(axis=axes, keepdims=True)
    return grad


def lift(x, like: Tensor) -> Tensor:
    """Wrap a scalar / array operand as a constant tensor with ``like``'s float dtype."""
    if isinstance(x, Tensor):
        return x
    dtype = like.dtype if like.dtype.kind == "f" else None
    if is_device_array(x):  # a raw device array stays on its device
        return Tensor(x if dtype is None else x.astype(dtype, copy=False))
    return Tensor(np.asarray(x, dtype=dtype))


def _fused(kernel, g, y):
    """Run a fused backward kernel on flat views of C-contiguous g, y and out. (``out`` is allocated
    C-contiguous: ``np.empty_like`` of a transposed y would keep its layout, and ``out.reshape(-1)``
    would then be a copy that the kernel fills and nobody reads.)"""
    g = np.asarray(g, dtype=y.dtype, order="C")  # (np.ascontiguousarray would make 0-d arrays 1-d)
    y = np.asarray(y, order="C")
    out = W.empty(y.shape, y.dtype)
    kernel(g.reshape(-1), y.reshape(-1), out.reshape(-1))
    return out


def _unary(ufunc, a):
    """``ufunc(a)`` of a float function (exp, tanh) split across threads (``parallel_ufunc``), in a
    recycled array; ``a`` follows the float ops' dtype policy (``bitnet.ops.dtypes``: integers are
    computed in float32), also where it is called without a ``Function`` (``bitnet.packed.plan``)."""
    a = float_operand(a, ufunc.__name__)
    return parallel_ufunc(ufunc, a, W.empty(a.shape, a.dtype))


def _binary_out(ufunc, a, b):
    """``ufunc(a, b)``, an array result in a recycled array (``bitnet.ops.workspace``); split across
    threads for large operands of one shape (``parallel_binary``: a residual connection's add)."""
    if a.ndim == 0 and b.ndim == 0:
        return ufunc(a, b)
    shape = a.shape if a.shape == b.shape else np.broadcast_shapes(a.shape, b.shape)  # (the latter costs ~1.5 us)
    return parallel_binary(ufunc, a, b, W.empty(shape, np.result_type(a, b)))


class Add(Function):
    def forward(self, a, b):
        self.shapes = a.shape, b.shape
        return _binary_out(np.add, a, b)

    def backward(self, g):
        return unbroadcast(g, self.shapes[0]), unbroadcast(g, self.shapes[1])


class Sub(Function):
    def forward(self, a, b):
        self.shapes = a.shape, b.shape
        return a - b

    def backward(self, g):
        return unbroadcast(g, self.shapes[0]), unbroadcast(-g, self.shapes[1])


class Mul(Function):
    def forward(self, a, b):
        self.a, self.b = a, b
        return a * b

    def backward(self, g):
        ga = unbroadcast(g * self.b, self.a.shape) if self.needs_grad[0] else None
        gb = unbroadcast(g * self.a, self.b.shape) if self.needs_grad[1] else None
        return ga, gb


class Div(Function):
    def forward(self, a, b):
        self.a, self.b = a, b
        return a / b

    def backward(self, g):
        ga = unbroadcast(g / self.b, self.a.shape) if self.needs_grad[0] else None
        gb = unbroadcast(-g * self.a / (self.b * self.b), self.b.shape) if self.needs_grad[1] else None
        return ga, gb


class Neg(Function):
    devices = ("cpu", "cuda")  # plain array math

    def forward(self, a):
        return -a

    def backward(self, g):
        return -g


class Pow(Function):
    """x ** p for a constant exponent p: d/dx = p * x ** (p - 1), and d/dx = 0 where p = 0 (x ** 0 is
    the constant 1, also at x = 0 where the formula would give 0 * inf = NaN; PyTorch gives 0)."""

    def forward(self, a, exponent):
        if a.dtype.kind == "f":
            exponent = np.asarray(exponent, dtype=a.dtype)
        self.a, self.p = a, exponent
        return a ** exponent

    def backward(self, g):
        p = np.asarray(self.p, dtype=self.a.dtype)
        zero = p == 0
        if not zero.any():
            return g * p * self.a ** (p - 1)
        if zero.all():
            return np.zeros(np.broadcast_shapes(g.shape, p.shape), g.dtype)
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(zero, np.zeros((), g.dtype), g * p * self.a ** (p - 1))


class Exp(Function):
    float_inputs = "exp"  # integer / bool inputs computed in float32 (bitnet.ops.dtypes)

    def forward(self, a):
        self.out = _unary(np.exp, a)
        return self.out

    def backward(self, g):
        return g * self.out


class Log(Function):
    float_inputs = "log"

    def forward(self, a):
        self.a = a
        return np.log(a)

    def backward(self, g):
        return g / self.a


class Tanh(Function):
    """tanh(x); d/dx = 1 - tanh(x)^2."""

    float_inputs = "tanh"

    def forward(self, a):
        self.out = _unary(np.tanh, a)
        return self.out

    def backward(self, g):
        return _fused(K.tanh_backward, g, self.out)


class Sigmoid(Function):
    """1 / (1 + exp(-x)), computed without overflow; d/dx = s (1 - s)."""

    float_inputs = "sigmoid"

    def forward(self, a):
        e = np.exp(-np.abs(a))
        self.out = np.where(a >= 0, 1 / (1 + e), e / (1 + e)).astype(a.dtype, copy=False)
        return self.out

    def backward(self, g):
        return _fused(K.sigmoid_backward, g, self.out)


class ReLU(Function):
    """max(x, 0); gradient 1 where x > 0, else 0."""

    devices = ("cpu", "cuda")  # plain array math

    def forward(self, a):
        self.mask = a > 0
        return a * self.mask

    def backward(self, g):
        return g * self.mask


class Clamp(Function):
    """min(max(x, lo), hi). Gradient passes where lo <= x <= hi (``inclusive``, as for clip) or
    lo < x < hi (as for hardtanh); ``None`` bounds are open."""

    def forward(self, a, lo=None, hi=None, inclusive=True):
        lo_ = -np.inf if lo is None else lo
        hi_ = np.inf if hi is None else hi
        self.mask = (a >= lo_) & (a <= hi_) if inclusive else (a > lo_) & (a < hi_)
        return np.clip(a, lo_, hi_).astype(a.dtype, copy=False)

    def backward(self, g):
        return g * self.mask


class Where(Function):
    """where(cond, a, b) with a constant boolean condition."""

    def forward(self, a, b, cond=None):
        self.cond, self.shapes = cond, (a.shape, b.shape)
        return np.where(cond, a, b)

    def backward(self, g):
        zero = np.zeros((), g.dtype)
        return (unbroadcast(np.where(self.cond, g, zero), self.shapes[0]),
                unbroadcast(np.where(self.cond, zero, g), self.shapes[1]))


def _matmul(a, b):
    """2-D float products go through the threaded GEMM; everything else through np.matmul (device
    arrays: their module's matmul, cuBLAS on CuPy). The operands follow the float ops' dtype policy
    (``bitnet.ops.dtypes``), also where this is called without a ``Function`` (``F.linear`` without
    a graph, ``bitnet.packed.plan``)."""
    a, b = float_operands((a, b), "matmul")
    if is_device_array(a):
        return array_module(a).matmul(a, b)
    if a.ndim == 2 and b.ndim == 2 and a.dtype == b.dtype and a.dtype.kind == "f":
        return gemm(a, b)
    return a @ b


class MatMul(Function):
    """a @ b with NumPy's rules (1-D operands, batched stacks with broadcasting).

    d/da = g @ b^T, d/db = a^T @ g, with 1-D operands treated as a row / column and the batch
    axes summed back to each operand's shape. The same code on the GPU (``_matmul``: cuBLAS there)."""

    devices = ("cpu", "cuda")
    float_inputs = "matmul"  # integer / bool inputs computed in float32 (bitnet.ops.dtypes)

    def forward(self, a, b):
        self.a, self.b = a, b
        return _matmul(a, b)

    def backward(self, g):
        a, b = self.a, self.b
        a2 = a[None, :] if a.ndim == 1 else a
        b2 = b[:, None] if b.ndim == 1 else b
        g2 = g
        if b.ndim == 1:
            g2 = g2[..., None]
        if a.ndim == 1:
            g2 = g2[..., None, :]
        ga = gb = None
        if self.needs_grad[0]:
            ga = _matmul(g2, b2.swapaxes(-1, -2))
            ga = unbroadcast(ga, a2.shape).reshape(a.shape)
        if self.needs_grad[1]:
            gb = _matmul(a2.swapaxes(-1, -2), g2)
            gb = unbroadcast(gb, b2.shape).reshape(b.shape)
        return ga, gb


# -- functional front ends ----------------------------------------------------------------------

def _binary(cls, a, b):
    """Apply a binary Function with either operand possibly a scalar / array constant."""
    a = a if isinstance(a, Tensor) else lift(a, b)
    return cls.apply(a, lift(b, a))


def add(a, b):
    return _binary(Add, a, b)


def sub(a, b):
    return _binary(Sub, a, b)


def mul(a, b):
    return _binary(Mul, a, b)


def div(a, b):
    return _binary(Div, a, b)


def neg(a):
    return Neg.apply(a)


def pow(a, exponent):  # noqa: A001 - mirrors the operator
    if isinstance(exponent, Tensor):
        raise TypeError("pow: the exponent must be a Python or NumPy number, got a Tensor; "
                        "use exp(b * log(a)) for a tensor exponent")
    return Pow.apply(a, exponent=exponent)


def exp(a):
    return Exp.apply(a)


def log(a):
    return Log.apply(a)


def tanh(a):
    return Tanh.apply(a)


def sigmoid(a):
    return Sigmoid.apply(a)


def relu(a):
    return ReLU.apply(a)


def hardtanh(a, min_val=-1.0, max_val=1.0):
    """Clamp to [min_val, max_val]; gradient 1 strictly inside, 0 on and beyond the bounds."""
    return Clamp.apply(a, lo=min_val, hi=max_val, inclusive=False)


def clip(a, min_val=None, max_val=None):
    """Clamp to [min_val, max_val]; gradient 1 inside including the bounds."""
    return Clamp.apply(a, lo=min_val, hi=max_val, inclusive=True)


def where(cond, a, b):
    """Elementwise ``a if cond else b``; ``cond`` is a constant boolean array."""
    cond = cond.data if isinstance(cond, Tensor) else cond
    cond = cond.astype(bool, copy=False) if is_device_array(cond) else np.asarray(cond, dtype=bool)
    a = a if isinstance(a, Tensor) else lift(a, b)
    return Where.apply(a, lift(b, a), cond=cond)


def matmul(a, b):
    if a.ndim == 0 or b.ndim == 0:
        raise ValueError(f"matmul: operands must have at least 1 dimension, got shapes "
                         f"{a.shape} and {b.shape}; use * for scalars")
    if a.shape[-1] != b.shape[-2 if b.ndim > 1 else 0]:
        raise ValueError(f"matmul: inner dimensions differ: {a.shape} @ {b.shape}")
    return MatMul.apply(a, b)
