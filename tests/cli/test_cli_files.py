"""`bitnet train --save/--resume`, `bitnet convert`, `bitnet summary FILE`, `bitnet eval FILE`."""
from __future__ import annotations

import re

import numpy as np
import pytest

import bitnet
from bitnet.cli import main

TRAIN = ["train", "--model", "lenet-binary", "--epochs", "2", "--limit-train", "640", "--batch-size", "64",
         "--seed", "4", "--quiet"]


def _state(path):
    return bitnet.load(path).state_dict()


def test_a_killed_run_resumed_from_its_checkpoint_ends_bit_identical(data_dir, tmp_path, monkeypatch, capsys):
    args = TRAIN + ["--data-dir", str(data_dir)]
    assert main(args + ["--save", str(tmp_path / "full.h5")]) == 0
    full_out = capsys.readouterr().out
    real = bitnet.save
    saves = []

    def save_then_die(*a, **k):  # the process dies right after the epoch-1 checkpoint is written
        real(*a, **k)
        saves.append(1)
        raise KeyboardInterrupt
    monkeypatch.setattr(bitnet, "save", save_then_die)
    assert main(args + ["--save", str(tmp_path / "run.h5")]) == 130
    monkeypatch.setattr(bitnet, "save", real)
    assert bitnet.load_training_state(tmp_path / "run.h5").epoch == 1
    assert main(args + ["--save", str(tmp_path / "run.h5"), "--resume", str(tmp_path / "run.h5")]) == 0
    resumed_out = capsys.readouterr().out
    a, b = _state(tmp_path / "full.h5"), _state(tmp_path / "run.h5")
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert full_out.strip().splitlines()[-1] == resumed_out.strip().splitlines()[-1]  # same test accuracy


def test_convert_summary_and_eval(data_dir, tmp_path, capsys):
    ckpt, packed = tmp_path / "m.h5", tmp_path / "m.packed.h5"
    assert main(TRAIN[:3] + ["--epochs", "1", "--limit-train", "320", "--quiet", "--data-dir", str(data_dir),
                             "--save", str(ckpt)]) == 0
    trained = capsys.readouterr().out.strip().splitlines()[-1]
    assert main(["convert", str(ckpt), str(packed)]) == 0
    assert "bytes" in capsys.readouterr().out
    assert main(["summary", str(ckpt)]) == 0
    out = capsys.readouterr().out
    assert "lenet-binary" in out and "packed file (bitnet convert, HDF5): about" in out
    assert main(["summary", str(packed)]) == 0  # the whole table for a packed file too
    out = capsys.readouterr().out
    assert "packed file of" in out and "QConv2d" in out and "MACs per image: 8509200" in out
    assert "layers on bits in this file: 5, 10" in out
    for f in (ckpt, packed):  # the float checkpoint and the packed file agree with training's result
        assert main(["eval", str(f), "--dataset", "mnist", "--data-dir", str(data_dir)]) == 0
        last = capsys.readouterr().out.strip().splitlines()[-1]
        assert re.fullmatch(r"test accuracy: \d\.\d{4}", last) and last == trained


@pytest.mark.parametrize("argv", [["convert", "--help"], ["summary", "--help"], ["eval", "--help"], ["predict", "--help"]])
def test_help(argv, capsys):
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 0 and "usage: bitnet" in capsys.readouterr().out


def test_bad_files_are_clear_errors(tmp_path, capsys):
    bad = tmp_path / "bad.h5"
    bad.write_bytes(b"not hdf5")
    for argv in (["summary", str(bad)], ["eval", str(bad)], ["convert", str(bad), str(tmp_path / "o.h5")],
                 ["summary", str(tmp_path / "missing.h5")]):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"bitnet {argv[0]}: error: ") and str(tmp_path) in err
    assert not (tmp_path / "o.h5").exists()


def test_predict_on_idx_and_npy(data_dir, tmp_path, capsys):
    ckpt, packed = tmp_path / "m.h5", tmp_path / "p.h5"
    assert main(TRAIN[:3] + ["--epochs", "1", "--limit-train", "640", "--quiet", "--data-dir", str(data_dir),
                             "--save", str(ckpt)]) == 0
    assert main(["convert", str(ckpt), str(packed)]) == 0
    capsys.readouterr()
    from bitnet.data.idx import read_idx
    images = sorted(data_dir.glob("**/t10k-images-idx3-ubyte*"))[0]
    np.save(tmp_path / "x.npy", read_idx(images)[:4])
    outs = []
    for f, inp, extra in ((packed, images, ["--limit", "4"]), (ckpt, tmp_path / "x.npy", [])):
        assert main(["predict", str(f), str(inp)] + extra) == 0
        lines = capsys.readouterr().out.strip().splitlines()
        assert len(lines) == 4 and all(re.fullmatch(r"\d\t\d\t[01]\.\d{4}", line) for line in lines)
        outs.append([line.split("\t")[1] for line in lines])
    assert outs[0] == outs[1]  # the packed file and its checkpoint predict the same classes
    np.save(tmp_path / "wrong.npy", np.zeros((2, 3, 32, 32), np.uint8))
    assert main(["predict", str(packed), str(tmp_path / "wrong.npy")]) == 2
    assert "expects (1, 28, 28)" in capsys.readouterr().err
