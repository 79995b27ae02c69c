"""Reductions, shape ops, indexing, comparisons and in-place arithmetic on "cuda"
(bitnet/gpu/ops/reduce_shape.py, bitnet/ops/compare.py, bitnet/ops/inplace.py) against the CPU.

Shape ops and indexing move values without arithmetic, and on the emulation the reductions run NumPy's
own sums in the CPU's order, so every comparison here asks for equality to the bit (``EXACT``). (On a
real GPU, CuPy's reductions sum in another order: the sums' comparisons take ``float_math``'s
tolerances there.)
"""
from __future__ import annotations

import zlib

import numpy as np
import pytest

import bitnet
import bitnet.functional as F
from bitnet.gpu import dispatch
from bitnet.gpu.arrays import emulate, is_device_array, to_device, to_host
from bitnet.ops import reduce as R, shape as S
from bitnet.tensor import Function
from tests.gpu_training.compare import assert_same_on_both, float_math

EXACT = dict(rtol=0, atol=0, exact=True)


def _rng(*key):
    return np.random.default_rng(zlib.crc32(repr(key).encode()))


def test_every_reduction_and_shape_primitive_runs_on_cuda():
    for module in (R, S):
        for cls in vars(module).values():
            if isinstance(cls, type) and issubclass(cls, Function) and cls is not Function:
                impl = dispatch.implementation(cls)
                assert impl is cls or issubclass(impl, cls), cls


AXES = [None, 0, 1, -1, (0, 2), (2, 0, 1), ()]


@pytest.mark.parametrize("fn", ["sum", "mean", "max", "min"])
@pytest.mark.parametrize("axis", AXES, ids=str)
@pytest.mark.parametrize("keepdims", [False, True])
def test_reductions(fn, axis, keepdims):
    x = _rng(fn, axis).standard_normal((3, 5, 7))
    # sums of up to 105 terms, |x| ~ 1: (8 + 7) eps 105 ~ 2e-13 / 1e-4 (float64 / float32) on a GPU
    order = dict(EXACT) if fn in ("max", "min") else None
    assert_same_on_both(lambda t: getattr(t, fn)(axis, keepdims), [x], **(order or float_math(atol=1e-12)))
    assert_same_on_both(lambda t: getattr(F, fn)(t.astype(np.float32), dim=axis, keepdim=keepdims),
                        [x], **(order or float_math(np.float32, atol=1e-4)))


@pytest.mark.parametrize("fn", ["sum", "mean", "max"])
def test_reductions_of_integers_and_bools_keep_numpy_dtypes(fn):
    ints = np.arange(-7, 8, dtype=np.int32).reshape(3, 5)
    out, _ = assert_same_on_both(lambda t: getattr(t, fn)(1), [ints], **EXACT)
    assert out.dtype == {"sum": np.int64, "mean": np.float64, "max": np.int32}[fn]
    assert_same_on_both(lambda t: getattr(t > 0, fn)(), [ints], **EXACT)


def test_max_splits_ties_and_routes_nan_slices_to_their_nans():
    x = np.array([[1.0, 3.0, 3.0, -1.0], [2.0, np.nan, 5.0, np.nan], [0.0, 0.0, 0.0, 0.0]])
    for axis in (None, 0, 1):
        assert_same_on_both(lambda t: t.max(axis), [x], **EXACT)
        assert_same_on_both(lambda t: t.min(axis, keepdims=True), [x], **EXACT)
    _, (g,) = assert_same_on_both(lambda t: t.max(1), [x], **EXACT)
    assert g[0, 0] == 0 and g[0, 1] == g[0, 2] != 0 and g[1, 0] == g[1, 2] == 0 and g[1, 1] == g[1, 3] != 0


@pytest.mark.parametrize("fn", ["argmax", "argmin"])
@pytest.mark.parametrize("axis,keepdims", [(None, False), (0, False), (1, True), (-1, False), (None, True)])
def test_argmax_argmin_on_cuda(fn, axis, keepdims):
    x = np.array([[1.0, 3.0, 3.0, -1.0], [2.0, np.nan, 5.0, 7.0], [0.0, -4.0, -4.0, 9.0]])
    for data in (x, np.nan_to_num(x), np.arange(12).reshape(3, 4) % 5):
        want = getattr(bitnet.Tensor(data), fn)(axis, keepdims)
        with emulate():
            got = getattr(bitnet.Tensor(data, device="cuda"), fn)(dim=axis, keepdim=keepdims)
        assert got.device == "cuda" and got.dtype == np.int64 and got.shape == want.shape
        np.testing.assert_array_equal(to_host(got.data), want.data)
    with emulate():
        t = bitnet.Tensor(x, device="cuda")
        with pytest.raises(ValueError, match=f"{fn}: dim 2 is out of range"):
            getattr(t, fn)(2)


