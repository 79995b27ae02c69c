"""A few hundred mutated model files (tests/fuzz_model_files.py; the long run there takes 10,000): each
must load as a valid model (a checkpoint with its training state, restored) or raise BitnetFileError,
never another exception, a crash, a hang or a case that grows the worker's memory by more than
256 MB (size attacks: huge chunks, layer and zoo arguments, optimizer state dtypes)."""
from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(__file__))

import fuzz_model_files  # noqa: E402


def test_mutated_files_load_or_fail_cleanly():
    res = fuzz_model_files.run(300, seed=2024, timeout=120, log=None)
    assert res["cases"] == 300
    assert not res["failures"], "\n".join(res["failures"][:20])
    # the mutations reach both outcomes. A flipped byte inside weight data no longer loads (the CRC-32 of
    # every dataset catches it: 94 of these 300 cases loaded before the checksums, 15 after); valid
    # files come from edits that keep a file valid (gzip rewrites, optional parts deleted, bytes that
    # HDF5 does not read)
    assert res["models"] > 5 and res["clean_errors"] > 200
