"""Shared fixtures: where the real data sets are (../shared/data beside the checkout, or $BITNET_DATA)."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def shared_data_dir():
    """The folder holding mnist/ and fashion-mnist/, or None if this machine has none."""
    for cand in (os.environ.get("BITNET_DATA"), REPO.parent / "shared" / "data"):
        if cand and (Path(cand) / "mnist" / "train-images-idx3-ubyte.gz").exists():
            return Path(cand)
    return None


@pytest.fixture
def data_dir():
    d = shared_data_dir()
    if d is None:
        pytest.skip("MNIST files not found in $BITNET_DATA or ../shared/data")
    return d
