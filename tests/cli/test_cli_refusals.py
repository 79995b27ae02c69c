"""What the command line refuses, and says, instead of losing data, crashing mid-run or answering
nonsense: convert onto its own input; batches too small for batch norm; empty file names; a resumed
schedule at learning rate 0; predict's pixels out of the documented range; a model that cannot run on
its input; paths that exist but are not what is asked for; bench options checked before timing;
GPU errors in option words; --import of files and of broken modules; a closed output pipe. Every
error exit status 2 (unless said), one line `bitnet COMMAND: error: ...`, no traceback."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

import bitnet
from bitnet import models, nn
from bitnet.cli import main
from trained_files import train_and_convert
from bitnet.cli_files import CommandError
from bitnet.cli_train import check_batch_norm_batch, drop_small_last_batch, least_batch

REPO = Path(__file__).resolve().parents[2]
TINY = ["train", "--model", "lenet-binary", "--epochs", "1", "--limit-train", "256", "--batch-size", "64", "--quiet"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A one-epoch checkpoint of `bitnet train` (cosine schedule, finished) and its packed file."""
    return train_and_convert(tmp_path_factory, TINY, "refusals")


@pytest.fixture
def no_data(monkeypatch):
    monkeypatch.setattr("bitnet.data.datasets.load_splits", lambda *a, **k: pytest.fail("data loaded before the check"))


def _error_line(capsys, rc, code=2):
    """The one error line on stderr (warning lines may come before it), after checking the exit status."""
    err = capsys.readouterr().err
    assert rc == code, err
    assert "Traceback" not in err
    lines = [line for line in err.strip().splitlines() if " warning: " not in line]
    assert len(lines) == 1, err
    return lines[0]


def _parse_error(capsys, argv):
    """The message of an option refused as the command line is parsed (argparse: exit status 2)."""
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2
    return capsys.readouterr().err.strip().splitlines()[-1]


# -- 1. convert onto its own input ------------------------------------------------------------------

@pytest.mark.parametrize("how", ["same", "dot", "symlink", "hardlink"])
def test_convert_refuses_to_overwrite_its_input(trained, tmp_path, capsys, monkeypatch, how):
    ckpt = tmp_path / "c.h5"
    shutil.copy(trained["ckpt"], ckpt)
    before = ckpt.read_bytes()
    out = {"same": ckpt, "dot": tmp_path / "." / "c.h5", "symlink": tmp_path / "link.h5",
           "hardlink": tmp_path / "hard.h5"}[how]
    if how == "symlink":
        out.symlink_to(ckpt)
    elif how == "hardlink":
        os.link(ckpt, out)
    monkeypatch.setattr("bitnet.io.describe", lambda *a: pytest.fail("the input was read before the check"))
    line = _error_line(capsys, main(["convert", str(ckpt), str(out)]))
    assert line == (f"bitnet convert: error: {out}: the output is the same file as the input checkpoint {ckpt}; "
                    "writing the packed file there would replace the checkpoint (its float weights and training "
                    f"state would be lost); give another output file, e.g. {tmp_path / 'c'}.packed.h5")
    with pytest.raises(ValueError, match="is the same file as the checkpoint"):
        bitnet.convert(ckpt, out)
    assert ckpt.read_bytes() == before
    assert bitnet.load_training_state(ckpt).optimizer is not None  # still the training checkpoint


# -- 2. batch norm and batches of one image ---------------------------------------------------------

def test_least_batch_follows_the_batch_norms():
    lenet = models.get("lenet-binary", in_channels=1, image_size=28, num_classes=10, seed=0)
    resnet = models.get("resnet18-binary", in_channels=1, image_size=28, num_classes=10, seed=0)
    before = {k: v.copy() for k, v in lenet.state_dict().items()}
    assert least_batch(lenet, (1, 28, 28)) == 2  # a BatchNorm1d after the flatten: one value per image
    assert least_batch(lenet, (1, 28, 28), processes=2, sync=True) == 1  # statistics over both processes
    assert least_batch(resnet, (1, 28, 28)) == 1  # batch norms over feature maps only
    assert least_batch(nn.Sequential(nn.Flatten(), nn.Dense(784, 10)), (1, 28, 28)) == 1  # no batch norm
    assert all(m.training for m in lenet.modules())  # the probe runs in eval mode, and restores the mode
    assert all(np.array_equal(before[k], v) for k, v in lenet.state_dict().items())  # no statistic changed


