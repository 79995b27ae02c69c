"""ste_sign applied to a sign quantizer's output: the shortcut (the same tensor back) gives the
values and gradients of applying it for real."""
from __future__ import annotations

import numpy as np
import pytest

from bitnet import Tensor, no_grad
from bitnet import quantizers as Q


@pytest.mark.parametrize("inner", ["ste_sign", "approx_sign", "swish_sign"])
@pytest.mark.parametrize("clip", [1.0, 2.0, None, 0.5])
def test_sign_of_sign(inner, clip):
    rng = np.random.default_rng(0)
    x = (rng.standard_normal((4, 7)) * 1.5).astype(np.float32)
    x[0, :3] = [0.0, -1.0, 1.0]
    g = rng.standard_normal(x.shape).astype(np.float32)
    t = Tensor(x, requires_grad=True)
    s = Q.get(inner)(t)
    y = Q.SteSign(clip)(s)
    assert (y is s) == (clip is None or clip >= 1)
    y.backward(g)
    # the reference: the outer quantizer applied by its Function, not skipped
    t2 = Tensor(x, requires_grad=True)
    y2 = Q._SteSignFn.apply(Q.get(inner)(t2), clip_value=clip)
    y2.backward(g)
    np.testing.assert_array_equal(y.data, y2.data)
    np.testing.assert_array_equal(t.grad, t2.grad)
    with no_grad():  # no graph: computed again, same values
        np.testing.assert_array_equal(Q.SteSign(clip)(Q.get(inner)(Tensor(x))).data, y2.data)
