"""Data-directory resolution: argument > BITNET_DATA > user cache; clear errors."""

import gzip
import struct
from pathlib import Path

import pytest

from bitnet.data import DatasetNotFoundError, load_fashion_mnist, load_mnist, resolve_data_dir
from bitnet.data.paths import default_cache_dir


def _fake_test_split(folder: Path, n: int = 3) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    img = bytes([0, 0, 8, 3]) + struct.pack(">3I", n, 28, 28) + bytes(n * 784)
    lbl = bytes([0, 0, 8, 1]) + struct.pack(">I", n) + bytes(range(n))
    (folder / "t10k-images-idx3-ubyte.gz").write_bytes(gzip.compress(img))
    (folder / "t10k-labels-idx1-ubyte.gz").write_bytes(gzip.compress(lbl))


def test_argument_beats_env(monkeypatch, tmp_path):
    monkeypatch.setenv("BITNET_DATA", str(tmp_path / "env"))
    assert resolve_data_dir(tmp_path / "arg") == tmp_path / "arg"
    assert resolve_data_dir(str(tmp_path / "arg")) == tmp_path / "arg"


def test_env_beats_cache(monkeypatch, tmp_path):
    monkeypatch.setenv("BITNET_DATA", str(tmp_path / "env"))
    assert resolve_data_dir() == tmp_path / "env"


def test_cache_default(monkeypatch, tmp_path):
    monkeypatch.delenv("BITNET_DATA", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert resolve_data_dir() == tmp_path / "xdg" / "bitnet" / "data"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert default_cache_dir() == tmp_path / "home" / ".cache" / "bitnet" / "data"


def test_loader_uses_env_then_argument(monkeypatch, tmp_path):
    _fake_test_split(tmp_path / "env" / "mnist", n=3)
    _fake_test_split(tmp_path / "arg" / "mnist", n=4)
    monkeypatch.setenv("BITNET_DATA", str(tmp_path / "env"))
    assert len(load_mnist("test", checksums={}, verify=False)[0]) == 3
    assert len(load_mnist("test", data_dir=tmp_path / "arg", checksums={}, verify=False)[0]) == 4


def test_dataset_folder_given_directly(tmp_path):
    _fake_test_split(tmp_path / "my-digits", n=2)
    x, y = load_mnist("test", data_dir=tmp_path / "my-digits", checksums={}, verify=False)
    assert x.shape == (2, 28, 28) and y.tolist() == [0, 1]


def test_missing_directory_message(monkeypatch, tmp_path):
    monkeypatch.delenv("BITNET_DATA", raising=False)
    missing = tmp_path / "nowhere"
    with pytest.raises(DatasetNotFoundError) as info:
        load_fashion_mnist("train", data_dir=missing)
    msg = str(info.value)
    assert isinstance(info.value, FileNotFoundError)
    assert str(missing / "fashion-mnist") in msg and str(missing) in msg
    assert "train-images-idx3-ubyte.gz" in msg and "train-labels-idx1-ubyte.gz" in msg
    # Python callers are told the arguments, not the command-line options (tests/cli: the other wording)
    assert "BITNET_DATA" in msg and "data_dir=DIR" in msg and "download=True" in msg and "--" not in msg
    assert str(missing / "fashion-mnist") + " (needs internet" in msg  # where a download would go


def test_partial_files_are_missing(tmp_path):
    _fake_test_split(tmp_path / "mnist")
    (tmp_path / "mnist" / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(DatasetNotFoundError, match="t10k-labels-idx1-ubyte"):
        load_mnist("test", data_dir=tmp_path)


def test_env_dir_named_in_error(monkeypatch, tmp_path):
    monkeypatch.setenv("BITNET_DATA", str(tmp_path / "from-env"))
    with pytest.raises(DatasetNotFoundError, match="from-env"):
        load_mnist("test")
