"""The float-layer CUDA kernels (``bitnet.kernels.cuda_float``): every wrapper against NumPy and the
CPU layers in the Numba CUDA simulator (one subprocess running ``cuda_float_checks.py``, since
``NUMBA_ENABLE_CUDASIM`` must be set before numba is imported), and every kernel compiled to PTX
for a real GPU with ``numba.cuda.compile_ptx`` (no GPU needed; skipped without the CUDA toolkit)."""
from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

from cudasim import require_ptx_compiler, simulator_env

CHECKS_FILE = Path(__file__).with_name("cuda_float_checks.py")
_spec = importlib.util.spec_from_file_location("cuda_float_checks", CHECKS_FILE)
checks = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(checks)  # imports only NumPy: the check names, without numba.cuda


@pytest.fixture(scope="module")
def simulator_results():
    """Runs every check once in a simulator subprocess: {check: None or its traceback}."""
    env = simulator_env()
    proc = subprocess.run([sys.executable, str(CHECKS_FILE)], env=env, capture_output=True, text=True,
                          timeout=600, cwd=Path(__file__).resolve().parents[2])
    lines = proc.stdout.strip().splitlines()
    try:
        results = json.loads(lines[-1])
    except (IndexError, json.JSONDecodeError):
        pytest.fail(f"the simulator checks did not report (exit {proc.returncode}):\n"
                    f"stdout:\n{proc.stdout[-4000:]}\nstderr:\n{proc.stderr[-4000:]}")
    failed = [name for name, err in results.items() if err is not None]
    assert (proc.returncode == 0) == (not failed), (f"exit {proc.returncode}, failed checks {failed}:\n"
                                                    f"{proc.stderr[-4000:]}")
    return results


def test_every_check_ran(simulator_results):
    assert set(simulator_results) == set(checks.CHECKS)
    assert len(checks.CHECKS) >= 9


@pytest.mark.parametrize("name", sorted(checks.CHECKS))
def test_simulator(simulator_results, name):
    err = simulator_results[name]
    assert err is None, f"check {name} failed in the CUDA simulator:\n{err}"


@pytest.mark.parametrize("cc", [(7, 5), (9, 0)], ids=["sm_75", "sm_90"])
def test_kernels_compile_to_ptx(cc):
    """Every kernel, with the argument types the wrappers launch it with, compiles for a real GPU.
    This process uses numba's real CUDA target (no simulator): NVVM is needed, no GPU or driver."""
    from numba import cuda
    require_ptx_compiler(cc)
    from bitnet.kernels import cuda_float as cf
    assert len(cf.KERNELS) == 10
    for name, fn, sig in cf.KERNELS:
        ptx, _ = cuda.compile_ptx(fn, sig, cc=cc)
        assert ".entry" in ptx and f".target sm_{cc[0]}{cc[1]}" in ptx, name
        if name == "sgemm_nt":
            assert ".shared" in ptx and "bar.sync" in ptx  # the tiles go through shared memory
            assert "ld.local" not in ptx and "st.local" not in ptx, "register tile spilled to local memory"
        if name == "channel_affine":
            assert "mul.rn.f32" in ptx and "fma.rn.f32" not in ptx  # product rounded, not fused
        if name in ("im2col", "unary", "sgemm_nt", "maxpool", "channel_affine", "add"):
            assert ".f64" not in ptx, f"{name}: float32 kernel computes in float64"
        if name == "avgpool":
            assert "add.rn.f64" in ptx or "add.f64" in ptx  # float64 sums, as on the CPU