@pytest.mark.parametrize("shape", [(6, 5), (-1,), (3, -1, 2), (30, 1)], ids=str)
def test_reshape_view_flatten(shape):
    x = _rng(shape).standard_normal((2, 3, 5))
    assert_same_on_both(lambda t: t.reshape(shape), [x], **EXACT)
    assert_same_on_both(lambda t: t.view(*shape), [x], **EXACT)
    assert_same_on_both(lambda t: t.flatten(1), [x], **EXACT)
    assert_same_on_both(lambda t: F.flatten(t, 0, 1), [x], **EXACT)
    assert_same_on_both(lambda t: F.flatten(t.sum()), [x], **float_math(atol=1e-12))


def test_transpose_permute_and_T():
    x = _rng("T").standard_normal((2, 3, 4, 5))
    assert_same_on_both(lambda t: t.transpose(1, 3), [x], **EXACT)
    assert_same_on_both(lambda t: t.permute(2, 0, 3, 1), [x], **EXACT)
    assert_same_on_both(lambda t: t.T, [x], **EXACT)
    assert_same_on_both(lambda t: (t.permute(3, 1, 0, 2) * 2).reshape(5, -1).T, [x], **EXACT)


INDICES = [
    (1,), (slice(None, None, 2),), (slice(-1, 0, -2), Ellipsis, 1), (None, 0, slice(1, 3)),
    (np.array([0, 2, 0, 0, -1]),),                                # repeated: the gradients add up
    (slice(None), np.array([[1, 1], [3, 0]]), slice(0, 4, 3)),
    (np.array([0, 0, 2]), np.array([1, 1, 1])),                   # one element picked three ways
    ([1, 1, 0],), ([],), ((0, 0),), (((0, 0),),), (np.int64(2), np.array(1)),
    (np.array([True, False, True]),), (np.arange(60).reshape(3, 4, 5) % 3 == 0,),
    (Ellipsis, np.array([4, 4, 0])),
]


@pytest.mark.parametrize("index", INDICES, ids=lambda i: repr(i)[:40])
def test_getitem(index):
    x = _rng(repr(index)).standard_normal((3, 4, 5))
    index = index[0] if len(index) == 1 else index
    assert_same_on_both(lambda t: t[index], [x], **EXACT)


def test_getitem_with_tensor_indices_on_the_device():
    x = _rng("ti").standard_normal((4, 6))
    idx = np.array([3, 0, 3, 3])
    assert_same_on_both(lambda t: t[bitnet.Tensor(idx, device=t.device)], [x], **EXACT)
    assert_same_on_both(lambda t: t[t > 0.3], [x], **EXACT)
    assert_same_on_both(lambda t: t[bitnet.Tensor(idx, device=t.device), 1:5:2], [x], **EXACT)
    with emulate():
        t = bitnet.Tensor(x, device="cuda")
        with pytest.raises(IndexError):
            t[4]


@pytest.mark.parametrize("axis", [0, 1, -1])
def test_concatenate_cat_stack(axis):
    rng = _rng("cat", axis)
    a, b, c = rng.standard_normal((2, 3, 4)), rng.standard_normal((2, 3, 4)), rng.standard_normal((2, 3, 4))
    assert_same_on_both(lambda *ts: F.concatenate(ts, axis), [a, b, c], **EXACT)
    assert_same_on_both(lambda *ts: F.cat(ts, dim=axis), [a, b[:1] if axis == 0 else b], **EXACT)
    assert_same_on_both(lambda *ts: F.stack(ts, dim=axis), [a, b, c], **EXACT)
    assert_same_on_both(lambda *ts: F.stack(ts, 3), [a, b], **EXACT)
    assert_same_on_both(lambda t, u: F.cat([t, u], 0), [a, b.astype(np.float32)], **EXACT)  # promoted


@pytest.mark.parametrize("widths", [((1, 2),), ((0, 0), (3, 1)), ((2, 0), (0, 1), (1, 1))], ids=str)
@pytest.mark.parametrize("value", [0.0, -1.5])
def test_pad(widths, value):
    x = _rng("pad", widths).standard_normal((2, 3, 4))
    assert_same_on_both(lambda t: F.pad(t, widths, value), [x], **EXACT)


def test_shape_errors_stay_clear_on_cuda():
    with emulate():
        t = bitnet.Tensor(np.ones((2, 3, 4)), device="cuda")
        with pytest.raises(ValueError, match=r"cannot reshape a tensor of shape \(2, 3, 4\) \(24 elements\)"):
            t.reshape(5, 5)
        with pytest.raises(ValueError, match="not a permutation"):
            t.permute(0, 1, 1)
        with pytest.raises(ValueError, match="axis 3 is out of range"):
            t.sum(3)
        with pytest.raises(ValueError, match="concatenate along axis 0: tensor 1 has shape"):
            F.cat([t, bitnet.Tensor(np.ones((2, 2, 4)), device="cuda")])
        with pytest.raises(RuntimeError, match="Concatenate: its inputs are on different devices"):
            F.cat([t, bitnet.Tensor(np.ones((2, 3, 4)))])
        with pytest.raises(ValueError, match="pad: widths"):
            F.pad(t, ((1, -1),))


