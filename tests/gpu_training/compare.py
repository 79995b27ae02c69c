"""Shared helper of the GPU-engine tests: run one computation on the CPU and on "cuda" and compare.

"cuda" is the NumPy emulation of CuPy (``bitnet.gpu.arrays.emulate``): the GPU implementations run
with their own code, on arrays that refuse to meet host arrays, so a forgotten transfer fails here as
on a GPU. The numbers differ from the CPU's Numba kernels only by the order of float operations
(sums, fused steps), which is what the tolerances of each test are for.
"""
from __future__ import annotations

import os

import numpy as np
import pytest

import bitnet
from bitnet.gpu.arrays import emulate, is_device_array, to_host


ON_GPU = os.environ.get("BITNET_TEST_CUDA") == "gpu"  # tests/gpu_training/conftest.py
emulation_only = pytest.mark.skipif(ON_GPU, reason="looks at what only the emulation records (kernel launches, "
                                                    "host memory behind device arrays)")


def float_math(dtype=np.float64, atol=None):
    """``assert_same_on_both`` options for float math that a GPU computes with its own library or in
    its own order (exp, log, tanh, pow, softmax, sums): exact on the emulation, where NumPy computes
    both sides; on a real GPU (``BITNET_TEST_CUDA=gpu``) within CUDA's documented error for those
    functions (<= 2 ulp) times a margin for what follows them (log_softmax's subtraction): rtol 1e-5
    (float32) / 1e-12 (float64), and ``atol`` (default 1e-6 / 1e-14) for values that cancel to near
    zero; a sum of n terms differs by up to about (8 + log2 n) eps sum|terms|, which its test's atol covers."""
    if not ON_GPU:
        return dict(rtol=0, atol=0, exact=True)
    single = np.dtype(dtype) == np.float32
    return dict(rtol=1e-5 if single else 1e-12, atol=atol if atol is not None else 1e-6 if single else 1e-14)


def run(fn, arrays, device, grad_of=None, seed=0):
    """``out = fn(*tensors)`` with leaf tensors made from ``arrays`` on ``device``, then backward of
    ``sum(out * W)`` for a fixed random W; returns ``(out, [grad of each input or None])`` on the host.
    ``grad_of`` (default: every float input) says which inputs require gradients."""
    if grad_of is None:
        grad_of = [np.asarray(a).dtype.kind == "f" for a in arrays]
    tensors = [bitnet.Tensor(a, requires_grad=g, device=device) for a, g in zip(arrays, grad_of)]
    out = fn(*tensors)
    assert out.device == device, f"fn's output is on {out.device}, its inputs on {device}"
    if out.requires_grad:
        w = np.random.default_rng(seed).standard_normal(out.shape).astype(out.dtype)
        (out * bitnet.Tensor(w, device=device)).sum().backward()
    grads = []
    for t in tensors:
        if t.grad is not None:
            assert is_device_array(t.grad) == (device == "cuda"), f"a gradient on the wrong device ({type(t.grad)})"
        grads.append(None if t.grad is None else to_host(t.grad))
    return to_host(out.data), grads


def assert_same_on_both(fn, arrays, rtol, atol, grad_of=None, exact=False):
    """``fn`` gives the same output and input gradients on the CPU and on (emulated) "cuda": equal when
    ``exact``, else within ``rtol`` / ``atol``. Returns the CPU's ``(out, grads)``."""
    cpu = run(fn, arrays, "cpu", grad_of)
    with emulate():
        gpu = run(fn, arrays, "cuda", grad_of)
    check = np.testing.assert_array_equal if exact else (
        lambda a, b, err_msg: np.testing.assert_allclose(a, b, rtol=rtol, atol=atol, err_msg=err_msg))
    assert cpu[0].dtype == gpu[0].dtype, (cpu[0].dtype, gpu[0].dtype)
    check(gpu[0], cpu[0], err_msg="output")
    for i, (a, b) in enumerate(zip(cpu[1], gpu[1])):
        assert (a is None) == (b is None), f"input {i}: gradient on one device only"
        if a is not None:
            check(b, a, err_msg=f"gradient of input {i}")
    return cpu
