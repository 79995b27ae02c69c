"""`bitnet bench train --device cuda` (bitnet.bench.train_gpu): a clear CudaUnavailableError where there is no GPU
and no simulator; under NUMBA_ENABLE_CUDASIM=1 a smoke run on the CPU emulation that writes its records; the
timing loop synchronizes the device before every clock read and leaves the warm-up steps untimed; the PyTorch
contenders (fp32 and bf16 autocast, here on the CPU) train the same network from bitnet's weights. Speed is never
asserted."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from bitnet.backend import CudaUnavailableError
from bitnet.bench import train_gpu
from bitnet.cli import main


def _env(sim: bool) -> dict:
    env = dict(os.environ)
    env.pop("NUMBA_ENABLE_CUDASIM", None)
    if sim:
        env["NUMBA_ENABLE_CUDASIM"] = "1"
    return env


def _bench(args, sim, timeout=1200):
    return subprocess.run([sys.executable, "-m", "bitnet.cli", "bench", "train", "--device", "cuda"] + args,
                          env=_env(sim), capture_output=True, text=True, timeout=timeout)


def _has_gpu() -> bool:
    from bitnet.gpu.arrays import cupy_module
    try:
        cupy_module()
        return True
    except CudaUnavailableError:
        return False


def test_without_gpu_or_simulator_a_clear_error(monkeypatch):
    if _has_gpu():
        pytest.skip("this machine has a GPU: the bench runs there")
    p = _bench([], sim=False, timeout=300)
    assert p.returncode == 2, p.stderr
    assert "Traceback" not in p.stderr
    (line,) = p.stderr.strip().splitlines()
    assert line.startswith("bitnet bench train: error: --device cuda: ")
    assert "CuPy" in line and "NUMBA_ENABLE_CUDASIM=1" in line and "smoke test" in line
    assert p.stdout == ""  # nothing was measured or printed first
    monkeypatch.delenv("NUMBA_ENABLE_CUDASIM", raising=False)
    with pytest.raises(CudaUnavailableError):
        train_gpu.run(("lenet-binary",), 2, 1, 1, 0)


@pytest.mark.parametrize("args,what", [
    (["--threads", "1"], "--threads and --busy"),
    (["--busy", "1"], "--threads and --busy"),
    (["--model", "lenet"], "binary networks"),
])
def test_cpu_only_options_refused_on_cuda(args, what, capsys):
    assert main(["bench", "train", "--device", "cuda"] + args) == 2
    assert what in capsys.readouterr().err


def test_warmup_is_for_cuda_only(capsys):
    assert main(["bench", "train", "--warmup", "2", "--no-torch"]) == 2
    assert "--warmup applies to --device cuda only" in capsys.readouterr().err


def test_emulated_smoke_run(tmp_path):
    """Under the simulator: the whole path, lenet-binary at batch 2, one timed step; no PyTorch columns."""
    out = tmp_path / "records.json"
    p = _bench(["--model", "lenet-binary", "--batch-size", "2", "--rounds", "1", "--steps", "1", "--warmup", "0",
                "--json", str(out)], sim=True)  # no warm-up: a timed step on the emulation takes ~20 s
    assert p.returncode == 0, p.stderr[-3000:]
    (rec,) = json.loads(out.read_text())
    assert rec["method"] == "bitnet" and rec["model"] == "lenet-binary" and rec["batch"] == 2
    assert rec["calls"] == 1 and rec["warmup"] == 0 and len(rec["losses"]) == 1
    assert rec["images_per_s"] == pytest.approx(2 / rec["median_s"])
    assert np.isfinite(rec["losses"][0]) and rec["losses"][0] > 0
    assert rec["data"] in ("mnist", "random 1x28x28")
    assert "ratio_vs_torch_fp32" not in rec
    assert "smoke test" in p.stdout and "PyTorch columns skipped" in p.stdout
    assert "bitnet: NumPy (the emulation)" in p.stdout
    assert f"data: {rec['data']}" in p.stdout


def test_bitnet_math_note_says_whether_cupy_uses_tf32(monkeypatch):
    from bitnet.bench.train_gpu import bitnet_math_note
    monkeypatch.delenv("CUPY_TF32", raising=False)
    assert "TF32 off (CUPY_TF32=0)" in bitnet_math_note(False)
    monkeypatch.setenv("CUPY_TF32", "1")
    assert "TF32 on (CUPY_TF32=1)" in bitnet_math_note(False)


class _Fake:
    """A contender that logs its steps and synchronizations in one shared event list."""

    def __init__(self, name, events):
        self.name, self.events = name, events

    def step(self, i):
        self.events.append((self.name, "step", i))
        return float(i)

    def sync(self):
        self.events.append((self.name, "sync"))

    def loss_value(self, h):
        return h


def test_time_rounds_synchronizes_before_each_clock_read_and_skips_warmup():
    events = []
    ticks = iter(range(0, 1000, 2))

    def clock():
        events.append(("clock",))
        return float(next(ticks))

    fakes = {n: _Fake(n, events) for n in ("a", "b")}
    times, losses = train_gpu.time_rounds(fakes, rounds=3, steps=4, warmup=2, clock=clock)
    assert times == {"a": [0.5] * 3, "b": [0.5] * 3}  # 2 clock units over 4 steps
    assert losses == {"a": list(map(float, range(2, 14))), "b": list(map(float, range(2, 14)))}  # warm-up not kept
    clocks = [k for k, e in enumerate(events) if e == ("clock",)]
    assert len(clocks) == 2 * 2 * 3
    for k in clocks:  # the device is idle when the clock is read: a sync right before each read
        assert events[k - 1][1] == "sync"
    first_clock = clocks[0]
    assert [e for e in events[:first_clock] if e[1] == "step"] == [("a", "step", 0), ("a", "step", 1),
                                                                   ("b", "step", 0), ("b", "step", 1)]
    for k0, k1 in zip(clocks[::2], clocks[1::2]):  # each timed block: one contender's 4 steps
        inside = events[k0 + 1:k1 - 1]
        assert len(inside) == 4 and len({e[0] for e in inside}) == 1 and all(e[1] == "step" for e in inside)


def test_torch_contenders_train_the_same_network_on_the_cpu():
    """The PyTorch steps the GPU bench times (fp32, bf16 autocast), run on the CPU: from bitnet's weights, the first
    fp32 loss is bitnet's; the bf16 one is close."""
    pytest.importorskip("torch")
    from bitnet import Tensor, functional as F, models
    from bitnet.bench.worker import load_batches
    batches, _ = load_batches(4, 2, None, (1, 28, 28))
    bm = models.get("lenet-binary", seed=0)
    first = float(F.cross_entropy(bm(Tensor(batches[0][0])), batches[0][1]).data)
    bm = models.get("lenet-binary", seed=0)
    fp32 = train_gpu.torch_contender("lenet-binary", bm, batches, device="cpu")
    bf16 = train_gpu.torch_contender("lenet-binary", bm, batches, bf16=True, device="cpu")
    times, losses = train_gpu.time_rounds({"fp32": fp32, "bf16": bf16}, rounds=1, steps=3, warmup=0)
    assert all(t[0] > 0 for t in times.values())
    # max-pool ties after the binary conv's bias can break differently in float: a few 1e-3 apart at most
    assert losses["fp32"][0] == pytest.approx(first, rel=1e-2)
    assert losses["bf16"][0] == pytest.approx(first, rel=0.1)  # bf16 keeps 8 bits of mantissa
    assert all(np.isfinite(v) for v in losses["fp32"] + losses["bf16"])


def test_bitnet_contender_trains_on_the_emulated_device():
    """bitnet's timed step on "cuda" (emulated): the model moves there, the losses come back as floats after the
    timing, and the loss falls on two cycled batches (a float network: it needs no binary GPU ops)."""
    from bitnet import nn
    from bitnet.bench.worker import load_batches
    from bitnet.gpu.arrays import emulate, is_device_array
    batches, _ = load_batches(4, 2, None, (1, 28, 28))
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Dense(4 * 26 * 26, 10))
    with emulate():
        c = train_gpu.bitnet_contender(model, batches)
        assert all(is_device_array(p.data) for p in model.parameters())
        times, losses = train_gpu.time_rounds({"bitnet": c}, rounds=2, steps=3, warmup=1)
    assert len(times["bitnet"]) == 2 and all(t > 0 for t in times["bitnet"])
    assert len(losses["bitnet"]) == 6 and all(type(v) is float and np.isfinite(v) for v in losses["bitnet"])
    assert losses["bitnet"][-1] < losses["bitnet"][0]