OPS = ["__eq__", "__ne__", "__lt__", "__le__", "__gt__", "__ge__"]


@pytest.mark.parametrize("op", OPS)
def test_comparisons_on_cuda(op):
    x = np.array([[1.0, np.nan, 3.0], [0.0, -2.0, 3.0]])
    y = np.array([1.0, np.nan, 2.0])
    with emulate():
        t, u = bitnet.Tensor(x, device="cuda"), bitnet.Tensor(y, device="cuda")
        for other, host_other in ((u, y), (3.0, 3.0), (3, 3), (np.float32(0.0), 0.0), ([1.0, 5.0, 3.0], [1, 5, 3]),
                                  (bitnet.Tensor(np.array(1.0)), 1.0), (np.array(3.0), 3.0)):
            got = getattr(t, op)(other)
            assert got.device == "cuda" and got.dtype == np.bool_
            np.testing.assert_array_equal(to_host(got.data), getattr(np.asarray(x), op)(np.asarray(host_other)))
        with pytest.raises(RuntimeError, match=r"the tensor \(shape \(2, 3\)\) is on cuda, the operand \(shape "
                                               r"\(3,\)\) on cpu; move them"):
            getattr(t, op)(bitnet.Tensor(y))
        with pytest.raises(RuntimeError, match="is on cpu, the operand .* on cuda"):
            getattr(bitnet.Tensor(y), op)(u)
        with pytest.raises(RuntimeError, match="on cpu"):
            getattr(t, op)(y)  # a host array is refused as by every op (a list is a constant)
        assert getattr(t, op)("text") is NotImplemented
    assert (t == None) is False and (t != None) is True  # noqa: E711


def test_any_all_and_scalars_of_cuda_tensors():
    x = np.array([[0.0, 2.0, -1.0], [0.0, 0.0, 3.0]])
    with emulate():
        t = bitnet.Tensor(x, device="cuda")
        for name in ("any", "all"):
            for kw in ({}, {"axis": 0}, {"dim": 1, "keepdim": True}):
                got = getattr(t > 0, name)(**kw)
                assert got.device == "cuda"
                np.testing.assert_array_equal(to_host(got.data), getattr(np, name)(x > 0, axis=kw.get(
                    "axis", kw.get("dim")), keepdims=kw.get("keepdim", False)))
        assert bool((t > 2).any()) is True and bool((t > 2).all()) is False
        assert (t > 0).sum().item() == 2 and float(t.sum()) == 4.0 and int(t.max()) == 3
        with pytest.raises(RuntimeError, match="ambiguous"):
            bool(t > 0)
        f = t.astype(np.float32)
        assert f.device == "cuda" and f.dtype == np.float32 and is_device_array(f.data)
        d = bitnet.Tensor(x, requires_grad=True, device="cuda").detach()
        assert d.device == "cuda" and not d.requires_grad


def test_inplace_arithmetic_on_cuda():
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    with emulate():
        t = bitnet.Tensor(x, device="cuda")
        data = t.data
        t += 1.5
        t -= bitnet.Tensor(np.ones(3, np.float32), device="cuda")
        t *= [1, 2, 3]
        t /= bitnet.Tensor(np.array(2.0))  # a 0-d host tensor is a constant
        t -= np.float64(0.25)
        assert t.data is data and t.dtype == np.float32 and t._version == 5
        np.testing.assert_array_equal(to_host(t.data), ((x + 1.5 - 1) * [1, 2, 3] / 2 - 0.25).astype(np.float32))
        with pytest.raises(RuntimeError, match=r"in-place '-=': the tensor \(shape \(2, 3\)\) is on cuda"):
            t -= bitnet.Tensor(np.ones(3, np.float32))
        with pytest.raises(RuntimeError, match="on cpu"):
            t -= np.ones(3, np.float32)
        with pytest.raises(RuntimeError, match=r"in-place '\+=': the tensor .* is on cpu"):
            h = bitnet.Tensor(x)
            h += bitnet.Tensor(x, device="cuda")
        with pytest.raises(ValueError, match=r"does not broadcast into the tensor's shape \(2, 3\)"):
            t += bitnet.Tensor(np.ones((4, 3), np.float32), device="cuda")
        i = bitnet.Tensor(np.arange(3), device="cuda")
        with pytest.raises(TypeError, match="cannot store a float64 result in a int64 tensor"):
            i += bitnet.Tensor(np.ones(3), device="cuda")
        i += 2
        np.testing.assert_array_equal(to_host(i.data), [2, 3, 4])
        p = bitnet.Parameter(np.ones(3, np.float32))
        p.data = to_device(p.data, "cuda")
        with pytest.raises(RuntimeError, match="no_grad"):
            p -= 1.0
        (p * p).sum().backward()
        with bitnet.no_grad():
            p -= 0.25 * bitnet.Tensor(p.grad)
        np.testing.assert_array_equal(to_host(p.data), np.full(3, 0.5, np.float32))
        assert is_device_array(p.data)
