"""The command line finds its data without a path: --data-dir, else $BITNET_DATA, else the user cache,
downloading missing MNIST files there by default (from a local mirror here); --no-download forbids it,
and the errors name command-line options."""
from __future__ import annotations

import re

import pytest

from bitnet.cli import build_parser, main
from bitnet.data.download import DEFAULT_MIRRORS
from bitnet.data.mnist import CANONICAL_SIZES, download_idx_dataset

TRAIN = ["train", "--model", "lenet", "--epochs", "1", "--batch-size", "64", "--limit-train", "320", "--quiet"]


@pytest.fixture
def empty_cache(monkeypatch, tmp_path):
    """No BITNET_DATA; the user cache (XDG_CACHE_HOME, HOME) in an empty temporary folder."""
    monkeypatch.delenv("BITNET_DATA", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    return tmp_path / "xdg" / "bitnet" / "data"


@pytest.fixture
def mnist_mirror(data_dir, serve, monkeypatch):
    """The canonical MNIST mirrors replaced by a local server of the real files."""
    url = serve(data_dir / "mnist")
    monkeypatch.setitem(DEFAULT_MIRRORS, "mnist", (url,))
    return url


def test_train_downloads_missing_files_into_the_cache_and_trains(empty_cache, mnist_mirror, capsys):
    assert main(TRAIN) == 0
    out, err = capsys.readouterr()
    target = empty_cache / "mnist"
    assert f"downloading MNIST (11.6 MB) into {target} ...\n" in err  # one line says what and where
    assert re.fullmatch(r"test accuracy: \d\.\d{4}", out.strip().splitlines()[-1])
    files = {p.name: p.stat().st_size for p in target.iterdir()}
    assert files == CANONICAL_SIZES["mnist"]  # the four files, complete, no temporary files left
    # Found from now on: nothing is downloaded again.
    assert download_idx_dataset("mnist") == []


def test_no_download_fails_with_the_options_to_use(empty_cache, mnist_mirror, capsys):
    assert main([*TRAIN, "--no-download"]) == 2
    err = capsys.readouterr().err
    assert "mnist files not found" in err and str(empty_cache / "mnist") in err
    assert "--data-dir DIR" in err and "BITNET_DATA" in err and "leave out --no-download" in err
    assert "download=True" not in err and "data_dir=" not in err  # not the Python API's wording
    assert not empty_cache.exists()  # nothing was fetched


@pytest.mark.parametrize("command", [["train"], ["eval", "model.h5"]])
def test_train_and_eval_have_the_same_data_options(command):
    parser = build_parser()
    assert parser.parse_args(command).download is True
    assert parser.parse_args([*command, "--no-download"]).download is False
    assert parser.parse_args([*command, "--download"]).download is True  # the old option: a no-op
    assert parser.parse_args([*command, "--data-dir", "d"]).data_dir == "d"


def test_cifar10_error_says_where_to_get_the_files(tmp_path, capsys):
    assert main(["train", "--dataset", "cifar10", "--data-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "no CIFAR-10 downloader" in err and "https://www.cs.toronto.edu/~kriz/cifar.html" in err
    assert "--data-dir DIR" in err and "--no-download" not in err
