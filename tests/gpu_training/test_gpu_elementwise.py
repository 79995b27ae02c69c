"""Elementwise ops, activations and matmul on "cuda" (bitnet/gpu/ops/elementwise.py) against the CPU.

On the emulation the GPU classes run NumPy's operations in the CPU's order, so the results are equal
to the bit and are asked to be (``EXACT``); that includes the float32 tanh / sigmoid backward passes,
whose GPU kernels round as the CPU's Numba kernels do. The one exception is MatMul: the CPU's 2-D
float products go through bitnet's threaded GEMM, which sums in another order than ``xp.matmul``;
for k <= 7 products the difference is <= k eps sum|a b|, ~1e-15 relative in float64 (rtol 1e-12) and
~1e-6 in float32 (rtol 1e-5).
On a real GPU, exp, log, tanh and pow are CUDA's, within a few ulps of NumPy's: those comparisons
take ``float_math``'s tolerances there.
"""
from __future__ import annotations

import zlib

import numpy as np
import pytest

import bitnet
import bitnet.functional as F
from bitnet.gpu import dispatch
from bitnet.gpu.arrays import emulate, is_device_array, to_host
from bitnet.ops import elementwise as E
from bitnet.tensor import Function
from tests.gpu_training.compare import assert_same_on_both, float_math

EXACT = dict(rtol=0, atol=0, exact=True)
GEMM = dict(rtol=1e-12, atol=1e-13)  # float64 products summed in another order (module docstring)

BROADCAST_SHAPES = [((3, 4), (3, 4)), ((3, 1, 4), (2, 1)), ((2, 1), (3, 1, 4)), ((2, 3, 4), (4,)),
                    ((1, 3, 1), (2, 1, 5)), ((5,), ()), ((), (2, 3))]


def _rng(*key):
    return np.random.default_rng(zlib.crc32(repr(key).encode()))


def test_every_elementwise_primitive_runs_on_cuda():
    for cls in vars(E).values():
        if isinstance(cls, type) and issubclass(cls, Function) and cls is not Function:
            impl = dispatch.implementation(cls)
            assert impl is cls or issubclass(impl, cls), cls


@pytest.mark.parametrize("op", ["add", "sub", "mul", "div"])
@pytest.mark.parametrize("shapes", BROADCAST_SHAPES, ids=str)
def test_binary_ops_broadcast_like_the_cpu(op, shapes):
    rng = _rng(op, shapes)
    a, b = rng.standard_normal(shapes[0]), rng.uniform(0.5, 2, shapes[1])
    assert_same_on_both(getattr(F, op), [a, b], **EXACT)


@pytest.mark.parametrize("op", ["__add__", "__sub__", "__mul__", "__truediv__",
                                "__radd__", "__rsub__", "__rmul__", "__rtruediv__"])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_operators_with_constants(op, dtype):
    a = _rng(op).uniform(0.5, 2, (3, 4)).astype(dtype)
    for const in (1.7, 2, np.float64(0.3), np.arange(1.0, 5.0)):  # a host array constant of ndim 1 is refused
        if np.ndim(const):
            assert_same_on_both(lambda t: getattr(t, op)(bitnet.Tensor(const, device=t.device)), [a], **EXACT)
        else:
            assert_same_on_both(lambda t: getattr(t, op)(const), [a], **EXACT)


@pytest.mark.parametrize("op", [F.add, F.sub, F.mul, F.div])
def test_result_dtypes_follow_numpy(op):
    """float32 with a 0-d float64 tensor gives float64, integers divide to float64, as on the CPU (the
    comparison checks the output dtypes), whatever CuPy's own rule for NumPy scalars."""
    a = np.arange(1, 7, dtype=np.float32).reshape(2, 3)
    assert_same_on_both(lambda t: op(t, bitnet.Tensor(np.array(0.1))), [a], **EXACT)
    ints = np.arange(1, 7, dtype=np.int32).reshape(2, 3)
    assert_same_on_both(lambda t: op(t, bitnet.Tensor(np.array(3, np.int64))), [ints], **EXACT)
    assert_same_on_both(lambda t, u: op(t, u), [ints, a], grad_of=[False, True], **EXACT)
    assert_same_on_both(lambda t: op(t, 2.5), [ints], **EXACT)


def test_neg_and_division_by_zero():
    a = np.array([[1.0, -2.0, 0.0], [np.nan, np.inf, -0.0]])
    assert_same_on_both(lambda t: -t, [a], **EXACT)
    with np.errstate(divide="ignore", invalid="ignore"):
        assert_same_on_both(lambda t, u: t / u, [a, np.array([0.0, -0.0, 2.0])], **EXACT)


