"""Hostile files and inputs on the command line: every one exit status 2 (1 for a checkpoint that cannot
be written in the middle of training) and one message line naming what was received and expected,
no traceback; text from files printed escaped; options checked as they are parsed; --resume and
eval / predict checked against what the model file records about its training."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
from hdf5_damage import move_root

import bitnet
from bitnet import nn
from bitnet.cli import main
from trained_files import train_and_convert
from bitnet.io import describe

REPO = Path(__file__).resolve().parents[2]
TRAIN = ["train", "--model", "lenet-binary", "--epochs", "1", "--limit-train", "320", "--batch-size", "64",
         "--lr", "2e-3", "--quiet"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A checkpoint of `bitnet train` (its record: mnist) and its packed file."""
    return train_and_convert(tmp_path_factory, TRAIN, "trained")


def _error_line(capsys, code_expected, rc):
    """The one line on stderr (a warning line may come before it), after checking the exit status."""
    err = capsys.readouterr().err
    assert rc == code_expected, err
    assert "Traceback" not in err
    lines = [line for line in err.strip().splitlines() if " warning: " not in line]
    assert len(lines) == 1, err
    return lines[0]


# -- numeric options, checked as they are parsed ---------------------------------------------------

@pytest.mark.parametrize("argv,option,expected", [
    (["train", "--limit-train", "0"], "--limit-train", "a whole number >= 1"),
    (["train", "--limit-train", "-59000"], "--limit-train", "a whole number >= 1"),
    (["train", "--epochs", "0"], "--epochs", "a whole number from 1 to 100000"),
    (["train", "--batch-size", "100000"], "--batch-size", "a whole number from 1 to 65536"),
    (["train", "--lr", "nan"], "--lr", "a finite number > 0 and <= 10"),
    (["train", "--lr", "0"], "--lr", "a finite number > 0"),
    (["train", "--weight-decay", "-0.1"], "--weight-decay", "a finite number >= 0"),
    (["train", "--seed", "-1"], "--seed", "a whole number from 0"),
    (["train", "--warmup-steps", "1.5"], "--warmup-steps", "a whole number from 0"),
    (["predict", "f.h5", "x.npy", "--limit", "0"], "--limit", "a whole number >= 1"),
    (["predict", "f.h5", "x.npy", "--limit", "-1"], "--limit", "a whole number >= 1"),
    (["eval", "f.h5", "--batch-size", "0"], "--batch-size", "a whole number from 1"),
    (["summary", "f.h5", "--input-shape", "1,65536,65536"], "--input-shape", "C,H,W: three whole numbers >= 1, at most 1048576 values"),
    (["summary", "f.h5", "--input-shape", "0,28,28"], "--input-shape", "C,H,W: three whole numbers >= 1"),
    (["summary", "f.h5", "--input-shape", "28,28"], "--input-shape", "C,H,W: three whole numbers >= 1"),
    (["bench", "model", "--rounds", "0"], "--rounds", "a whole number from 1"),
    (["bench", "train", "--busy", "-1"], "--busy", "a whole number from 0"),
])
def test_numeric_options_refused_as_parsed(argv, option, expected, capsys, monkeypatch):
    monkeypatch.setattr("bitnet.data.datasets.load_splits", lambda *a, **k: pytest.fail("data loaded"))
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    value = argv[argv.index(option) + 1]
    assert f"error: argument {option}: expected {expected}" in last and f"got {value!r}" in last, last


def test_warmup_longer_than_the_run(trained, capsys):
    line = _error_line(capsys, 2, main(TRAIN + ["--data-dir", str(trained["data"]), "--warmup-steps", "5"]))
    assert line.endswith("--warmup-steps 5: expected fewer than the run's 5 iterations (1 epochs of 5 batches), "
                         "or --schedule constant")


# -- damaged files ---------------------------------------------------------------------------------

