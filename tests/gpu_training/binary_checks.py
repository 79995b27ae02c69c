"""Binary layers training on "cuda" with the forward pass on bits (bitnet/gpu/ops/binary.py), run under
Numba's CUDA simulator by tests/gpu_training/test_gpu_binary.py (or on a real GPU:
``BITNET_TEST_CUDA=gpu``, or ``python tests/gpu_training/binary_checks.py`` there).

For each binary QConv2d / QDense (sign input and kernel quantizers), three runs of forward and
backward: the CPU on bits, "cuda" on bits, "cuda" on the float path (``forward_on_bits = False``).
The outputs are integers (+ the bias, added once) on all three: EXACTLY equal. Gradients: the bits
path's backward is the GPU float path's, on the same lowered input, so they are equal too (checked
exactly in the simulator; within tolerance on a real GPU, where cuBLAS may pick its GEMM algorithm by
the operands' alignment); against the CPU they agree to float32 rounding of sums of up to ~100 terms
of size <= ~3 (rtol 1e-5, atol 1e-4). Tiny shapes: the
simulator runs one Python thread per CUDA thread."""
from __future__ import annotations

import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import bitnet.nn as nn  # noqa: E402
from bitnet.gpu.arrays import xp  # noqa: E402
from bitnet.gpu.ops import binary as GB  # noqa: E402
from layer_compare import assert_layers_agree, run_layer  # noqa: E402

TOL = dict(rtol=1e-5, atol=1e-4)
EXACT_GRADS = os.environ.get("BITNET_TEST_CUDA") != "gpu"  # the simulator (emulated arrays): same sums, same bits


def _input(shape, seed=7):
    x = (np.random.default_rng(seed).standard_normal(shape) * 0.7).astype(np.float32)
    x.reshape(-1)[:4] = [0.0, -0.0, 1.0, -1.0]  # sign(0) = sign(-0.0) = +1 on every path
    return x


def _check_layer(make, shape, what):
    x = _input(shape)
    layer = make()
    assert layer.runs_on_bits(), what
    cpu = run_layer(make, x, "cpu", on_bits=True)
    bits = run_layer(make, x, "cuda", on_bits=True)
    flt = run_layer(make, x, "cuda", on_bits=False)
    assert_layers_agree(bits, cpu, exact_out=True, what=f"{what}: cuda bits vs cpu bits", **TOL)
    assert_layers_agree(bits, flt, exact_out=True, what=f"{what}: cuda bits vs cuda float", exact_grads=EXACT_GRADS,
                        **TOL)
    return bits


def _conv_cases():
    r = lambda: np.random.default_rng(11)  # noqa: E731 - the same weights at every call
    return {
        "pad+1": (lambda: nn.QConv2d(5, 4, 3, padding=1, rng=r()), (2, 5, 5, 4)),
        "pad-1": (lambda: nn.QConv2d(5, 4, 3, padding=1, pad_value=-1, rng=r()), (2, 5, 5, 4)),
        "pad0": (lambda: nn.QConv2d(5, 4, 3, padding=1, pad_value=0, rng=r()), (2, 5, 5, 4)),
        "pad0_stride2_rect": (lambda: nn.QConv2d(3, 3, (3, 2), stride=2, padding=(2, 1), pad_value=0, rng=r()),
                              (1, 3, 6, 5)),
        "groups": (lambda: nn.QConv2d(6, 4, 3, padding=1, pad_value=-1, groups=2, bias=False, rng=r()),
                   (2, 6, 4, 4)),
        "groups_pad0_dilation": (lambda: nn.QConv2d(9, 6, 2, padding=1, pad_value=0, dilation=2, groups=3, rng=r()),
                                 (1, 9, 5, 5)),
        "1x1": (lambda: nn.QConv2d(7, 5, 1, rng=r()), (2, 7, 3, 3)),
        "k67": (lambda: nn.QConv2d(67, 3, 2, stride=2, padding=1, pad_value=-1, rng=r()), (1, 67, 3, 3)),
        "channel_scale": (lambda: nn.QConv2d(5, 4, 3, padding=1, scaling="channel", rng=r()), (1, 5, 4, 4)),
    }


def check_conv():
    for what, (make, shape) in _conv_cases().items():
        _check_layer(make, shape, f"conv {what}")


def check_dense():
    r = lambda: np.random.default_rng(5)  # noqa: E731
    cases = {"k13": (lambda: nn.QDense(13, 5, rng=r()), (4, 13)),
             "k70_no_bias": (lambda: nn.QDense(70, 3, bias=False, rng=r()), (3, 70)),
             "k64": (lambda: nn.QDense(64, 4, rng=r()), (2, 64)),
             "channel_scale": (lambda: nn.QDense(13, 5, scaling="channel", rng=r()), (4, 13))}
    for what, (make, shape) in cases.items():
        _check_layer(make, shape, f"dense {what}")


def check_mma():
    """The 1-bit tensor-core kernels (emulated MMA in the simulator) give the same numbers."""
    GB.binary_kernels = "mma"
    try:
        cases = _conv_cases()
        for what in ("pad0", "groups"):
            _check_layer(*cases[what], f"mma conv {what}")
        r = lambda: np.random.default_rng(5)  # noqa: E731
        _check_layer(lambda: nn.QDense(70, 3, rng=r()), (3, 70), "mma dense k70")
    finally:
        GB.binary_kernels = None


def check_chunks():
    """Batches split into several launches (rows per launch capped) give the same outputs."""
    old = GB.MAX_ROWS
    GB.MAX_ROWS = 20  # a 4x4 output (16 rows per image): one image per launch; dense: 20 rows per launch
    try:
        r = lambda: np.random.default_rng(2)  # noqa: E731
        _check_layer(lambda: nn.QConv2d(5, 4, 3, padding=1, pad_value=0, rng=r()), (3, 5, 4, 4), "chunked conv")
        _check_layer(lambda: nn.QDense(13, 5, rng=r()), (45, 13), "chunked dense")
    finally:
        GB.MAX_ROWS = old


def check_correction():
    """The device's zero-padding correction equals the CPU kernels' (bitnet.kernels.xnor_conv)."""
    from bitnet.kernels.xnor_conv import zero_pad_correction
    from bitnet.gpu.arrays import to_host
    rng = np.random.default_rng(0)
    for w_shape, hw, stride, padding, dilation in [((4, 3, 3, 3), (5, 4), (1, 1), (1, 1), (1, 1)),
                                                   ((2, 5, 3, 2), (6, 5), (2, 1), (2, 1), (1, 2)),
                                                   ((3, 1, 1, 1), (3, 3), (1, 1), (1, 1), (1, 1))]:
        w = np.where(rng.standard_normal(w_shape) < 0, -1, 1).astype(np.float32)
        got = GB.zero_pad_correction(xp(), xp().asarray(w), hw, stride, padding, dilation)
        want = zero_pad_correction(w, hw, stride, padding, dilation)
        assert got.dtype == np.int32 and got.shape == want.shape
        np.testing.assert_array_equal(to_host(got), want)


CHECKS = {"conv": check_conv, "dense": check_dense, "mma": check_mma, "chunks": check_chunks,
          "correction": check_correction}


if __name__ == "__main__":
    for name in sys.argv[1:] or CHECKS:
        CHECKS[name]()
        print(f"{name}: ok", flush=True)
