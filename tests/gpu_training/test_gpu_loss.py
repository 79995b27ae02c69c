"""Log-softmax, cross-entropy and dropout on "cuda" (bitnet/ops/loss.py, one code for both devices)
against the CPU.

The ops compute with the device's array module (the plain cross-entropy with bitnet's kernels,
whose emulation runs the same NumPy code as the CPU); on the emulation the results are equal to the
bit and the tests ask for exactly that. On a real GPU exp / log and the order of sums differ by
ulps: ``float_math`` gives those comparisons tolerances there.
"""
from __future__ import annotations

import numpy as np
import pytest

import bitnet
import bitnet.nn as nn
from bitnet.gpu.arrays import emulate, is_device_array, to_host
from bitnet.ops.loss import cross_entropy, dropout, log_softmax, softmax
from tests.gpu_training.compare import assert_same_on_both, emulation_only, float_math

EXACT = dict(rtol=0, atol=0, exact=True)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("axis", [0, 1, -1])
def test_log_softmax_matches_cpu(axis, dtype):
    x = (np.random.default_rng(0).standard_normal((3, 5, 4)) * 30).astype(dtype)  # large: the max shift matters
    tol = float_math(dtype, atol=1e-5 if dtype == np.float32 else None)  # |log p| up to ~100 here
    assert_same_on_both(lambda t: log_softmax(t, axis), [x], **tol)


def test_softmax_matches_cpu_where_exp_runs_on_cuda():
    from bitnet.gpu.dispatch import implementation
    from bitnet.ops.elementwise import Exp
    try:
        implementation(Exp)
    except NotImplementedError:
        pytest.skip("Exp has no GPU implementation yet (softmax = exp(log_softmax))")
    x = np.random.default_rng(1).standard_normal((4, 6))
    assert_same_on_both(lambda t: softmax(t, dim=1), [x], rtol=1e-12, atol=1e-15)


CASES = [
    dict(),
    dict(reduction="sum"),
    dict(reduction="none"),
    dict(label_smoothing=0.2),
    dict(label_smoothing=0.1, reduction="sum"),
    dict(label_smoothing=0.3, reduction="none"),
    dict(weight=True),
    dict(weight=True, reduction="sum", label_smoothing=0.15),
    dict(weight=True, reduction="none"),
    dict(ignore_index=2),
    dict(ignore_index=2, weight=True, label_smoothing=0.1),
    dict(ignore_index=-1, reduction="none"),
]


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("case", CASES, ids=lambda c: ",".join(f"{k}={v}" for k, v in c.items()) or "plain")
def test_cross_entropy_matches_cpu(case, dtype):
    rng = np.random.default_rng(3)
    n, k = 7, 5
    logits = (rng.standard_normal((n, k)) * 4).astype(dtype)
    targets = rng.integers(0, k, n)
    targets[[1, 4]] = 2  # so that ignore_index=2 drops some
    if case.get("ignore_index") == -1:
        targets[0] = -1
    kw = dict(case)
    if kw.pop("weight", False):
        kw["weight"] = (rng.random(k) + 0.25).astype(dtype)
    cpu = assert_same_on_both(lambda x: cross_entropy(x, targets, **kw), [logits], **float_math(dtype))
    assert np.isfinite(cpu[0]).all()


def test_cross_entropy_every_target_ignored_is_nan_on_both():
    logits = np.random.default_rng(0).standard_normal((3, 4))
    out = assert_same_on_both(lambda x: cross_entropy(x, np.full(3, 5), ignore_index=5), [logits], **float_math())
    assert np.isnan(out[0])


@pytest.mark.parametrize("where", ["host array", "cpu tensor", "cuda tensor"])
def test_cross_entropy_loss_stays_on_device_whatever_the_labels(where):
    rng = np.random.default_rng(5)
    logits = rng.standard_normal((6, 3)).astype(np.float32)
    targets = rng.integers(0, 3, 6).astype(np.int32)
    weight = np.array([1.0, 2.0, 0.5], np.float32)
    want = cross_entropy(bitnet.Tensor(logits), targets, weight=weight)
    with emulate():
        labels = {"host array": targets, "cpu tensor": bitnet.Tensor(targets),
                  "cuda tensor": bitnet.Tensor(targets, device="cuda")}[where]
        w = bitnet.Tensor(weight, device="cuda") if where == "cuda tensor" else weight
        x = bitnet.Tensor(logits, requires_grad=True, device="cuda")
        loss = cross_entropy(x, labels, weight=w)
        assert loss.device == "cuda" and is_device_array(loss.data) and loss.data.ndim == 0
        assert loss.dtype == np.float32
        loss.backward()
        assert is_device_array(x.grad)
        np.testing.assert_array_equal(to_host(loss.data), want.data)