def test_damaged_superblock_is_one_clear_error_for_every_command(trained, tmp_path, capsys):
    """The superblock's root address moved past the end of the file (checksum kept valid)."""
    x = tmp_path / "x.npy"
    np.save(x, np.zeros((2, 28, 28), np.uint8))
    for name in ("ckpt", "packed"):
        src = trained[name].read_bytes()
        for address in (len(src) + 4096, 2 ** 40, 49):
            bad = tmp_path / f"bad-{name}-{address}.h5"
            bad.write_bytes(move_root(src, address))
            for argv in (["summary", str(bad)], ["predict", str(bad), str(x)], ["eval", str(bad)],
                         ["convert", str(bad), str(tmp_path / "o.h5")],
                         ["train", "--resume", str(bad), "--data-dir", str(trained["data"])]):
                line = _error_line(capsys, 2, main(argv))
                assert line.startswith(f"bitnet {argv[0]}: error: ") and str(bad) in line, line
    assert not (tmp_path / "o.h5").exists()


def test_reader_errors_of_any_type_name_the_file(trained, monkeypatch, capsys):
    def broken(path):
        raise KeyError("Unable to synchronously open object (address of object past end of allocation)")
    monkeypatch.setattr("bitnet.io.describe", broken)
    line = _error_line(capsys, 2, main(["summary", str(trained["packed"])]))
    assert f"{trained['packed']}: (file): expected a readable bitnet model file, found KeyError" in line


def test_escape_sequences_from_files_are_printed_escaped(trained, tmp_path, capsys):
    bad = tmp_path / "evil.h5"
    bad.write_bytes(trained["ckpt"].read_bytes())
    with h5py.File(bad, "r+") as f:
        f.attrs["trained_on"] = np.bytes_(json.dumps({"dataset": "\x1b[2J\x1b]0;pwned\x07", "input_shape": [1, 28, 28],
                                                      "num_classes": 10}).encode())
    for argv in (["eval", str(bad)], ["predict", str(bad), str(bad)], ["convert", str(bad), str(tmp_path / "o.h5")]):
        line = _error_line(capsys, 2, main(argv))
        assert "\x1b" not in line and "\x07" not in line and "\\x1b[2J" in line and "trained_on" in line, line


def test_escapes_in_dataset_names_and_optimizer_class(trained, tmp_path, capsys):
    extra = tmp_path / "extra.h5"
    extra.write_bytes(trained["ckpt"].read_bytes())
    with h5py.File(extra, "r+") as f:
        f["weights"].create_dataset("\x1b]0;title\x07", data=np.zeros(3, np.float32))
    line = _error_line(capsys, 2, main(["eval", str(extra)]))
    assert "\x1b" not in line and "\x07" not in line and "weights/\\x1b]0;title\\x07" in line, line
    opt = tmp_path / "opt.h5"
    opt.write_bytes(trained["ckpt"].read_bytes())
    with h5py.File(opt, "r+") as f:
        f["training/optimizer"].attrs["class"] = np.bytes_(b"\x1b[31mAdam\x1b[0m")
    line = _error_line(capsys, 2, main(["train", "--resume", str(opt), "--data-dir", str(trained["data"])]))
    assert "\x1b" not in line and "\\x1b[31mAdam" in line, line


def test_damaged_training_state_is_one_message(trained, tmp_path, capsys):
    for groups in ("{}", "[{}]", "[1, 2]"):
        bad = tmp_path / "state.h5"
        bad.write_bytes(trained["ckpt"].read_bytes())
        with h5py.File(bad, "r+") as f:
            f["training/optimizer"].attrs["param_groups"] = np.bytes_(groups.encode())
        line = _error_line(capsys, 2, main(["train", "--resume", str(bad), "--data-dir", str(trained["data"])]))
        assert line.startswith(f"bitnet train: error: --resume {bad}: ") or line.startswith(
            f"bitnet train: error: {bad}: "), line


def test_summary_escapes_names_from_the_file(tmp_path, capsys):
    model = bitnet.nn.Sequential(bitnet.nn.Dense(4, 3))
    path = tmp_path / "m.h5"
    bitnet.save(model, path, input_shape=(4,))
    import zlib
    with h5py.File(path, "r+") as f:
        arch = json.loads(zlib.decompress(bytes(f.attrs["architecture"])))
        arch["children"][0]["name"] = "\x1b[31mred\x1b[0m"
        f.attrs["architecture"] = np.void(zlib.compress(json.dumps(arch).encode()))
        f["weights"].move("0.weight", "\x1b[31mred\x1b[0m.weight")
        f["weights"].move("0.bias", "\x1b[31mred\x1b[0m.bias")
    rc = main(["summary", str(path)])
    out = capsys.readouterr().out
    assert rc == 0 and "\x1b" not in out and "\\x1b[31mred" in out, out