def test_batch_size_one_is_refused_before_the_data_is_read(capsys, no_data):
    line = _error_line(capsys, main(TINY + ["--batch-size", "1"]))
    assert line == ("bitnet train: error: --batch-size 1: batch norm in training needs at least 2 images per batch "
                    "(the batch norms of lenet-binary see one value per channel per image); give --batch-size 2 or "
                    "more")


def test_distributed_batch_of_one_image_per_process():
    model = models.get("lenet-binary", in_channels=1, image_size=28, num_classes=10, seed=0)
    with pytest.raises(CommandError, match=r"--batch-size 2: with --distributed each of the 2 processes trains on 1 "
                                           r"image of each batch, .* give --batch-size 4 or more, or --sync-batchnorm"):
        check_batch_norm_batch(model, (1, 28, 28), 2, 2, sync=False)
    assert check_batch_norm_batch(model, (1, 28, 28), 2, 2, sync=True) == 1
    assert check_batch_norm_batch(model, (1, 28, 28), 64, 2, sync=False) == 1  # not even asked


def test_a_last_batch_of_one_image_per_process_is_left_out():
    from bitnet.data import DataLoader
    from bitnet.distributed import ShardedLoader

    class Comm:
        def __init__(self, rank, size):
            self.rank, self.size = rank, size

    def loader(n):
        return DataLoader((np.zeros((n, 1, 2, 2), np.uint8), np.zeros(n, np.int64)), 64, shuffle=True, rng=0)
    one = loader(65)
    assert "1 image, too few" in drop_small_last_batch(one, 1, lambda: 2) and len(one) == 1
    assert drop_small_last_batch(loader(66), 1, lambda: pytest.fail("asked")) is None
    assert drop_small_last_batch(loader(65), 1, lambda: 1) is None  # a model without such batch norms
    for n, dropped in ((130, True), (131, True), (132, False)):  # last global batch 2, 3, 4 on 2 processes
        l = loader(n)
        steps = ShardedLoader(l, Comm(0, 2))
        note = drop_small_last_batch(l, 2, lambda: 2)
        assert (note is not None) == dropped and len(steps) == (2 if dropped else 3)
        assert not dropped or "1 image per process" in note
        assert all(len(y) >= 2 for _, y in steps)


