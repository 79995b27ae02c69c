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


def test_mutated_files_through_the_command_line():
    """The same mutations through `bitnet summary`, `predict` and `convert` (in the worker process):
    each ends in exit 0, or exit 2 with one message line and no traceback (docs/cli.md)."""
    res = fuzz_model_files.run(200, seed=77, timeout=120, log=None, cli_share=1.0)
    assert res["cases"] == 200
    assert not res["failures"], "\n".join(res["failures"][:20])
    assert res["models"] > 3 and res["clean_errors"] > 100


def test_the_command_line_check_sees_a_traceback(tmp_path, monkeypatch):
    """What the fuzzer calls a failure on the command line: an exception out of main, another exit
    status, or more than one message line."""
    import numpy as np

    import bitnet.cli
    src = fuzz_model_files.make_sources(str(tmp_path))[1][2]
    np.save(tmp_path / "images.npy", np.zeros((2, 28, 28), np.uint8))
    assert fuzz_model_files.cli_case(src, "summary") == fuzz_model_files.OK
    monkeypatch.setattr(bitnet.cli, "cmd_summary", lambda args: 1)
    assert fuzz_model_files.cli_case(src, "summary").startswith("bitnet summary: exit 1")
