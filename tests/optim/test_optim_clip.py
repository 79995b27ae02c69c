"""clip_grad_norm_ and clip_grad_value_ against hand-computed norms."""
import math

import numpy as np
import pytest

from bitnet.optim import clip_grad_norm_, clip_grad_value_
from bitnet.tensor import Parameter, Tensor


def params_with_grads(grads, dtype=np.float64):
    out = []
    for g in grads:
        p = Parameter(np.zeros(np.shape(g), dtype=dtype))
        p.grad = None if g is None else np.array(g, dtype=dtype)
        out.append(p)
    return out


def test_norm_2_over_all_grads_and_scaling():
    ps = params_with_grads([[3.0, 0.0], None, [[4.0]]])  # total 2-norm 5
    total = clip_grad_norm_(ps, max_norm=1.0)
    assert isinstance(total, Tensor) and total.shape == () and total.dtype == np.float64  # the grads' dtype
    assert total == 5.0 and float(total) == 5.0 and total.item() == 5.0
    c = 1.0 / (5.0 + 1e-6)
    np.testing.assert_allclose(ps[0].grad, [3 * c, 0.0], rtol=1e-15)
    np.testing.assert_allclose(ps[2].grad, [[4 * c]], rtol=1e-15)
    assert ps[1].grad is None


def test_no_scaling_when_below_max_norm():
    ps = params_with_grads([[3.0, 0.0], [4.0]])
    before = [p.grad.copy() for p in ps]
    assert clip_grad_norm_(ps, max_norm=5.0) == 5.0  # coefficient 5/(5+1e-6) < 1: scaled
    assert not np.array_equal(ps[0].grad, before[0])
    ps = params_with_grads([[3.0, 0.0], [4.0]])
    assert clip_grad_norm_(ps, max_norm=6.0) == 5.0
    np.testing.assert_array_equal(ps[0].grad, before[0])


@pytest.mark.parametrize("norm_type, expected", [
    (1.0, 1 + 2 + 3 + 4),
    (2.0, math.sqrt(1 + 4 + 9 + 16)),
    (3.0, (1 + 8 + 27 + 64) ** (1 / 3)),
    (math.inf, 4.0),
    ("inf", 4.0),
])
def test_norm_types(norm_type, expected):
    ps = params_with_grads([[1.0, -2.0], [[3.0], [-4.0]]])
    nt = float(norm_type)
    total = clip_grad_norm_(ps, max_norm=1.0, norm_type=nt)
    assert math.isclose(total, expected, rel_tol=1e-14)
    c = 1.0 / (expected + 1e-6)
    np.testing.assert_allclose(ps[1].grad, [[3 * c], [-4 * c]], rtol=1e-14)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_dtype_kept_and_in_place(dtype):
    ps = params_with_grads([np.full(10, 2.0)], dtype)
    g = ps[0].grad
    clip_grad_norm_(ps, 1.0)
    assert ps[0].grad is g and g.dtype == dtype
    assert math.isclose(float(np.linalg.norm(g)), 1.0, rel_tol=1e-5)
    clip_grad_value_(ps, 0.1)
    assert ps[0].grad is g and g.dtype == dtype and g.max() <= dtype(0.1)


def test_single_parameter_and_no_grads():
    p = params_with_grads([[6.0, 8.0]])[0]
    assert clip_grad_norm_(p, 100.0) == 10.0
    assert clip_grad_norm_(params_with_grads([None]), 1.0) == 0.0


@pytest.mark.filterwarnings("ignore:invalid value encountered")
def test_nonfinite():
    ps = params_with_grads([[np.inf, 1.0]])
    with pytest.raises(RuntimeError, match="is inf"):
        clip_grad_norm_(ps, 1.0, error_if_nonfinite=True)
    np.testing.assert_array_equal(ps[0].grad, [np.inf, 1.0])  # unchanged after the error
    assert clip_grad_norm_(ps, 1.0) == math.inf  # as PyTorch: scaled by 0, inf * 0 = nan
    assert np.isnan(ps[0].grad[0]) and ps[0].grad[1] == 0.0


def test_clip_value():
    ps = params_with_grads([[-3.0, 0.5, 2.0], None])
    clip_grad_value_(ps, 1.0)
    np.testing.assert_array_equal(ps[0].grad, [-1.0, 0.5, 1.0])
    assert ps[1].grad is None


@pytest.mark.parametrize("call, msg", [
    (lambda ps: clip_grad_norm_(ps, -1.0), "max_norm must be >= 0.0, got -1.0"),
    (lambda ps: clip_grad_norm_(ps, 1.0, norm_type=0), "norm_type must be > 0.0, got 0"),
    (lambda ps: clip_grad_value_(ps, -0.5), "clip_value must be >= 0.0, got -0.5"),
])
def test_bad_arguments(call, msg):
    with pytest.raises(ValueError, match=msg):
        call(params_with_grads([[1.0]]))