@pytest.mark.parametrize("p", [2, 3, 0.5, -1.5, 1.0, 0, 0.0])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_pow(p, dtype):
    x = _rng(p).uniform(0.3, 2.0, (3, 5)).astype(dtype)
    assert_same_on_both(lambda t: t ** p, [x], **float_math(dtype))


def test_pow_zero_exponent_has_zero_gradient_at_zero_and_array_exponents():
    x = np.array([0.0, 1.5, -2.0, 0.0])
    with np.errstate(divide="ignore", invalid="ignore"):
        _, grads = assert_same_on_both(lambda t: t ** 0, [x], **EXACT)
        assert np.all(grads[0] == 0)
        assert_same_on_both(lambda t: F.pow(t, np.array([0.0, 2.0, 3.0, 1.0])), [x], **EXACT)
    ints = np.arange(-3, 4)
    assert_same_on_both(lambda t: t ** 2, [ints], **EXACT)
    assert_same_on_both(lambda t: F.pow(t, np.array(3)), [ints], **EXACT)
    with emulate():
        t = bitnet.Tensor(x, device="cuda")
        with pytest.raises(TypeError, match="exponent must be a Python or NumPy number"):
            t ** t


SPECIAL = np.array([-1e3, -30.0, -1.0, -0.0, 0.0, 1e-8, 0.5, 30.0, 1e3, np.nan, np.inf, -np.inf])


@pytest.mark.parametrize("fn", ["exp", "tanh", "sigmoid", "relu"])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_activations_match_cpu_to_the_bit(fn, dtype):
    """Odd shapes, extremes (overflowing exp, saturated tanh / sigmoid), +-0, NaN and +-inf: the same
    outputs and gradients (float32 included: the backward passes round as the Numba kernels do)."""
    x = np.concatenate([_rng(fn).standard_normal(51) * 4, SPECIAL]).reshape(7, 9).astype(dtype)
    with np.errstate(over="ignore", invalid="ignore"):
        assert_same_on_both(getattr(F, fn), [x], **(EXACT if fn == "relu" else float_math(dtype)))


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_tanh_and_sigmoid_backward_round_as_the_cpu_kernels(dtype):
    """Many float32 values, where rounding NumPy's way (all in float32) would differ in ~8% of them."""
    x = (_rng("round").standard_normal((301, 7)) * 2).astype(dtype)
    assert_same_on_both(F.tanh, [x], **float_math(dtype))
    assert_same_on_both(F.sigmoid, [x], **float_math(dtype))
    assert_same_on_both(lambda t: F.tanh(F.sigmoid(t)), [x], **float_math(dtype))


def test_log_and_integer_inputs():
    x = np.array([[0.5, 1.0, 2.0], [3.0, 1e-3, 7.0]])
    assert_same_on_both(F.log, [x], **float_math())
    with np.errstate(divide="ignore", invalid="ignore"):
        assert_same_on_both(F.log, [np.array([0.0, -1.0, np.nan])], **EXACT)
    ints = np.arange(-4, 5).reshape(3, 3)
    for fn in (F.exp, F.tanh, F.sigmoid):
        assert_same_on_both(fn, [ints], **float_math(np.float32))  # computed in float32
    for fn in (F.relu, lambda t: F.clip(t, -1, 2)):
        assert_same_on_both(fn, [ints], **EXACT)


@pytest.mark.parametrize("bounds", [(-1.0, 1.0), (-0.5, None), (None, 0.25), (None, None), (0, 0)])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_clip_and_hardtanh_at_their_bounds(bounds, dtype):
    """Values exactly on the bounds get the gradient under clip (inclusive) and not under hardtanh."""
    x = np.array([-2.0, -1.0, -0.5, -0.25, 0.0, 0.25, 0.5, 1.0, 3.0, np.nan], dtype)
    lo, hi = bounds
    assert_same_on_both(lambda t: F.clip(t, lo, hi), [x], **EXACT)
    if lo is not None and hi is not None:
        assert_same_on_both(lambda t: F.hardtanh(t, lo, hi), [x], **EXACT)
    assert_same_on_both(lambda t: t.clip(np.float64(-0.3), np.array(0.7)), [x], **EXACT)


def test_clip_with_array_bounds():
    x = _rng("clip").standard_normal((4, 3))
    assert_same_on_both(lambda t: F.clip(t, np.array([-0.5, 0.0, -1.0]), np.array([0.5, 1.0, 0.0])), [x], **EXACT)


