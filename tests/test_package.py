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
               "'h5py' in sys.modules, 'cupy' in sys.modules)", tmp_path)
    assert out == "False False False False"
    # a whole CPU training step imports no GPU package either
    out = _run("import sys, numpy as np, bitnet, bitnet.functional as F\n"
               "m = bitnet.models.get('lenet-binary', seed=0)\n"
               "x = bitnet.Tensor(np.zeros((2, 1, 28, 28), np.float32))\n"
               "F.cross_entropy(m(x), np.array([1, 2])).backward()\n"
               "bitnet.optim.Adam(m.parameters(), lr=1e-3).step()\n"
               "print('numba.cuda' in sys.modules, 'cupy' in sys.modules)", tmp_path)
    assert out == "False False"
