"""The CUDA C source of the cross-entropy, Adam and activation-gradient kernels (bitnet/kernels/
cuda_loss.py, cuda_adam.py, cuda_activations.py) run on the CPU thread by thread
(tests/gpu_training/c_shim.py), against what the emulation runs in their place: the CPU's Numba
Adam and activation kernels, and bitnet.ops.loss's NumPy cross-entropy.

Adam's step, the activations' gradients and the loss gradient are the same operations in the same
order, each rounded (no fused multiply-add): equal to the bit, NaN, infinities and signed zeros
included. The loss's forward sums
exp over the K classes in order where NumPy sums pairwise, and calls the C library's exp / log where
NumPy calls its own (each within about 1 ulp of the exact value): a relative error of a few times
K * eps in s = sum exp, so of a few times K * eps in log(s) and the probabilities; rtol 3e-5 for
float32 (K <= 37: 37 * 6e-8 = 2.2e-6, times a margin of 10), 1e-13 for float64; atol for losses near
zero, as large as the logits (|x| <= 60) times the same eps.
"""
from __future__ import annotations

import numpy as np
import pytest

from bitnet.kernels import cuda_activations as KC
from bitnet.kernels import cuda_adam as KA
from bitnet.kernels import cuda_loss as KL
from tests.gpu_training.c_shim import C_NAME, builder, compile_with_nvrtc, nvrtc_or_none, run_on_cpu

TOL = {np.float32: dict(rtol=3e-5, atol=60 * 3e-6), np.float64: dict(rtol=1e-13, atol=60 * 1e-14)}


@pytest.fixture(scope="module")
def build(tmp_path_factory):
    return builder(tmp_path_factory, KA)


def _adam_inputs(rng, dtype, size=700):
    p, g, m = (rng.standard_normal(size).astype(dtype) for _ in range(3))
    v, vmax = (np.abs(rng.standard_normal(size)).astype(dtype) * 0.01 for _ in range(2))
    g[:6] = [np.nan, np.inf, -np.inf, 0.0, -0.0, 1e30]
    v[6], vmax[7], p[8] = np.nan, np.nan, -0.0
    return [p, g, m, v, vmax]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("amsgrad", [0, 1])
@pytest.mark.parametrize("l2", [0.0, 0.01])
def test_the_adam_source_is_the_cpu_kernel_bit_for_bit(build, dtype, amsgrad, l2):
    t, beta1, beta2, lr = 3, 0.9, 0.999, 1e-3
    scalars = [float(dtype(v)) for v in (beta1, beta2, 1 - beta1, 1 - beta2, l2, lr / (1 - beta1 ** t),
                                         np.sqrt(1 - beta2 ** t), 1e-8)]
    lib = build(KA, AD_T=C_NAME[dtype])
    results = []
    for run in (lambda a: run_on_cpu(lib, "adam_step", a[0].size, a, KA), lambda a: KA.NUMPY["adam_step"](*a)):
        arrays = _adam_inputs(np.random.default_rng(0), dtype)
        if not amsgrad:
            arrays[4] = arrays[2]  # not read: the optimizer passes m
        run(arrays + [arrays[0].size, amsgrad] + scalars)
        results.append(arrays)
    for name, c, cpu in zip(("p", "g", "m", "v", "vmax"), *results):
        np.testing.assert_array_equal(c.view(f"u{c.itemsize}"), cpu.view(f"u{c.itemsize}"), err_msg=name)
    assert not np.array_equal(results[0][0], _adam_inputs(np.random.default_rng(0), dtype)[0])  # it stepped


