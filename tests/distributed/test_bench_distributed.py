"""``bitnet bench distributed`` runs 1 and 2 processes and writes its records (a smoke test: 1 round of 1
step; the numbers themselves belong in docs/benchmarks.md)."""
from __future__ import annotations

import json
import subprocess
import sys

from mpi_helpers import REPO


def test_bench_distributed_smoke(mpirun, tmp_path):
    out = tmp_path / "bench.json"
    res = subprocess.run([sys.executable, "-m", "bitnet.cli", "bench", "distributed", "--rounds", "1", "--steps", "1",
                          "--json", out], capture_output=True, text=True, env=mpirun.env(), cwd=REPO, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    records = json.loads(out.read_text())
    runs, estimate = records[:-1], records[-1]
    assert [r["processes"] for r in runs][-2:] == [2, 2] and runs[0]["processes"] == 1
    assert all(r["step_s"] > 0 and r["global_batch"] == 128 for r in runs)
    assert runs[0]["allreduce_s"] == 0 and runs[-1]["allreduce_s"] > 0 and runs[-1]["bare_allreduce_s"] > 0
    assert [e["machines"] for e in estimate["estimate"]] == [8, 64]
    assert "ring allreduce estimate at 10 Gbit/s" in res.stdout and "64 machines" in res.stdout
