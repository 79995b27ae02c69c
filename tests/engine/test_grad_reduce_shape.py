"""Gradients (and forward values) of reductions and shape primitives vs central differences."""
import os
import sys

import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bitnet_gradcheck import distinct, gradcheck  # noqa: E402

import bitnet.functional as F  # noqa: E402
from bitnet import Tensor  # noqa: E402

AXES = [0, 1, -1, (0, 2), (2, 0), (-1, -2), (0, 1, 2), None, ()]


@pytest.mark.parametrize("name", ["sum", "mean", "max", "min"])
@pytest.mark.parametrize("axis", AXES, ids=str)
@pytest.mark.parametrize("keepdims", [False, True])
def test_reductions(name, axis, keepdims):
    rng = np.random.default_rng(20)
    x = distinct(rng, (3, 4, 2))  # no ties, gaps (0.075) far above eps, so max/min are smooth
    ref = getattr(np, {"min": "min", "max": "max", "sum": "sum", "mean": "mean"}[name])(x, axis=axis, keepdims=keepdims)
    fn = getattr(F, name)
    out = fn(Tensor(x), axis=axis, keepdims=keepdims)
    assert out.shape == np.shape(ref)
    np.testing.assert_allclose(out.data, ref, rtol=1e-14, atol=1e-14)
    gradcheck(lambda t: fn(t, axis=axis, keepdims=keepdims), [x])
    gradcheck(lambda t: getattr(t, name)(axis, keepdims), [x])


def test_max_gradient_goes_to_the_maximum_only():
    x = np.array([[1.0, 5.0, 2.0], [7.0, 0.0, 3.0]])
    t = Tensor(x, requires_grad=True)
    F.max(t, axis=1).sum().backward()
    np.testing.assert_array_equal(t.grad, [[0, 1, 0], [1, 0, 0]])


def test_max_ties_split_the_gradient():
    t = Tensor(np.array([2.0, 2.0, 1.0, 2.0]), requires_grad=True)
    F.max(t).backward()
    np.testing.assert_allclose(t.grad, [1 / 3, 1 / 3, 0, 1 / 3])


def test_reduction_axis_out_of_range():
    with pytest.raises(ValueError, match="out of range"):
        F.sum(Tensor(np.ones((2, 3))), axis=2)


@pytest.mark.parametrize("shape, new", [((3, 4), (4, 3)), ((3, 4), (2, -1)), ((2, 3, 2), (12,)),
                                        ((6,), (1, 2, 1, 3)), ((1,), ())], ids=str)
def test_reshape(shape, new):
    x = np.random.default_rng(21).standard_normal(shape)
    gradcheck(lambda t: F.reshape(t, new), [x])
    gradcheck(lambda t: t.reshape(*new) if new else t.reshape(()), [x])
    np.testing.assert_array_equal(F.reshape(Tensor(x), new).data, x.reshape(new))


def test_reshape_error_names_shapes():
    with pytest.raises(ValueError, match=r"\(2, 3\).*\(4,\)"):
        F.reshape(Tensor(np.ones((2, 3))), (4,))


@pytest.mark.parametrize("axes", [(1, 0, 2), (2, 0, 1), (-1, 0, 1), (0, 1, 2)], ids=str)
def test_permute(axes):
    x = np.random.default_rng(22).standard_normal((2, 3, 4))
    gradcheck(lambda t: F.permute(t, axes), [x])
    gradcheck(lambda t: t.permute(*axes), [x])
    np.testing.assert_array_equal(F.permute(Tensor(x), axes).data, np.transpose(x, axes))
    np.testing.assert_array_equal(Tensor(x).permute(axes).data, np.transpose(x, axes))


@pytest.mark.parametrize("dims", [(0, 1), (1, 0), (0, 2), (-1, 1), (2, 2)], ids=str)
def test_transpose_swaps_two_axes(dims):
    """PyTorch's transpose(dim0, dim1), on 3-D tensors too (it raised there and was a no-op on 2-D)."""
    x = np.random.default_rng(25).standard_normal((2, 3, 4))
    gradcheck(lambda t: F.transpose(t, *dims), [x])
    gradcheck(lambda t: t.transpose(*dims), [x])
    np.testing.assert_array_equal(F.transpose(Tensor(x), *dims).data, np.swapaxes(x, *dims))


def test_transpose_method_and_T():
    x = np.random.default_rng(23).standard_normal((3, 5))
    gradcheck(lambda t: t.T, [x])
    gradcheck(lambda t: t.transpose(1, 0), [x])
    np.testing.assert_array_equal(Tensor(x).transpose(0, 1).data, x.T)  # was a silent no-op
    y = np.random.default_rng(26).standard_normal((2, 3, 4))
    np.testing.assert_array_equal(Tensor(y).T.data, y.transpose(2, 1, 0))  # .T reverses all axes
    with pytest.raises(ValueError, match="permutation"):
        F.permute(Tensor(np.ones((2, 3))), (0, 0))
    with pytest.raises(ValueError, match="out of range"):
        F.permute(Tensor(np.ones((2, 3, 4))), (0, 4, 2))  # 4 % 3 == 1 must not wrap around
    with pytest.raises(TypeError, match="permute"):
        Tensor(x).transpose()
    with pytest.raises(TypeError, match="permute"):
        F.transpose(Tensor(y), (1, 0, 2), 0)
    with pytest.raises(ValueError, match="out of range"):
        Tensor(x).transpose(0, 2)


