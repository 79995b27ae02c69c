"""Packaging: the namespace mapping and a lean import."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _run(code, cwd):
    res = subprocess.run([sys.executable, "-c", code], cwd=cwd, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    return res.stdout.strip()


def test_subpackages_resolve_from_the_repository_root():
    """Started in the repository root, the source tree is used, kernels/ included."""
    out = _run("import bitnet.kernels, bitnet.models, bitnet.data; "
               "print(bitnet.kernels.__file__); print(bitnet.models.__file__); print(bitnet.data.__file__)", REPO)
    assert out.splitlines() == [str(REPO / d / "__init__.py") for d in ("kernels", "models", "data")]


def test_import_is_lean_and_needs_no_gpu(tmp_path):
    out = _run("import sys, bitnet; print('numba.cuda' in sys.modules, 'torch' in sys.modules, "
               "'h5py' in sys.modules)", tmp_path)
    assert out == "False False False"
