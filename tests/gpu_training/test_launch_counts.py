"""``bitnet.gpu.emulated.count_device_calls`` and ``python -m bitnet.bench.gpu_launches``: the kernel
launches of a GPU training step, counted on the emulation (no GPU needed)."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest

from bitnet.bench import gpu_launches
from bitnet.gpu.arrays import emulate
from bitnet.gpu.emulated import count_device_calls

pytestmark = pytest.mark.skipif(os.environ.get("BITNET_TEST_CUDA") == "gpu",
                                reason="counts the emulation's operations, which only the emulation records")


def test_counts_the_operations_that_launch_kernels():
    with emulate() as xp:
        a = xp.zeros(4, np.float32)
        with count_device_calls() as calls:
            b = a + 1                       # add
            c = b.reshape(2, 2).T           # views: nothing
            c.sum()                         # sum
            a[1:3]                          # a view
            a[xp.asarray(np.array([0, 2]))]  # a copy from the host, then a gather
            a[0:2] = 5                      # setitem
            xp.empty(3, np.float32)         # no fill: nothing
            xp.sqrt(b, out=b)               # sqrt
            xp.ascontiguousarray(b)         # contiguous already: nothing
            xp.ascontiguousarray(c)         # a copy
        b + 1  # outside the block: not recorded
    here = "tests/gpu_training/test_launch_counts.py:test_counts_the_operations_that_launch_kernels"
    assert calls == [(name, here) for name in ("add", "sum", "asarray", "take", "setitem", "sqrt",
                                               "ascontiguousarray")]


@pytest.mark.parametrize("model", ["lenet-binary", "resnet18-binary"])
def test_a_step_s_launches_do_not_depend_on_the_batch(model):
    small, larger = gpu_launches.count_step(model, batch=2), gpu_launches.count_step(model, batch=3)
    assert small["total"] == larger["total"] > 0
    assert small["phases"] == larger["phases"]
    assert sum(small["phases"].values()) == small["total"]
    assert sum(n for _, n in small["by_site"]) == small["total"]
    assert all(":" in where and "emulated.py" not in where for where, _ in small["by_site"])
    assert dict(small["by_site"]).get("bitnet/optim/adam.py:_update", 0) == 1  # Adam's update: one kernel


def test_command_line_prints_and_writes_the_counts(tmp_path, capsys):
    out = tmp_path / "launches.json"
    results = gpu_launches.main(["--model", "lenet-binary", "--json", str(out), "--top", "3"])
    text = capsys.readouterr().out
    assert f"lenet-binary: {results[0]['total']} kernel launches per training step" in text
    assert json.loads(out.read_text())[0]["total"] == results[0]["total"]
    with pytest.raises(SystemExit):
        gpu_launches.main(["--model", "nonet"])
    assert "unknown model(s) nonet" in capsys.readouterr().err


@pytest.mark.parametrize("model", ["lenet-binary", "resnet18-binary"])
def test_the_counts_docs_gpu_training_quotes_are_the_code_s(model):
    """docs/gpu-training.md ("How many kernels a step launches") quotes each model's launches per step
    and their phases: a change that moves them must say so there."""
    import re
    docs = os.path.join(os.path.dirname(__file__), "..", "..", "docs", "gpu-training.md")
    text = open(docs, encoding="utf-8").read()
    found = re.search(rf"{model}:\s+([\d,]+) per step \(forward (\d+), loss (\d+), backward (\d+), optimizer (\d+)\)",
                      text)
    assert found, f"docs/gpu-training.md quotes no count for {model}"
    counts = gpu_launches.count_step(model)
    quoted = [int(v.replace(",", "")) for v in found.groups()]
    assert quoted == [counts["total"]] + [counts["phases"][p] for p in ("forward", "loss", "backward", "optimizer")]