@pytest.mark.parametrize("shapes", [((3, 4), (3, 4), (3, 4)), ((3, 1), (1, 4), (3, 4)), ((4,), (), (2, 4))])
def test_where(shapes):
    rng = _rng(shapes)
    a, b = rng.standard_normal(shapes[0]), rng.standard_normal(shapes[1])
    cond = rng.random(shapes[2]) > 0.5
    assert_same_on_both(lambda t, u: F.where(cond, t, u), [a, b], **EXACT)  # a host mask
    assert_same_on_both(lambda t, u: F.where(bitnet.Tensor(cond, device=t.device), t, u), [a, b], **EXACT)
    assert_same_on_both(lambda t: F.where(t > 0, t, 0.5), [a], **EXACT)  # a mask computed on the device
    assert_same_on_both(lambda t: F.where(cond, 2.0, t), [a], **EXACT)


@pytest.mark.parametrize("shapes", [((3, 4), (4, 5)), ((7,), (7, 2)), ((3, 7), (7,)), ((6,), (6,)),
                                    ((2, 1, 3, 4), (5, 4, 2)), ((4, 3, 5), (5, 2)), ((5,), (2, 5, 3)),
                                    ((2, 3, 4), (4,)), ((1, 1), (1, 1))], ids=str)
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_matmul(shapes, dtype):
    rng = _rng(shapes)
    a, b = (rng.standard_normal(s).astype(dtype) for s in shapes)
    tol = GEMM if dtype == np.float64 else dict(rtol=1e-5, atol=1e-5)  # (module docstring)
    out, _ = assert_same_on_both(lambda t, u: t @ u, [a, b], **tol)
    assert out.dtype == dtype
    assert_same_on_both(lambda t, u: t @ u, [a, b], grad_of=[True, False], **tol)
    assert_same_on_both(lambda t, u: F.matmul(t, u), [a, b], grad_of=[False, True], **tol)


def test_matmul_uses_xp_matmul_and_linear_runs_on_cuda(monkeypatch):
    calls = []
    from bitnet.gpu import emulated
    real = emulated.xp.matmul
    a, b = _rng("lin").standard_normal((3, 4)), _rng("lin2").standard_normal((5, 4))
    with emulate():
        monkeypatch.setattr(emulated.xp, "matmul", lambda *args: calls.append(1) or real(*args), raising=False)
        x, w = bitnet.Tensor(a, device="cuda"), bitnet.Tensor(b, requires_grad=True, device="cuda")
        F.linear(x, w).sum().backward()
        assert len(calls) == 2 and is_device_array(w.grad)  # forward and d/dw (x needs none)
        with bitnet.no_grad():
            y = F.linear(x, w, bitnet.Tensor(np.ones(5), device="cuda"))  # the inference path (no graph)
    assert y.device == "cuda"
    np.testing.assert_allclose(to_host(y.data), a @ b.T + 1, **GEMM)


def test_errors_stay_clear_on_cuda():
    with emulate():
        a = bitnet.Tensor(np.ones((2, 3)), device="cuda")
        with pytest.raises(ValueError, match=r"inner dimensions differ: \(2, 3\) @ \(2, 3\)"):
            a @ a
        with pytest.raises(ValueError, match="at least 1 dimension"):
            F.matmul(a, bitnet.Tensor(np.array(2.0), device="cuda"))
        with pytest.raises(RuntimeError, match="MatMul: its inputs are on different devices"):
            a @ np.ones((3, 2))  # a host array operand is a CPU constant of ndim 2
        with pytest.raises(RuntimeError, match="Mul: its inputs are on different devices"):
            a * bitnet.Tensor(np.ones(3))
        with pytest.raises(ValueError, match="broadcast"):
            a + bitnet.Tensor(np.ones(4), device="cuda")


def test_raw_device_arrays_are_lifted_on_their_device():
    with emulate():
        a = bitnet.Tensor(np.arange(3.0), requires_grad=True, device="cuda")
        raw = bitnet.Tensor(np.full(3, 2.0), device="cuda").data
        out = a * raw + a @ raw
        assert out.device == "cuda"
        out.sum().backward()
        np.testing.assert_array_equal(to_host(a.grad), np.full(3, 2.0) + 6.0)


def test_neg_and_relu_share_the_cpu_code():
    assert dispatch.implementation(E.Neg) is E.Neg and dispatch.implementation(E.ReLU) is E.ReLU