def test_a_trailing_batch_of_one_image_trains(trained, capsys):
    argv = ["train", "--model", "lenet-binary", "--data-dir", str(trained["data"]), "--limit-train", "65",
            "--batch-size", "64", "--epochs", "2"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    note = ("note: the last batch of each epoch would hold 1 image, too few for batch norm in training (at least "
            "2): it is left out (1 of the 65 images, a different one each epoch)")
    assert out.count(note) == 1 and out.strip().splitlines()[-1].startswith("test accuracy: ")
    assert main(argv + ["--quiet"]) == 0
    assert capsys.readouterr().out.strip().startswith("test accuracy: ")


def test_no_batch_left_is_refused(trained, capsys):
    line = _error_line(capsys, main(TINY + ["--data-dir", str(trained["data"]), "--limit-train", "1"]))
    assert line == ("bitnet train: error: 1 training image (--limit-train 1) makes no batch to train on: batch norm "
                    "in training needs at least 2 images per batch; give --limit-train 2 or more")


def test_distributed_run_with_one_image_per_process_in_the_last_batch(trained, tmp_path):
    pytest.importorskip("mpi4py")
    mpiexec = shutil.which("mpiexec", path=os.path.dirname(sys.executable)) or shutil.which("mpiexec")
    if mpiexec is None:
        pytest.skip("no mpiexec")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
    res = subprocess.run([mpiexec, "-n", "2", sys.executable, "-m", "bitnet.cli", "train", "--distributed",
                          "--model", "lenet-binary", "--data-dir", str(trained["data"]), "--limit-train", "130",
                          "--batch-size", "64", "--epochs", "1"], capture_output=True, text=True, timeout=300,
                         env=env, cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    assert res.stdout.count("1 image per process, too few for batch norm") == 1
    assert res.stdout.strip().splitlines()[-1].startswith("test accuracy: ")


# -- 3. empty file names ----------------------------------------------------------------------------

@pytest.mark.parametrize("argv,option,what", [
    (["train", "--save", ""], "--save", "the checkpoint to write"),
    (["train", "--resume", ""], "--resume", "the checkpoint to continue"),
    (["convert", "x.h5", ""], "output", "the packed file to write"),
    (["convert", "", "y.h5"], "input", "the checkpoint to read"),
    (["summary", ""], "file", "the model file to read"),
    (["predict", "m.h5", ""], "input", "the images to predict"),
    (["summary", "m.h5", "--import", ""], "--import", "a module name or the path of a .py file"),
    (["bench", "gemm", "--json", ""], "--json", "the records to write"),
])
def test_empty_file_names_are_refused_as_parsed(argv, option, what, capsys, no_data):
    line = _parse_error(capsys, argv)
    assert line.endswith(f"error: argument {option}: expected the name of a file ({what}), got an empty name ''")


def test_empty_data_dir(capsys, no_data):
    assert "argument --data-dir: expected a folder" in _parse_error(capsys, ["train", "--data-dir", ""])


# -- 4. a resumed schedule at learning rate 0 -------------------------------------------------------

def test_resuming_a_finished_cosine_run_to_more_epochs_warns(trained, tmp_path, capsys):
    ckpt = tmp_path / "r.h5"
    shutil.copy(trained["ckpt"], ckpt)
    before = bitnet.load(ckpt).state_dict()
    assert main(["train", "--resume", str(ckpt), "--data-dir", str(trained["data"]), "--epochs", "2", "--save",
                 str(ckpt), "--quiet"]) == 0
    captured = capsys.readouterr()
    assert captured.err == (f"bitnet train: warning: --resume {ckpt} --epochs 2: the saved run's learning-rate "
                            "schedule ended with epoch 1, where the saved run stopped, and a resumed run keeps it: "
                            "epoch 2 trains at learning rate 0, changing no weights (only the batch-norm "
                            "statistics); to train longer, start a new run with --epochs 2 (without --resume)\n")
    after = bitnet.load(ckpt).state_dict()  # what the warning says: the same weights
    assert all(np.array_equal(before[k], after[k]) for k in before if not k.endswith(("running_mean", "running_var")))
    # resuming it to its own end trains nothing, only evaluates: no warning
    assert main(["train", "--resume", str(ckpt), "--data-dir", str(trained["data"]), "--epochs", "1", "--quiet"]) == 0
    assert capsys.readouterr().err == ""


def test_resuming_an_interrupted_run_past_its_schedule(trained, tmp_path, capsys, monkeypatch):
    real = bitnet.save

    def save_then_die(*a, **k):  # the run of 3 epochs is killed after the checkpoint of epoch 1
        real(*a, **k)
        raise KeyboardInterrupt
    monkeypatch.setattr(bitnet, "save", save_then_die)
    ckpt = tmp_path / "r.h5"
    assert main(TINY + ["--data-dir", str(trained["data"]), "--epochs", "3", "--save", str(ckpt)]) == 130
    monkeypatch.setattr(bitnet, "save", real)
    capsys.readouterr()
    from bitnet import optim
    from bitnet.cli_train import schedule_warning
    state = bitnet.load_training_state(ckpt)
    model = bitnet.load(ckpt)
    opt = optim.Adam([p for p in model.parameters() if p.requires_grad], lr=2e-3)
    scheduler = optim.WarmupCosine(opt, warmup_steps=0, total_steps=5 * 4)
    state.restore(opt, None, scheduler)  # the saved schedule: 3 epochs of 4 steps, 4 done
    assert schedule_warning(scheduler, 2, 3, 4, "r.h5") is None
    assert schedule_warning(scheduler, 2, 5, 4, "r.h5") == (
        "--resume r.h5 --epochs 5: the saved run's learning-rate schedule ends after epoch 3, and a resumed run "
        "keeps it: epochs 4-5 train at learning rate 0, changing no weights (only the batch-norm statistics); to "
        "train longer, stop at --epochs 3 (or leave out --epochs), or start a new run with --epochs 5 (without "
        "--resume)")


def test_a_constant_schedule_resumes_to_more_epochs(trained, tmp_path):
    ckpt = tmp_path / "c.h5"
    common = ["--data-dir", str(trained["data"]), "--save", str(ckpt)]
    assert main(TINY + ["--schedule", "constant"] + common) == 0
    before = bitnet.load(ckpt).state_dict()
    assert main(["train", "--resume", str(ckpt), "--epochs", "2", "--quiet"] + common) == 0
    after = bitnet.load(ckpt).state_dict()
    assert any(not np.array_equal(before[k], after[k]) for k in before if k.endswith("weight"))


# -- 5. predict's pixels ----------------------------------------------------------------------------

@pytest.mark.parametrize("values,expected", [
    (np.full((2, 28, 28), 255.0, np.float32),
     "x.npy: images 0, 1 (2 of 2) hold pixel values outside [0, 1] (from 255 to 255); expected uint8 pixels (0-255) "
     "or floats in [0, 1]: they look like 0-255 pixels: divide them by 255 (x / 255) or save them as uint8"),
    (np.concatenate([np.zeros((1, 28, 28)), np.full((1, 28, 28), -0.5)]).astype(np.float32),
     "x.npy: image 1 (1 of 2) holds pixel values outside [0, 1] (from -0.5 to 0); expected uint8 pixels (0-255) "
     "or floats in [0, 1]: scale them to [0, 1]"),
    (np.full((1, 28, 28), 1e300),
     "x.npy: image 0 (1 of 1) holds pixel values outside [0, 1] (from 1e+300 to 1e+300); expected uint8 pixels "
     "(0-255) or floats in [0, 1]: scale them to [0, 1]"),
    (np.arange(2 * 28 * 28).reshape(2, 28, 28) % 256,
     "x.npy: images of dtype int64 (values from 0 to 255); expected uint8 pixels (0-255) or floats in [0, 1]: save "
     "them as uint8: np.save(path, x.astype(np.uint8))"),
    (np.full((1, 28, 28), 300, np.int32),
     "x.npy: images of dtype int32 (values from 300 to 300); expected uint8 pixels (0-255) or floats in [0, 1]: "
     "scale them to 0-255 and save them as uint8 (x.astype(np.uint8)), or as floats in [0, 1]"),
    (np.zeros((0, 28, 28), np.uint8),
     "x.npy: no images (an array of shape (0, 28, 28)); expected at least one image of at least one pixel"),
])
def test_predict_refuses_pixels_outside_the_contract(trained, tmp_path, capsys, values, expected):
    np.save(tmp_path / "x.npy", values)
    line = _error_line(capsys, main(["predict", str(trained["packed"]), str(tmp_path / "x.npy")]))
    assert line == f"bitnet predict: error: {tmp_path}{os.sep}{expected}"  # (_error_line: no RuntimeWarning either)


def test_predict_takes_uint8_and_unit_floats(trained, tmp_path, capsys):
    x = np.random.default_rng(0).integers(0, 256, (3, 28, 28)).astype(np.uint8)
    np.save(tmp_path / "u.npy", x)
    np.save(tmp_path / "f.npy", x / 255.0)
    assert main(["predict", str(trained["packed"]), str(tmp_path / "u.npy")]) == 0
    first = capsys.readouterr()
    assert main(["predict", str(trained["packed"]), str(tmp_path / "f.npy")]) == 0
    second = capsys.readouterr()
    assert first.out == second.out and len(first.out.splitlines()) == 3 and second.err == ""


# -- 6. a model that cannot run on its input --------------------------------------------------------

def test_summary_with_another_input_shape_names_the_file_and_its_shape(trained, capsys):
    line = _error_line(capsys, main(["summary", str(trained["ckpt"]), "--input-shape", "3,32,32"]))
    assert line.startswith(f"bitnet summary: error: {trained['ckpt']}: the model cannot run on inputs of shape "
                           "(3, 32, 32): Conv2d(1, 64")
    assert line.endswith("the file records that its model takes inputs of shape (1, 28, 28) (C, H, W): leave out "
                         "--input-shape or give --input-shape 1,28,28")


def test_predict_and_eval_of_a_model_that_does_not_fit_the_images(trained, tmp_path, capsys):
    net = nn.Sequential(nn.Flatten(), nn.Dense(3 * 32 * 32, 10))
    path = tmp_path / "dense.h5"
    bitnet.save(net, path)  # no input shape, no training record
    np.save(tmp_path / "x.npy", np.zeros((2, 28, 28), np.uint8))
    line = _error_line(capsys, main(["predict", str(path), str(tmp_path / "x.npy")]))
    assert line.startswith(f"bitnet predict: error: {path}: the model cannot run on the images of "
                           f"{tmp_path / 'x.npy'} (shape (1, 28, 28)): Dense(3072, 10")
    assert line.endswith("the file does not record the input shape its model takes (saved without input_shape=): "
                         "give it images of the shape it was trained on")
    line = _error_line(capsys, main(["eval", str(path), "--data-dir", str(trained["data"])]))
    assert line.startswith(f"bitnet eval: error: {path}: the model cannot run on the mnist test set (images of "
                           "shape (1, 28, 28)): Dense(3072, 10")


# -- 7. paths that exist but are not what is asked for -----------------------------------------------

def test_existing_paths_are_not_reported_missing(trained, tmp_path, capsys, no_data):
    a_file = tmp_path / "one.npy"
    np.save(a_file, np.zeros((1, 28, 28), np.uint8))
    line = _error_line(capsys, main(["summary", str(tmp_path)]))
    assert line == f"bitnet summary: error: {tmp_path} is a folder, not a model file; give the path of the file"
    line = _error_line(capsys, main(["predict", str(trained["packed"]), str(tmp_path)]))
    assert line == f"bitnet predict: error: {tmp_path} is a folder, not an input file; give the path of the file"
    line = _error_line(capsys, main(["summary", str(a_file / "m.h5")]))
    assert line == f"bitnet summary: error: {a_file / 'm.h5'}: no such model file: {a_file} is a file, not a folder"
    line = _error_line(capsys, main(TINY + ["--save", str(a_file / "x.h5")]))
    assert line == (f"bitnet train: error: --save {a_file / 'x.h5'}: {a_file} is a file, not a folder; choose a "
                    "path in a folder")
    line = _parse_error(capsys, ["train", "--data-dir", str(a_file)])
    assert line.endswith(f"argument --data-dir: expected a folder (the folder holding the dataset, or its parent), "
                         f"got {str(a_file)!r}: it is a file, not a folder; give the folder that holds it")
    line = _error_line(capsys, main(["summary", str(tmp_path / "missing.h5")]))
    assert line == f"bitnet summary: error: {tmp_path / 'missing.h5'}: no such model file"


# -- 8. bench: options checked before anything is timed ----------------------------------------------

@pytest.fixture
def no_bench(monkeypatch):
    from bitnet.bench import gemm
    monkeypatch.setattr(gemm, "bench_case", lambda *a, **k: pytest.fail("the benchmark ran before the check"))


def test_bench_destinations_and_plot_format_checked_first(tmp_path, capsys, no_bench):
    line = _error_line(capsys, main(["bench", "gemm", "--quick", "--json", str(tmp_path / "no" / "g.json")]))
    assert line == (f"bitnet bench gemm: error: --json {tmp_path / 'no' / 'g.json'}: the folder {tmp_path / 'no'} "
                    "does not exist; create it first")
    line = _error_line(capsys, main(["bench", "gemm", "--quick", "--json", str(tmp_path)]))
    assert line.startswith(f"bitnet bench gemm: error: --json {tmp_path}: it is a folder")
    pytest.importorskip("matplotlib")
    line = _error_line(capsys, main(["bench", "gemm", "--quick", "--plot", str(tmp_path / "x.bmp")]))
    assert line.startswith(f"bitnet bench gemm: error: --plot {tmp_path / 'x.bmp'}: a .bmp file; expected a file "
                           "type matplotlib writes, chosen by the extension: ")
    assert ".png" in line and ".svg" in line and ".pdf" in line


def test_bench_threads_against_the_machine(capsys, no_bench):
    import numba
    most = numba.config.NUMBA_NUM_THREADS
    line = _error_line(capsys, main(["bench", "gemm", "--quick", "--threads", str(most + 997)]))
    assert line == (f"bitnet bench gemm: error: --threads {most + 997}: expected at most {most}, the threads Numba "
                    f"has on this machine ({os.cpu_count()} cores; NUMBA_NUM_THREADS={most}); give --threads {most} "
                    "or fewer")
    res = subprocess.run([sys.executable, "-m", "bitnet.cli", "bench", "gemm", "--help"], capture_output=True,
                         text=True, env=dict(os.environ, PYTHONPATH=str(REPO)))
    assert f"from 1 to {most} (Numba's threads on this machine" in " ".join(res.stdout.split())
    line = _parse_error(capsys, ["bench", "distributed", "--processes", "0"])
    assert line == ("bitnet bench distributed: error: argument --processes: expected process counts from 1 to 4096 "
                    "separated by commas, e.g. 2 or 2,4; got '0'")


# -- 9. GPU words, --import, the kind of file first ---------------------------------------------------

def test_gpu_errors_speak_of_the_option(trained, tmp_path, capsys, monkeypatch):
    from bitnet.backend import CudaUnavailableError

    def no_gpu(*a, **k):
        raise CudaUnavailableError('numba.cuda finds no usable NVIDIA GPU here; use device="cpu"')
    monkeypatch.setattr(bitnet, "load_packed", no_gpu)
    np.save(tmp_path / "x.npy", np.zeros((1, 28, 28), np.uint8))
    line = _error_line(capsys, main(["predict", str(trained["packed"]), str(tmp_path / "x.npy"), "--device", "cuda"]))
    assert line == "bitnet predict: error: numba.cuda finds no usable NVIDIA GPU here; use --device cpu"


@pytest.fixture
def module_folder(tmp_path, monkeypatch):
    """A folder of modules, the current one; sys.path and sys.modules as they were afterwards."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", list(sys.path))
    before = set(sys.modules)
    yield tmp_path
    for name in set(sys.modules) - before:
        del sys.modules[name]


def _module(folder, name, body):
    (folder / f"{name}.py").write_text(textwrap.dedent(body))


def test_import_of_a_file_path(module_folder, capsys):
    _module(module_folder, "refusals_net", """
        from bitnet import nn

        @nn.register
        class RefusalsNet(nn.Module):
            def __init__(self):
                super().__init__()
                self.fc = nn.Dense(784, 10)

            def forward(self, x):
                return self.fc(x.reshape(x.shape[0], -1))
        """)
    sys.path.insert(0, str(module_folder))
    import refusals_net
    bitnet.save(refusals_net.RefusalsNet(), module_folder / "net.h5", input_shape=(1, 28, 28))
    del sys.modules["refusals_net"]
    sys.path.remove(str(module_folder))
    assert main(["summary", "net.h5", "--import", "./refusals_net.py"]) == 0
    assert "RefusalsNet" in capsys.readouterr().out


@pytest.mark.parametrize("name,body,expected", [
    ("refusals_syntax", "x = 1\ndef f(:\n", "the module has a syntax error: {file}, line 2: invalid syntax; fix the "
                                           "module"),
    ("refusals_raises", "raise RuntimeError('boom')\n", "importing it raised RuntimeError: boom; fix the module "
                                                         "({how} shows where)"),
    ("refusals_needs", "import refusals_not_installed\n", "importing it raised ModuleNotFoundError: No module named "
                                                           "'refusals_not_installed'; install what it needs or fix the "
                                                           "module"),
])
@pytest.mark.parametrize("as_path", [False, True])
def test_import_of_a_broken_module_is_one_error(module_folder, capsys, name, body, expected, as_path):
    _module(module_folder, name, body)
    arg = f"./{name}.py" if as_path else name
    how = f"python {arg}" if as_path else f"python -c 'import {name}'"
    line = _error_line(capsys, main(["summary", "net.h5", "--import", arg]))
    message = expected.format(file=module_folder / f"{name}.py", how=how)
    assert line == f"bitnet summary: error: --import {arg}: {message}"
    assert name not in sys.modules


def test_import_of_nothing(module_folder, capsys):
    line = _error_line(capsys, main(["summary", "net.h5", "--import", "refusals_nowhere"]))
    assert line.startswith("bitnet summary: error: --import refusals_nowhere: no module named 'refusals_nowhere' "
                           f"found from {module_folder}; give a module name")
    line = _error_line(capsys, main(["summary", "net.h5", "--import", "./refusals_nowhere.py"]))
    assert line == ("bitnet summary: error: --import ./refusals_nowhere.py: ./refusals_nowhere.py: no such Python "
                    "file; give a module name (mynet, package.module) or the path of a .py file")


def test_eval_of_weights_only_says_so_first(tmp_path, capsys):
    path = tmp_path / "sd.h5"
    bitnet.save_state_dict(nn.Sequential(nn.Flatten(), nn.Dense(784, 10)).state_dict(), path)
    for argv in (["eval", str(path)], ["predict", str(path), "x.npy"]):
        rc = main(argv)
        err = capsys.readouterr().err  # one line: no warning about the dataset before it
        assert rc == 2 and err.count("\n") == 1
        assert err.startswith(f"bitnet {argv[0]}: error: {path} holds weights only (bitnet.save_state_dict)")


# -- 10. interrupted early, the output's reader gone -------------------------------------------------

def test_interrupt_before_the_command_runs(monkeypatch, capsys):
    def interrupted(*a):
        raise KeyboardInterrupt
    monkeypatch.setattr("bitnet.cli.build_parser", interrupted)
    assert main(["summary", "x.h5"]) == 130
    assert capsys.readouterr().err == "bitnet: interrupted\n"


def test_a_closed_pipe_ends_quietly(trained, tmp_path):
    np.save(tmp_path / "x.npy", np.zeros((20000, 28, 28), np.uint8))  # ~300 kB of lines: more than a pipe holds
    proc = subprocess.Popen([sys.executable, "-m", "bitnet.cli", "predict", str(trained["packed"]),
                             str(tmp_path / "x.npy")], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env=dict(os.environ, PYTHONPATH=str(REPO)))
    assert proc.stdout.readline().startswith(b"0\t")
    proc.stdout.close()  # as `| head -1` does
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=300) == 141 and err == ""


def test_a_benchmark_is_named_once(capsys, monkeypatch):
    from bitnet.backend import CudaUnavailableError
    from bitnet.bench import train_gpu

    def no_gpu(*a, **k):
        raise CudaUnavailableError('bench train --device cuda: no GPU here; use device="cpu"')
    monkeypatch.setattr(train_gpu, "run", no_gpu)
    line = _error_line(capsys, main(["bench", "train", "--device", "cuda"]))
    assert line == "bitnet bench train: error: --device cuda: no GPU here; use --device cpu"