# -- what the file records, --resume, eval and predict --------------------------------------------

def test_train_records_what_the_model_was_trained_on(trained):
    for name in ("ckpt", "packed"):  # convert carries the record into the packed file
        rec = describe(trained[name])["trained_on"]
        assert rec["dataset"] == "mnist" and rec["input_shape"] == [1, 28, 28] and rec["num_classes"] == 10
        assert rec["options"]["model"] == "lenet-binary" and rec["options"]["lr"] == 0.002
        assert rec["options"]["limit_train"] == 320 and rec["options"]["epochs"] == 1


def test_files_without_a_record_still_load(tmp_path):
    bitnet.save(bitnet.models.get("lenet", seed=0), tmp_path / "old.h5")
    assert describe(tmp_path / "old.h5")["trained_on"] is None
    bitnet.load(tmp_path / "old.h5")


def test_resume_refuses_options_that_differ_from_the_saved_run(trained, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr("bitnet.data.datasets.load_splits", lambda *a, **k: pytest.fail("data loaded"))
    argv = ["train", "--resume", str(trained["ckpt"]), "--data-dir", str(trained["data"])]
    line = _error_line(capsys, 2, main(argv + ["--dataset", "fashion-mnist", "--lr", "0.01", "--batch-size", "64"]))
    assert "the saved run used other options: --dataset fashion-mnist (the saved run: mnist), --lr 0.01 (the " \
           "saved run: 0.002); leave them out" in line
    line = _error_line(capsys, 2, main(argv + ["--model", "lenet"]))
    assert "--model lenet (the saved run: lenet-binary)" in line


def test_resume_takes_the_options_left_out_from_the_checkpoint(trained, tmp_path, capsys):
    ckpt = tmp_path / "c.h5"
    ckpt.write_bytes(trained["ckpt"].read_bytes())
    assert main(["train", "--resume", str(ckpt), "--save", str(ckpt), "--epochs", "2",
                 "--data-dir", str(trained["data"])]) == 0
    out = capsys.readouterr().out
    assert "resumed from" in out and "(its options: --model lenet-binary, --batch-size 64, --lr 0.002, " \
                                      "--limit-train 320)" in out
    rec = describe(ckpt)["trained_on"]["options"]
    assert rec["epochs"] == 2 and rec["lr"] == 0.002 and bitnet.load_training_state(ckpt).epoch == 2


def test_resume_of_a_checkpoint_without_record(trained, tmp_path, capsys):
    old = tmp_path / "old.h5"
    old.write_bytes(trained["ckpt"].read_bytes())
    with h5py.File(old, "r+") as f:
        del f.attrs["trained_on"]
    line = _error_line(capsys, 2, main(["train", "--resume", str(old), "--data-dir", str(trained["data"])]))
    assert "the checkpoint holds a lenet-binary, not a lenet; pass --model lenet-binary" in line


def test_eval_on_another_dataset_is_refused_unless_forced(trained, capsys, monkeypatch):
    monkeypatch.setattr("bitnet.data.datasets.load_splits", lambda *a, **k: pytest.fail("data loaded"))
    for f in (trained["ckpt"], trained["packed"]):
        line = _error_line(capsys, 2, main(["eval", str(f), "--dataset", "fashion-mnist"]))
        assert f"{f} was trained on mnist (recorded in the file), not on fashion-mnist" in line
        assert "pass --force to run it anyway" in line
    line = _error_line(capsys, 2, main(["predict", str(trained["ckpt"]), str(trained["ckpt"]), "--dataset",
                                        "cifar10", "--force"]))
    assert "the model takes images of shape (1, 28, 28) (C, H, W), cifar10's are (3, 32, 32)" in line


def test_eval_forced_warns_and_runs(trained, capsys):
    assert main(["eval", str(trained["packed"]), "--dataset", "fashion-mnist", "--force",
                 "--data-dir", str(trained["data"])]) == 0
    out, err = capsys.readouterr()
    assert "warning: " in err and "was trained on mnist; running it on fashion-mnist because of --force" in err
    assert out.strip().splitlines()[-1].startswith("test accuracy: ")


def test_eval_and_predict_default_to_the_recorded_dataset(trained, tmp_path, capsys, monkeypatch):
    seen = []
    real = bitnet.data.datasets.transform_for
    monkeypatch.setattr("bitnet.data.datasets.transform_for", lambda name: seen.append(name) or real(name))
    fashion = tmp_path / "fashion.h5"
    fashion.write_bytes(trained["ckpt"].read_bytes())
    with h5py.File(fashion, "r+") as f:
        rec = json.loads(bytes(f.attrs["trained_on"]))
        rec["dataset"] = rec["options"]["dataset"] = "fashion-mnist"
        f.attrs["trained_on"] = np.bytes_(json.dumps(rec).encode())
    x = tmp_path / "x.npy"
    np.save(x, np.zeros((3, 28, 28), np.uint8))
    assert main(["predict", str(fashion), str(x)]) == 0
    assert seen == ["fashion-mnist"] and capsys.readouterr().err == ""


# -- --save checked before training; a save failing later --------------------------------------------

@pytest.fixture
def no_data(monkeypatch):
    monkeypatch.setattr("bitnet.data.datasets.load_splits", lambda *a, **k: pytest.fail("data loaded before "
                                                                                          "the --save check"))


def test_save_into_a_missing_folder_or_onto_a_folder(tmp_path, capsys, no_data):
    line = _error_line(capsys, 2, main(TRAIN + ["--save", str(tmp_path / "nowhere" / "m.h5")]))
    assert f"--save {tmp_path / 'nowhere' / 'm.h5'}: the folder {tmp_path / 'nowhere'} does not exist" in line
    line = _error_line(capsys, 2, main(TRAIN + ["--save", str(tmp_path)]))
    assert f"--save {tmp_path}: it is a folder; give a file name" in line
    line = _error_line(capsys, 2, main(["convert", "in.h5", str(tmp_path / "nowhere" / "p.h5")]))
    assert "in.h5: no such model file" in line  # the input is read first; then the output is checked


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_save_into_a_read_only_folder(tmp_path, capsys, no_data):
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o555)
    try:
        line = _error_line(capsys, 2, main(TRAIN + ["--save", str(folder / "m.h5")]))
    finally:
        folder.chmod(0o755)
    assert f"--save {folder / 'm.h5'}: cannot write into the folder {folder} (Permission denied)" in line
    assert ".tmp" not in line


