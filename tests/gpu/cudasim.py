"""Run a check script under Numba's CUDA simulator, in its own process (``NUMBA_ENABLE_CUDASIM`` must
be set before Numba is imported, and must not leak into the other tests)."""
from __future__ import annotations

import os
import subprocess
import sys


def run_in_simulator(script: str, *args: str, timeout: float = 600) -> str:
    """Run ``python script args...`` with the simulator on; returns its stdout, fails the test with
    its output when it exits non-zero."""
    import pytest
    env = {**os.environ, "NUMBA_ENABLE_CUDASIM": "1"}
    proc = subprocess.run([sys.executable, script, *args], env=env, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        pytest.fail(f"{os.path.basename(script)} failed under the CUDA simulator (exit {proc.returncode}):\n"
                    f"{proc.stdout[-4000:]}\n{proc.stderr[-6000:]}")
    return proc.stdout
