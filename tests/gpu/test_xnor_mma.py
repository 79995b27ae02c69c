"""The tensor-core binary kernels (``bitnet.kernels.xnor_mma``): exact agreement with the CPU kernels,
with the MMA emulated, under Numba's CUDA simulator (in a subprocess: the simulator must be switched
on before Numba is imported); on a real GPU (``BITNET_TEST_CUDA=gpu``) the same checks run the real
MMA too. The layout and PTX checks are in test_bmma_layout.py."""
from __future__ import annotations

import os

import pytest

from cudasim import run_in_simulator

HERE = os.path.dirname(os.path.abspath(__file__))


@pytest.mark.parametrize("check", ["fragments", "gemm", "tiles", "sweep", "conv", "errors"])
def test_mma_kernels_match_the_cpu_kernels(check):
    out = run_in_simulator(os.path.join(HERE, "xnor_mma_checks.py"), check)
    assert f"{check}: ok" in out
