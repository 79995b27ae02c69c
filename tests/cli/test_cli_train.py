"""The `bitnet` command line: train's output contract and its errors."""
from __future__ import annotations

import re
import subprocess
import sys

import pytest

from bitnet.cli import main


def test_train_small_run_prints_accuracy_last(data_dir, capsys):
    rc = main(["train", "--model", "lenet", "--dataset", "mnist", "--data-dir", str(data_dir),
               "--epochs", "1", "--batch-size", "64", "--limit-train", "640", "--seed", "3", "--quiet"])
    assert rc == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert re.fullmatch(r"test accuracy: \d\.\d{4}", lines[-1]), lines[-1]
    # 10 steps on 640 images already beat chance (0.10) by far
    assert float(lines[-1].split(":")[1]) > 0.3


def test_train_is_reproducible_with_a_seed(data_dir, capsys):
    args = ["train", "--data-dir", str(data_dir), "--epochs", "1", "--batch-size", "64",
            "--limit-train", "320", "--seed", "7", "--quiet"]
    main(args)
    first = capsys.readouterr().out
    main(args)
    assert capsys.readouterr().out == first


def test_missing_data_dir_is_a_clear_error(tmp_path, capsys):
    rc = main(["train", "--data-dir", str(tmp_path / "nowhere"), "--epochs", "1"])
    err = capsys.readouterr().err
    assert rc == 2
    assert "nowhere" in err and "train-images-idx3-ubyte" in err and "BITNET_DATA" in err


def test_bad_values_are_clear_errors(data_dir, capsys):
    with pytest.raises(SystemExit) as exc:  # refused as the options are parsed, before any data is read
        main(["train", "--data-dir", str(data_dir), "--epochs", "0"])
    assert exc.value.code == 2
    assert "argument --epochs: expected a whole number from 1 to 100000 (passes over the training set), got '0'" \
        in capsys.readouterr().err


def test_unknown_model_is_rejected_by_argparse(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["train", "--model", "no-such-model"])
    assert exc.value.code == 2
    assert "lenet" in capsys.readouterr().err  # the valid choices are listed


@pytest.mark.parametrize("argv", [["--help"], ["train", "--help"], ["bench", "train", "--help"]])
def test_every_command_has_help(argv):
    res = subprocess.run([sys.executable, "-m", "bitnet.cli", *argv], capture_output=True, text=True)
    assert res.returncode == 0 and "usage:" in res.stdout