@pytest.mark.parametrize("start_dim, end_dim, expect", [
    (1, -1, (2, 12)), (0, -1, (24,)), (2, -1, (2, 3, 4)), (-2, -1, (2, 3, 4)), (0, 1, (6, 2, 2)),
    (1, 2, (2, 6, 2)), (3, 3, (2, 3, 2, 2)), (-3, -2, (2, 6, 2))])
def test_flatten(start_dim, end_dim, expect):
    """torch.flatten(x, start_dim, end_dim) shapes, for F.flatten and Tensor.flatten alike."""
    x = np.random.default_rng(24).standard_normal((2, 3, 2, 2))
    assert F.flatten(Tensor(x), start_dim, end_dim).shape == expect
    assert Tensor(x).flatten(start_dim, end_dim).shape == expect
    np.testing.assert_array_equal(F.flatten(Tensor(x), start_dim, end_dim).data, x.reshape(expect))
    gradcheck(lambda t: F.flatten(t, start_dim, end_dim), [x])


def test_flatten_defaults_match_torch():
    x = Tensor(np.ones((2, 3, 4)))
    assert F.flatten(x).shape == (24,)           # torch.flatten: start_dim=0 (was 1 here)
    assert x.flatten().shape == (24,)
    assert Tensor(np.float32(3.0)).flatten().shape == (1,)
    with pytest.raises(ValueError, match="after end_dim"):
        F.flatten(x, 2, 1)


INDICES = [
    (1,),
    (np.s_[1:, ::2],),
    (np.s_[::-1, 1],),
    (np.s_[..., 2],),
    (np.s_[None, 1:3],),
    (np.s_[1, 2],),                                # 0-d result
    (np.array([0, 2, 0, 0, 3]),),                  # repeated rows accumulate
    ([3, 3, 1],),                                  # a Python list of ints
    ((np.array([0, 1, 0, 3]), np.array([2, 2, 2, 0])),),  # repeated (row, col) pairs
    (np.s_[:, [1, 1, 4, 1]],),                     # slice + repeated integer array
    (np.s_[[[0, 0], [3, 3]], 1:3],),               # 2-D integer array
]


@pytest.mark.parametrize("index", INDICES, ids=lambda i: repr(i[0]).replace(" ", ""))
def test_getitem(index):
    index = index[0]
    x = np.random.default_rng(25).standard_normal((4, 5))
    out = F.getitem(Tensor(x), index)
    np.testing.assert_array_equal(out.data, x[index])
    gradcheck(lambda t: t[index], [x])


def test_getitem_repeated_indices_accumulate_exactly():
    t = Tensor(np.zeros(4), requires_grad=True)
    t[np.array([1, 1, 1, 3])].sum().backward()
    np.testing.assert_array_equal(t.grad, [0, 3, 0, 1])


@pytest.mark.parametrize("which", ["full", "axis1", "row"])
def test_getitem_boolean_mask(which):
    rng = np.random.default_rng(26)
    x = rng.standard_normal((4, 5))
    if which == "full":
        index = x > 0.2
    elif which == "axis1":
        index = (slice(None), np.array([True, False, True, True, False]))
    else:
        index = np.array([False, True, True, False])
    np.testing.assert_array_equal(F.getitem(Tensor(x), index).data, x[index])
    gradcheck(lambda t: t[index], [x])
    # a boolean mask as a Tensor
    np.testing.assert_array_equal(Tensor(x)[Tensor(x > 0)].data, x[x > 0])


@pytest.mark.parametrize("axis", [0, 1, -1])
def test_concatenate(axis):
    rng = np.random.default_rng(27)
    base = [2, 3, 2]
    shapes = []
    for k in (1, 3, 2):
        s = list(base)
        s[axis] = k
        shapes.append(tuple(s))
    arrs = [rng.standard_normal(s) for s in shapes]
    out = F.concatenate([Tensor(a) for a in arrs], axis=axis)
    np.testing.assert_array_equal(out.data, np.concatenate(arrs, axis=axis))
    gradcheck(lambda a, b, c: F.concatenate([a, b, c], axis=axis), arrs)


def test_concatenate_with_constant_and_errors():
    rng = np.random.default_rng(28)
    a, b = rng.standard_normal((2, 3)), rng.standard_normal((1, 3))
    gradcheck(lambda t: F.concatenate([t, Tensor(b), t], axis=0), [a])  # t used twice
    with pytest.raises(ValueError, match="incompatible"):
        F.concatenate([Tensor(np.ones((2, 3))), Tensor(np.ones((2, 4)))], axis=0)
    with pytest.raises(ValueError):
        F.concatenate([], axis=0)


@pytest.mark.parametrize("axis", [0, 1, 2, -1])
def test_stack(axis):
    rng = np.random.default_rng(29)
    arrs = [rng.standard_normal((2, 3)) for _ in range(3)]
    out = F.stack([Tensor(a) for a in arrs], axis=axis)
    np.testing.assert_array_equal(out.data, np.stack(arrs, axis=axis))
    gradcheck(lambda a, b, c: F.stack([a, b, c], axis=axis), arrs)