def _logits(rng, n, k, dtype):
    x = (rng.standard_normal((n, k)) * 20).astype(dtype)
    x[0] = 60  # all equal and large: exp(0) each, no overflow
    if n > 2:
        x[1, k // 2] = np.nan  # a NaN row gives NaN probabilities and loss, as NumPy
    return x


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("n,k", [(5, 1), (9, 10), (33, 37)])
@pytest.mark.parametrize("ls", [0.0, 0.2])
def test_the_loss_source_gives_the_numpy_cross_entropy(build, dtype, n, k, ls):
    rng = np.random.default_rng(1)
    x, t = _logits(rng, n, k, dtype), rng.integers(0, k, n).astype(np.int64)
    lib = build(KL, CE_T=C_NAME[dtype])
    out = {}
    for who, run in (("c", lambda name, count, a: run_on_cpu(lib, name, count, a, KL)),
                     ("numpy", lambda name, count, a: KL.NUMPY[name](*a))):
        probs, nll = np.full((n, k), -7, dtype), np.full(n, -7, dtype)
        run("ce_rows", n, [x, t, n, k, ls, probs, nll])
        totals = []
        for mean in (0, 1):
            total = np.full((), -7, dtype)
            run("ce_total", 1, [np.nan_to_num(nll), n, mean, total])  # the NaN row left out of the sums
            totals.append(total)
        out[who] = probs, nll, totals
    (pc, lc, tc), (pn, ln, tn) = out["c"], out["numpy"]
    np.testing.assert_allclose(pc, pn, **TOL[dtype])
    np.testing.assert_allclose(lc, ln, **TOL[dtype])
    for a, b in zip(tc, tn):
        np.testing.assert_allclose(a, b, rtol=TOL[dtype]["rtol"] * n, atol=TOL[dtype]["atol"])
    assert np.isnan(pc[1]).all() == (n > 2) and np.isnan(lc[1]) == (n > 2)
    np.testing.assert_allclose(pc[0], np.full(k, 1 / k, dtype), rtol=TOL[dtype]["rtol"])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("ls", [0.0, 0.3])  # 0.3: T(e / K) != T(e) / K in float32, K = 10
@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
def test_the_loss_gradient_source_is_numpy_s_bit_for_bit(build, index, dtype, ls, reduction):
    rng = np.random.default_rng(2)
    n, k = 7, 10
    probs = rng.dirichlet(np.ones(k), n).astype(dtype)
    probs[3, 2] = np.nan
    t = rng.integers(0, k, n).astype(np.int64)
    g = (rng.standard_normal(n) if reduction == "none" else np.array(rng.standard_normal())).astype(dtype)
    lib = build(KL, CE_T=C_NAME[dtype], **index)
    mode = KL.REDUCTIONS[reduction]
    dx_c, dx_numpy = np.full((n, k), -7, dtype), np.full((n, k), -7, dtype)
    run_on_cpu(lib, "ce_grad", n * k, [probs, t, g, n, k, ls, mode, dx_c], KL)
    KL.NUMPY["ce_grad"](probs, t, g, n, k, ls, mode, dx_numpy)
    np.testing.assert_array_equal(dx_c.view(f"u{dx_c.itemsize}"), dx_numpy.view(f"u{dx_c.itemsize}"))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("kernel", ["tanh_backward", "sigmoid_backward"])
def test_the_activation_gradient_sources_are_the_cpu_kernels_bit_for_bit(build, dtype, kernel):
    rng = np.random.default_rng(5)
    y = np.tanh(rng.standard_normal(1000) * 3).astype(dtype)
    if kernel == "sigmoid_backward":
        y = (y + 1) / 2
    g = (rng.standard_normal(1000) * 10).astype(dtype)
    y[:4], g[4:8] = [np.nan, -0.0, 1.0, -1.0], [np.inf, -np.inf, np.nan, -0.0]
    lib = build(KC, AC_T=C_NAME[dtype])
    dx_c, dx_cpu = np.full(1000, -7, dtype), np.full(1000, -7, dtype)
    run_on_cpu(lib, kernel, 1000, [g, y, 1000, dx_c], KC)
    KC.NUMPY[kernel](g, y, 1000, dx_cpu)
    np.testing.assert_array_equal(dx_c.view(f"u{dx_c.itemsize}"), dx_cpu.view(f"u{dx_c.itemsize}"))
    if dtype == np.float32:  # the float64 step matters: one rounding, not three
        one_step = (g * (1 - y * y) if kernel == "tanh_backward" else g * y * (1 - y)).astype(dtype)
        assert (dx_cpu != one_step)[8:].any()


@pytest.mark.parametrize("arch", ["compute_80", "compute_90"])
def test_the_step_kernel_sources_compile_with_nvrtc(arch):
    nvrtc = nvrtc_or_none()
    if nvrtc is None:
        pytest.skip("no NVRTC here (CuPy with its NVRTC library)")
    compile_with_nvrtc(nvrtc, KA, ("AD_T",), arch)
    compile_with_nvrtc(nvrtc, KL, ("CE_T",), arch, library=("exp", "log"))
    compile_with_nvrtc(nvrtc, KC, ("AC_T",), arch)
