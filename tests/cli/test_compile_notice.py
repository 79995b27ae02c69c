"""`bitnet train` says "compiling kernels ..." when Numba really compiles (a cold on-disk cache), and only then."""
from __future__ import annotations

import importlib.util
import io
import os
import subprocess
import sys
from pathlib import Path

from numba.core import event

from bitnet.compile_notice import NOTICE, _CompileNotice

REPO = Path(__file__).resolve().parents[2]


def test_train_announces_compilation_in_the_first_run_only(data_dir, tmp_path):
    env = dict(os.environ, NUMBA_CACHE_DIR=str(tmp_path / "numba-cache"), BITNET_DATA=str(data_dir))
    cmd = [sys.executable, "-m", "bitnet.cli", "train", "--model", "lenet-binary", "--epochs", "1",
           "--limit-train", "64", "--batch-size", "64"]
    runs = [subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=900) for _ in range(2)]
    for res in runs:
        assert res.returncode == 0, res.stderr
        assert res.stdout.strip().splitlines()[-1].startswith("test accuracy: ")
    assert runs[0].stderr.count(NOTICE) == 1, runs[0].stderr  # a fresh cache: every kernel compiles
    assert NOTICE not in runs[1].stderr, runs[1].stderr  # every kernel came from the cache


def _module(tmp_path):
    """A module with a cached and an uncached jitted function, loaded from a file (Numba caches
    only functions that live in files)."""
    path = tmp_path / "notice_probe.py"
    path.write_text("import numba\n\n"
                    "@numba.njit(cache=True)\ndef cached(x):\n    return x + 1\n\n"
                    "@numba.njit\ndef uncached(x):\n    return x + 2\n")
    spec = importlib.util.spec_from_file_location("notice_probe", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_notice_only_for_cached_kernels_and_once(tmp_path):
    mod = _module(tmp_path)
    out = io.StringIO()
    with event.install_listener("numba:compile", _CompileNotice("compiling!", out)):
        mod.uncached(1)  # compiled in every process: "first run only" would be untrue
        assert out.getvalue() == ""
        mod.cached(1)
        mod.cached(1.5)  # another signature compiles too, but the line was said already
    assert out.getvalue() == "compiling!\n"
