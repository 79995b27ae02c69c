"""Running programs under ``mpiexec -n 2`` on this machine (loopback only): finding ``mpiexec``, the
runner, and ``check`` for a run's exit status.

The tests that launch MPI processes skip, saying why, where mpi4py or an ``mpiexec`` is missing
(``pip install -e ".[test]"`` brings both: mpi4py and MPICH's wheel). The processes import the
checkout's bitnet (``PYTHONPATH``), like the tests themselves.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
WORKERS = Path(__file__).with_name("workers.py")


def find_mpiexec():
    """(mpiexec path, None) or (None, the reason it cannot run)."""
    try:
        import mpi4py  # noqa: F401
    except ImportError:
        return None, 'mpi4py is not installed (pip install -e ".[test]" or "bitnet-bnn[mpi]")'
    for folder in (os.path.dirname(sys.executable), None):
        found = shutil.which("mpiexec", path=folder) if folder else shutil.which("mpiexec")
        if found:
            return found, None
    return None, "no mpiexec found beside this Python or on PATH (pip install mpich, or your MPI's module)"


def hydra(mpiexec) -> bool:
    """Whether ``mpiexec`` is MPICH's Hydra (which has -disable-auto-cleanup)."""
    try:
        out = subprocess.run([mpiexec, "--version"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.TimeoutExpired):
        return False
    return "HYDRA" in out.upper()


class MPIRun:
    """``mpirun(args, n=2, ...)``: run ``mpiexec -n N`` + args; returns the CompletedProcess with
    ``seconds`` added."""

    def __init__(self, mpiexec):
        self.mpiexec = mpiexec
        self.hydra = hydra(mpiexec)

    def env(self, extra=None):
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
        env.pop("BITNET_DIST_TIMEOUT", None)
        env.update(extra or {})
        return env

    def command(self, args, n=2, launcher_options=()):
        return [self.mpiexec, *launcher_options, "-n", str(n), *map(str, args)]

    def __call__(self, args, n=2, timeout=300, env=None, launcher_options=()):
        start = time.monotonic()
        res = subprocess.run(self.command(args, n, launcher_options), capture_output=True, text=True,
                             timeout=timeout, env=self.env(env), cwd=REPO)
        res.seconds = time.monotonic() - start
        return res

    def worker(self, mode, out, **kw):
        return self([sys.executable, WORKERS, mode, out], **kw)


def check(res, what="the MPI run"):
    assert res.returncode == 0, f"{what} failed ({res.returncode}):\n{res.stdout[-3000:]}\n{res.stderr[-3000:]}"
    return res