def test_cross_entropy_errors_are_clear_on_cuda():
    with emulate():
        x = bitnet.Tensor(np.zeros((3, 4), np.float32), device="cuda")
        with pytest.raises(ValueError, match=r"targets must lie in \[0, 3\].*from 0 to 4"):
            cross_entropy(x, bitnet.Tensor(np.array([0, 4, 1]), device="cuda"))
        with pytest.raises(ValueError, match=r"integer targets of shape \(3,\)"):
            cross_entropy(x, np.array([0.0, 1.0, 2.0]))
        with pytest.raises(ValueError, match="reduction must be"):
            cross_entropy(x, np.array([0, 1, 2]), reduction="avg")
        with pytest.raises(ValueError, match=r"weight must be a float array of shape \(4,\)"):
            cross_entropy(x, np.array([0, 1, 2]), weight=bitnet.Tensor(np.ones(3, np.float32), device="cuda"))
        with pytest.raises(ValueError, match=r"logits of shape \(N, classes\)"):
            cross_entropy(bitnet.Tensor(np.zeros(4, np.float32), device="cuda"), np.array([0]))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("p", [0.1, 0.5, 0.9])
def test_dropout_draws_the_cpu_mask_from_the_same_seed(p, dtype):
    x = np.random.default_rng(0).standard_normal((5, 3, 7)).astype(dtype)
    assert_same_on_both(lambda t: dropout(t, p, rng=np.random.default_rng(42)), [x], **EXACT)


def test_dropout_module_on_cuda_follows_the_cpu_generator_step_by_step():
    cpu, gpu = nn.Dropout(0.4, rng=11), nn.Dropout(0.4, rng=11)
    x = np.random.default_rng(0).standard_normal((8, 9)).astype(np.float32)
    with emulate():
        gpu.to("cuda")
        masks = []
        for _ in range(3):  # the Generator advances alike: every step's mask is the CPU's
            outs = [to_host(m(bitnet.Tensor(x, device=d)).data) for m, d in ((cpu, "cpu"), (gpu, "cuda"))]
            np.testing.assert_array_equal(outs[1], outs[0])
            masks.append(outs[0] != 0)
        assert not (masks[0] == masks[1]).all()
        gpu.eval()
        np.testing.assert_array_equal(to_host(gpu(bitnet.Tensor(x, device="cuda")).data), x)


def test_the_loss_ops_are_written_once_for_both_devices_but_the_plain_cross_entropy():
    from bitnet.gpu import dispatch
    from bitnet.gpu.ops.loss import CrossEntropyOnDevice
    from bitnet.ops import loss as cpu
    for name in ("LogSoftmax", "WeightedCrossEntropy", "Dropout"):
        cls = getattr(cpu, name)
        assert dispatch.implementation(cls) is cls and cls not in dispatch.registered()
    assert dispatch.implementation(cpu.CrossEntropy) is CrossEntropyOnDevice  # three kernels (cuda_loss)


@emulation_only
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_the_plain_cross_entropy_is_three_launches_or_two(reduction, dtype):
    from bitnet.gpu.emulated import count_device_calls
    t = np.array([0, 4, 2, 2, 1, 3])
    with emulate():
        x = bitnet.Tensor(np.random.default_rng(4).standard_normal((6, 5)).astype(dtype), requires_grad=True,
                          device="cuda")
        with count_device_calls() as calls:
            loss = cross_entropy(x, t, reduction=reduction)
            (loss.sum() if reduction == "none" else loss).backward()
    names = [name for name, _ in calls if name.startswith("ce_")]
    assert names == ["ce_rows"] + ["ce_total"] * (reduction != "none") + ["ce_grad"]
