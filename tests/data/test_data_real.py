"""The real MNIST and Fashion-MNIST files from the shared data folder."""

import os
from pathlib import Path

import numpy as np
import pytest

from bitnet.data import load_fashion_mnist, load_mnist, verify_checksum
from bitnet.data.mnist import CANONICAL_SHA256


def _shared_data_dir() -> Path:
    env = os.environ.get("BITNET_DATA")
    if env and (Path(env) / "mnist").is_dir():
        return Path(env)
    return Path(__file__).resolve().parents[2].parent / "shared" / "data"


SHARED = _shared_data_dir()
LOADERS = {"mnist": load_mnist, "fashion-mnist": load_fashion_mnist}


def _require(dataset: str) -> Path:
    folder = SHARED / dataset
    if not (folder / "train-images-idx3-ubyte.gz").is_file():
        pytest.skip(f"real {dataset} files not found in {folder} (set BITNET_DATA to a folder holding {dataset}/)")
    return folder


@pytest.mark.parametrize("dataset", sorted(LOADERS))
@pytest.mark.parametrize("split,count", [("train", 60000), ("test", 10000)])
def test_real_dataset_loads(dataset, split, count):
    _require(dataset)
    images, labels = LOADERS[dataset](split, data_dir=SHARED)
    assert images.shape == (count, 28, 28) and images.dtype == np.uint8
    assert labels.shape == (count,) and labels.dtype == np.int64
    assert labels.min() == 0 and labels.max() == 9
    assert set(np.unique(labels)) == set(range(10))
    assert 0 < images.mean() < 255 and images.max() == 255


@pytest.mark.parametrize("dataset", sorted(LOADERS))
def test_real_checksums_match_shared_sha256sums(dataset):
    folder = _require(dataset)
    published = dict(line.split()[::-1] for line in (folder / "SHA256SUMS").read_text().splitlines() if line.strip())
    assert published == CANONICAL_SHA256[dataset]
    for name, digest in CANONICAL_SHA256[dataset].items():
        assert verify_checksum(folder / name, digest) == digest


def test_real_dataset_folder_given_directly():
    folder = _require("mnist")
    images, labels = load_mnist("test", data_dir=folder)
    assert images.shape == (10000, 28, 28)
    assert labels[:5].tolist() == [7, 2, 1, 0, 4]  # the well-known first MNIST test labels


@pytest.mark.parametrize("dataset", sorted(LOADERS))
def test_raw_digests_are_those_of_the_decompressed_files(dataset):
    """CANONICAL_RAW_SHA256 checks files saved without .gz (hashed in memory, nothing written)."""
    import gzip
    import hashlib

    from bitnet.data.mnist import CANONICAL_RAW_SHA256
    folder = _require(dataset)
    for name, digest in CANONICAL_RAW_SHA256[dataset].items():
        assert hashlib.sha256(gzip.decompress((folder / (name + ".gz")).read_bytes())).hexdigest() == digest