def test_save_into_an_immutable_folder(tmp_path, capsys, no_data):
    folder = tmp_path / "immutable"
    folder.mkdir()
    if subprocess.run(["chattr", "+i", str(folder)], capture_output=True).returncode != 0:
        pytest.skip("chattr +i is not available here")
    try:
        line = _error_line(capsys, 2, main(TRAIN + ["--save", str(folder / "m.h5")]))
    finally:
        subprocess.run(["chattr", "-i", str(folder)], check=True)
    assert f"--save {folder / 'm.h5'}: cannot write into the folder {folder} (Operation not permitted)" in line


def test_a_save_failing_after_an_epoch_is_one_message(trained, tmp_path, capsys, monkeypatch):
    target = tmp_path / "m.h5"

    def disk_full(model, path, **kwargs):  # what h5py raises when the disk fills up
        raise OSError(f"[Errno 28] Unable to synchronously create dataset (file write failed: time = now, filename = "
                      f"'{tmp_path}/.bitnet-x1y2z3ab.h5.tmp', file descriptor = 3, errno = 28, error message = "
                      "'No space left on device')")
    monkeypatch.setattr(bitnet, "save", disk_full)
    line = _error_line(capsys, 1, main(TRAIN + ["--data-dir", str(trained["data"]), "--save", str(target)]))
    assert line == (f"bitnet train: error: cannot write the checkpoint of epoch 1 to {target}: No space left on "
                    "device; a checkpoint there from an earlier epoch is left as it was")


