"""A small `bitnet train` checkpoint and its packed file, for the CLI tests that read model files."""
import os
from pathlib import Path

import pytest

from bitnet.cli import main

REPO = Path(__file__).resolve().parents[2]


def shared_data():
    """The folder holding mnist/ ($BITNET_DATA or ../shared/data), or None."""
    for cand in (os.environ.get("BITNET_DATA"), REPO.parent / "shared" / "data"):
        if cand and (Path(cand) / "mnist" / "train-images-idx3-ubyte.gz").exists():
            return Path(cand)
    return None


def train_and_convert(tmp_path_factory, train_args, name) -> dict:
    """``bitnet train TRAIN_ARGS --save m.h5`` then ``bitnet convert``: {"data", "ckpt", "packed"}."""
    data = shared_data()
    if data is None:
        pytest.skip("MNIST files not found in $BITNET_DATA or ../shared/data")
    folder = tmp_path_factory.mktemp(name)
    ckpt, packed = folder / "m.h5", folder / "m.packed.h5"
    assert main(list(train_args) + ["--data-dir", str(data), "--save", str(ckpt)]) == 0
    assert main(["convert", str(ckpt), str(packed)]) == 0
    return {"data": data, "ckpt": ckpt, "packed": packed}
