"""Run a snippet in a fresh Python whose address space is capped at what it uses after its imports
plus a little headroom (``resource.RLIMIT_AS``): an allocation a file did not earn ends in a
``MemoryError`` (a failed test) instead of passing unnoticed."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def run_limited(setup: str, code: str, headroom_mb: int = 64, timeout: float = 120) -> subprocess.CompletedProcess:
    """Run ``setup`` (imports, building the hostile input) unlimited, then ``code`` with the address
    space capped at the current size + ``headroom_mb``; returns the finished process (text output)."""
    program = "\n".join([
        "import resource",
        textwrap.dedent(setup),
        "_vm = [int(l.split()[1]) * 1024 for l in open('/proc/self/status') if l.startswith('VmSize:')][0]",
        f"_cap = _vm + {headroom_mb} * 2**20",
        "resource.setrlimit(resource.RLIMIT_AS, (_cap, resource.getrlimit(resource.RLIMIT_AS)[1]))",
        textwrap.dedent(code),
    ])
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
               OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", NUMBA_NUM_THREADS="1")
    return subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, timeout=timeout, env=env,
                          cwd=str(REPO))
