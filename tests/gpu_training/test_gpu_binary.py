"""Binary layers on "cuda" with the forward pass on bits (bitnet/gpu/ops/binary.py).

The numba.cuda kernels run under Numba's CUDA simulator, which must be switched on before Numba is
imported: tests/gpu_training/binary_checks.py runs in a subprocess (tests/gpu/cudasim.py; on a real
GPU with ``BITNET_TEST_CUDA=gpu``). The tests here, in this process, cover the rest: dispatch, the
emulation without the simulator (the float forward, equal to the CPU's bits), errors."""
from __future__ import annotations

import os
import sys

import numpy as np
import pytest

import bitnet
import bitnet.nn as nn
from bitnet.gpu import dispatch
from bitnet.gpu.arrays import emulate
from bitnet.ops import binary as B

from compare import assert_same_on_both

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "gpu"))
from cudasim import run_in_simulator  # noqa: E402  (tests/gpu's runner)


@pytest.mark.parametrize("check", ["conv", "dense", "mma", "chunks", "correction"])
def test_binary_layers_on_bits_on_cuda_match_the_cpu_and_the_float_path(check):
    out = run_in_simulator(os.path.join(HERE, "binary_checks.py"), check)
    assert f"{check}: ok" in out


def test_binary_ops_have_gpu_implementations():
    from bitnet.gpu.ops import binary as GB
    from bitnet.ops import elementwise as E
    gpu = dispatch.registered()
    assert gpu[B.BinaryConv2d] is GB.BinaryConv2dGPU and issubclass(GB.BinaryConv2dGPU, B.BinaryConv2d)
    assert gpu[B.BinaryMatMul] is GB.BinaryMatMulGPU and issubclass(GB.BinaryMatMulGPU, E.MatMul)
    assert dispatch.implementation(E.MatMul) is E.MatMul  # written for both devices
    assert E.MatMul not in gpu and "cuda" not in B.BinaryMatMul.__dict__.get("devices", ())


def test_the_emulation_without_the_simulator_computes_the_forward_with_floats(monkeypatch):
    from bitnet.gpu.ops.binary import on_bits
    monkeypatch.delenv("NUMBA_ENABLE_CUDASIM", raising=False)
    with emulate() as e:
        assert not on_bits(e.ones(3))
    monkeypatch.setenv("NUMBA_ENABLE_CUDASIM", "1")
    with emulate() as e:
        assert on_bits(e.ones(3))


def _signs(shape, seed):
    return np.where(np.random.default_rng(seed).standard_normal(shape) < 0, -1.0, 1.0)


@pytest.mark.parametrize("pad_value", [1.0, -1.0, 0.0])
@pytest.mark.parametrize("groups", [1, 3])
def test_binary_conv2d_op_on_cuda(pad_value, groups):
    """The primitive itself, float64 +-1 operands: outputs are exact integers (+ bias) on both devices;
    gradients are float64 sums of <= 36 terms of size <= ~3: rtol 1e-12."""
    x, w, b = _signs((2, 6, 5, 4), 0), _signs((3, 6 // groups, 3, 2), 1), np.array([0.5, -1.25, 3.0])

    def fn(x, w, b):
        return B.binary_conv2d(x, w, b, stride=(2, 1), padding=(1, 1), groups=groups, pad_value=pad_value)
    assert_same_on_both(fn, [x, w, b], rtol=1e-12, atol=1e-12)
    out, _ = assert_same_on_both(fn, [x, w, b], 0, 0, grad_of=[False, False, False], exact=True)
    assert out.dtype == np.float64


def test_binary_linear_op_on_cuda():
    x, w, b = _signs((4, 70), 2), _signs((5, 70), 3), np.linspace(-1, 1, 5)
    # gradients: float64 sums of <= 70 terms of size <= ~3: rtol 1e-12
    assert_same_on_both(lambda x, w, b: B.binary_linear(x, w, b), [x, w, b], rtol=1e-12, atol=1e-12)
    out, _ = assert_same_on_both(lambda x, w: B.binary_linear(x, w), [x, w], 0, 0, grad_of=[False, False], exact=True)
    assert out.dtype == np.float64 and np.array_equal(out, out.round())


def test_binary_layer_errors_are_still_clear_on_cuda():
    with emulate():
        conv = nn.QConv2d(6, 4, 3, padding=1).to("cuda")
        assert conv.runs_on_bits()
        with pytest.raises(ValueError, match=r"expects input \(N, 6, H, W\), got shape \(1, 5, 4, 4\)"):
            conv(bitnet.Tensor(np.ones((1, 5, 4, 4), np.float32), device="cuda"))
        dense = nn.QDense(13, 5).to("cuda")
        with pytest.raises(RuntimeError, match="different devices"):
            dense(bitnet.Tensor(np.ones((2, 13), np.float32)))
