"""The packaged loop on "cuda" (fit / evaluate / bitnet train --device cuda) and checkpoints across
devices, on the NumPy emulation of the GPU arrays (bitnet.gpu.arrays.emulate)."""
from __future__ import annotations

import re

import numpy as np
import pytest

import bitnet
from bitnet import models, optim
from bitnet.cli import main
from bitnet.data import DataLoader
from bitnet.gpu.arrays import emulate, is_device_array
from bitnet.training import evaluate, fit


def _data(n=96, seed=0):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, 1, 28, 28)).astype(np.float32), rng.integers(0, 10, n)


def _run(name, device, epochs=2, sgd=False):
    x, y = _data()
    model = models.get(name, seed=0)
    opt = optim.SGD(model.parameters(), lr=0.02, momentum=0.9) if sgd else optim.Adam(model.parameters(), lr=1e-3)
    loader = DataLoader((x, y), batch_size=32, shuffle=True, rng=1)
    history = fit(model, opt, loader, epochs, val_loader=DataLoader((x, y), 48), progress=False, log=None,
                  device=device)
    return model, opt, history


def test_fit_on_cuda_follows_the_cpu_run_step_by_step():
    cpu_model, _, cpu = _run("lenet", None, sgd=True)
    with emulate():
        gpu_model, opt, gpu = _run("lenet", "cuda", sgd=True)
        assert gpu_model.device == "cuda"
        assert all(is_device_array(s) for st in opt.state.values() for s in st.values() if hasattr(s, "shape"))
    # float32 training: the GEMMs sum in another order on each device (relative differences of a few
    # 1e-7 per step), which 6 SGD steps (linear in the gradient) grow to well under 1e-4 of the loss.
    # (Adam would not do: it divides tiny gradients by their own size, turning rounding into O(lr) steps.)
    np.testing.assert_allclose([s.loss for s in gpu.steps], [s.loss for s in cpu.steps], rtol=1e-4)
    assert [s.accuracy for s in gpu.steps] == [s.accuracy for s in cpu.steps]
    np.testing.assert_allclose([e.val_loss for e in gpu.epochs], [e.val_loss for e in cpu.epochs], rtol=1e-4)
    for (name, a), b in zip(cpu_model.state_dict().items(), gpu_model.state_dict().values()):
        np.testing.assert_allclose(b, a, rtol=1e-3, atol=1e-5, err_msg=name)


def test_a_binary_network_trains_on_cuda_and_its_checkpoint_loads_on_the_cpu(tmp_path):
    path = tmp_path / "gpu.h5"
    with emulate():
        model, opt, history = _run("lenet-binary", "cuda", epochs=3)
        assert history.epochs[-1].loss < history.epochs[0].loss  # it learns (96 images seen 3 times)
        bitnet.save(model, path, optimizer=opt, epoch=3)
        x, y = _data()
        on_gpu = evaluate(model, DataLoader((x, y), 32), device="cuda")
    loaded = bitnet.load(path)
    assert loaded.device == "cpu"
    for (name, a), b in zip(model.state_dict().items(), loaded.state_dict().values()):
        np.testing.assert_array_equal(b, a, err_msg=name)  # the file holds the GPU model's exact values
    # the binary layers' dots are exact integers on both paths (bits on the CPU; on the emulation
    # without the simulator, the float path's exact sums of +-1 products), the float layers round alike
    loss, acc = evaluate(loaded, DataLoader((x, y), 32))
    assert acc == on_gpu[1]
    assert loss == pytest.approx(on_gpu[0], rel=1e-5)
    state = bitnet.load_training_state(path)
    cpu_opt = optim.Adam(loaded.parameters(), lr=1e-3)
    cpu_opt.load_state_dict(state.optimizer)  # the GPU run's optimizer state continues on the CPU
    on_cpu, from_gpu = cpu_opt.state_dict()["state"], opt.state_dict()["state"]
    assert sorted(on_cpu) == sorted(from_gpu) and on_cpu
    for index, entries in from_gpu.items():
        for k, v in entries.items():
            np.testing.assert_array_equal(on_cpu[index][k], v, err_msg=f"state {index} {k}")


def test_device_argument_is_checked():
    x, y = _data(8)
    model = models.get("lenet", seed=0)
    with pytest.raises(ValueError, match="device must be None, 'cpu' or 'cuda', got 'gpu'"):
        fit(model, optim.SGD(model.parameters(), lr=0.1), DataLoader((x, y), 4), 1, device="gpu", progress=False)


def test_bitnet_train_device_cuda(data_dir, capsys):
    args = ["train", "--model", "lenet-binary", "--dataset", "mnist", "--data-dir", str(data_dir), "--epochs", "1",
            "--batch-size", "64", "--limit-train", "640", "--seed", "3"]
    with emulate():
        assert main(args + ["--device", "cuda"]) == 0
    out = capsys.readouterr().out
    assert "on the GPU" in out
    accuracy = float(re.fullmatch(r"test accuracy: (\d\.\d{4})", out.strip().splitlines()[-1]).group(1))
    assert accuracy > 0.5  # 10 steps on 640 images: far above chance (0.10)


def test_bitnet_train_device_cuda_without_a_gpu_is_a_clear_error(monkeypatch, capsys):
    import sys
    monkeypatch.delenv("NUMBA_ENABLE_CUDASIM", raising=False)
    monkeypatch.setitem(sys.modules, "cupy", None)
    rc = main(["train", "--device", "cuda", "--epochs", "1"])
    assert rc == 2
    err = capsys.readouterr().err
    assert "needs CuPy" in err and "bitnet-bnn[cuda]" in err


def test_bitnet_train_saves_on_cuda_and_resumes_on_the_cpu_and_back(data_dir, tmp_path, capsys):
    ckpt = tmp_path / "run.h5"
    args = ["train", "--model", "lenet-binary", "--dataset", "mnist", "--data-dir", str(data_dir), "--batch-size", "64",
            "--limit-train", "320", "--seed", "5", "--quiet", "--save", str(ckpt)]
    with emulate():
        assert main(args + ["--epochs", "1", "--device", "cuda"]) == 0
    first = bitnet.load_training_state(ckpt)
    assert first.epoch == 1 and first.optimizer["state"]
    assert main(args + ["--epochs", "2", "--resume", str(ckpt)]) == 0  # epoch 2 on the CPU
    assert bitnet.load_training_state(ckpt).epoch == 2
    with emulate():
        assert main(args + ["--epochs", "3", "--resume", str(ckpt), "--device", "cuda"]) == 0  # epoch 3 on cuda
    assert bitnet.load_training_state(ckpt).epoch == 3
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("test accuracy: ")]
    assert len(lines) == 3 and all(float(line.split(":")[1]) > 0.3 for line in lines)
