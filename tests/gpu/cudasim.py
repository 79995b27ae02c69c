"""Run a check script under Numba's CUDA simulator, in its own process (``NUMBA_ENABLE_CUDASIM`` must
be set before Numba is imported, and must not leak into the other tests). With
``BITNET_TEST_CUDA=gpu`` in the environment the same scripts run on the real GPU instead
(DEVELOPERS.md)."""
from __future__ import annotations

import os
import subprocess
import sys


REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def simulator_env() -> dict:
    """This process's environment with the simulator switched on (off for ``BITNET_TEST_CUDA=gpu``),
    and this checkout first on PYTHONPATH: a script's own folder (tests/gpu) is its sys.path[0], so
    ``import bitnet`` would otherwise find an installed copy (e.g. another checkout's editable install)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([REPO] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
    if env.get("BITNET_TEST_CUDA") == "gpu":
        env.pop("NUMBA_ENABLE_CUDASIM", None)
    else:
        env["NUMBA_ENABLE_CUDASIM"] = "1"
    return env


def run_in_simulator(script: str, *args: str, timeout: float = 600) -> str:
    """Run ``python script args...`` with the simulator on; returns its stdout, fails the test with
    its output when it exits non-zero."""
    import pytest
    env = simulator_env()
    proc = subprocess.run([sys.executable, script, *args], env=env, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        where = "on the GPU" if "NUMBA_ENABLE_CUDASIM" not in env else "under the CUDA simulator"
        pytest.fail(f"{' '.join([os.path.basename(script), *args])} failed {where} (exit {proc.returncode}):\n"
                    f"{proc.stdout[-4000:]}\n{proc.stderr[-6000:]}")
    return proc.stdout


def require_ptx_compiler(cc) -> None:
    """Skip the calling test where ``numba.cuda.compile_ptx`` cannot work here: a trivial kernel
    fails to compile (no CUDA toolkit: NVVM / NVRTC missing), or this process runs the simulator."""
    import pytest
    from numba import config, cuda
    if config.ENABLE_CUDASIM:
        pytest.skip("NUMBA_ENABLE_CUDASIM is set in this process: compile_ptx needs the real CUDA target")

    def probe(out):
        out[cuda.grid(1)] = 1.0
    try:
        cuda.compile_ptx(probe, "void(float32[::1])", cc=cc)
    except Exception as e:  # noqa: BLE001 - NvvmSupportError, CudaSupportError, missing libraries ...
        pytest.skip(f"numba.cuda.compile_ptx is unavailable here (no CUDA toolkit): {str(e).splitlines()[0]}")
