"""python -m bitnet.bench.resnet_stem: both stem variants from the same weights and batches; the
ReLU stem leaves binary convolutions dead (their batch norm's weight gradient exactly 0)."""
from __future__ import annotations

import numpy as np

from bitnet.bench import resnet_stem


def test_the_relu_stem_leaves_a_dead_binary_convolution_and_the_default_none():
    rng = np.random.default_rng(0)
    train = (rng.standard_normal((64, 1, 12, 12)).astype(np.float32), rng.integers(0, 10, 64))
    test = (train[0][:8], train[1][:8])
    runs = {relu: resnet_stem.train_one(relu, 0, 2, train, test, batch=8, log=None) for relu in (False, True)}
    assert runs[False]["dead"] == 0 and runs[True]["dead"] >= 1
    for r in runs.values():
        assert np.isfinite(r["loss_first"]) and 0 <= r["test_accuracy"] <= 1


def test_the_command_prints_one_row_per_seed_and_stem(data_dir, capsys):
    assert resnet_stem.main(["--steps", "2", "--seeds", "3", "--limit-test", "40", "--data-dir", str(data_dir)]) == 0
    out = capsys.readouterr().out
    assert "test: 40 images" in out
    rows = [line for line in out.splitlines() if line.startswith("| 3 |")]
    assert [r.split(" | ")[1] for r in rows] == ["conv, BN", "conv, BN, ReLU"]