def test_a_real_full_disk(trained, tmp_path, capsys):
    """On a 256 kB tmpfs (where this machine lets the tests mount one): the probe file fits, the
    checkpoint does not."""
    disk = tmp_path / "disk"
    disk.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(disk)], capture_output=True).returncode:
        pytest.skip("cannot mount a small tmpfs here")
    try:
        line = _error_line(capsys, 1, main(TRAIN + ["--data-dir", str(trained["data"]), "--save", str(disk / "m.h5")]))
        left = os.listdir(disk)
    finally:
        subprocess.run(["umount", str(disk)], check=True)
    assert line == (f"bitnet train: error: cannot write the checkpoint of epoch 1 to {disk / 'm.h5'}: No space left "
                    "on device; a checkpoint there from an earlier epoch is left as it was")
    assert left == []  # no temporary file left behind


# -- predictions -----------------------------------------------------------------------------------

def test_predict_refuses_nan_images(trained, tmp_path, capsys):
    x = np.random.default_rng(0).random((5, 28, 28)).astype(np.float32)
    x[1, 3, 3], x[4, 0, 0] = np.nan, np.inf
    np.save(tmp_path / "x.npy", x)
    line = _error_line(capsys, 2, main(["predict", str(trained["packed"]), str(tmp_path / "x.npy")]))
    assert line.endswith("x.npy: images 1, 4 (2 of 5) hold NaN or infinite values; expected finite pixels "
                         "(uint8 0-255, or floats in [0, 1])")
    assert capsys.readouterr().out == ""


def test_predict_refuses_non_finite_outputs(trained, tmp_path, capsys):
    # weights beyond +-2^64 are refused when the file is saved and when it is loaded (bitnet.io.h5)
    model = bitnet.load(trained["ckpt"])
    state = model.state_dict()
    last = [k for k in state if k.endswith("weight")][-1]  # the float classifier after the binary layers
    state[last][...] = 3e38
    model.load_state_dict(state)
    with pytest.raises(ValueError, match="beyond"):
        bitnet.save(model, tmp_path / "big.h5")
    # weights within the bound can still overflow float32 in two products: the outputs are refused
    net = nn.Sequential(nn.Flatten(), nn.Dense(784, 50), nn.Dense(50, 10))
    for p in net.parameters():
        p.data[...] = 2.0 ** 62
    big = tmp_path / "big.h5"
    bitnet.save(net, big, input_shape=(1, 28, 28), trained_on=describe(trained["ckpt"])["trained_on"])
    np.save(tmp_path / "x.npy", np.zeros((2, 28, 28), np.uint8))
    line = _error_line(capsys, 2, main(["predict", str(big), str(tmp_path / "x.npy")]))
    assert "the model's outputs are NaN or infinite for images 0, 1 (2 of 2): its weights are too large for " \
           "float32 arithmetic (largest magnitude 4.61e+18)" in line
    assert capsys.readouterr().out == ""


def test_predict_input_errors(trained, tmp_path, capsys):
    np.savez(tmp_path / "x.npy", a=np.zeros((2, 28, 28), np.uint8))  # np.savez keeps the name it is given
    line = _error_line(capsys, 2, main(["predict", str(trained["packed"]), str(tmp_path / "x.npy.npz")]))
    assert "x.npy.npz: a .npz archive (np.savez) or another zip file; expected one array written by np.save" in line
    (tmp_path / "y.npy").write_bytes((tmp_path / "x.npy.npz").read_bytes())
    line = _error_line(capsys, 2, main(["predict", str(trained["packed"]), str(tmp_path / "y.npy")]))
    assert "y.npy: a .npz archive (np.savez) or another zip file" in line


def test_no_traceback_in_a_real_process(trained, tmp_path):
    bad = tmp_path / "bad.h5"
    bad.write_bytes(move_root(trained["packed"].read_bytes(), 10 ** 9))
    res = subprocess.run([sys.executable, "-m", "bitnet.cli", "summary", str(bad)], capture_output=True, text=True,
                         env=dict(os.environ, PYTHONPATH=str(REPO)))
    assert res.returncode == 2 and res.stdout == ""
    assert res.stderr.count("\n") == 1 and res.stderr.startswith(f"bitnet summary: error: {bad}: ")
