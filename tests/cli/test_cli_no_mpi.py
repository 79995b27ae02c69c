"""``bitnet train --distributed`` where mpi4py cannot be imported: one error line naming what to install."""
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_distributed_without_mpi4py_is_one_error_line(tmp_path):
    fake = tmp_path / "site" / "mpi4py"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("raise ImportError('no MPI library here')\n")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(tmp_path / "site"), str(REPO)]))
    res = subprocess.run([sys.executable, "-m", "bitnet.cli", "train", "--distributed", "--data-dir", str(tmp_path),
                          "--limit-train", "64", "--epochs", "1"], capture_output=True, text=True, env=env,
                         cwd=tmp_path, timeout=300)
    assert res.returncode == 2, res.stderr
    assert "Traceback" not in res.stderr
    (line,) = res.stderr.strip().splitlines()
    assert line.startswith("bitnet train: error: distributed training: mpi4py is not installed; "), line
