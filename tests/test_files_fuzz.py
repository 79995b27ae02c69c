"""A few hundred mutated model files (tests/fuzz_model_files.py; the long run there takes 10,000): each
must load as a valid model or raise BitnetFileError, never another exception, a crash or a hang."""
from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(__file__))

import fuzz_model_files  # noqa: E402


def test_mutated_files_load_or_fail_cleanly():
    res = fuzz_model_files.run(300, seed=2024, timeout=120, log=None)
    assert res["cases"] == 300
    assert not res["failures"], "\n".join(res["failures"][:20])
    # the mutations reach both outcomes (a flipped byte inside weight data is still a valid file)
    assert res["models"] > 20 and res["clean_errors"] > 100
