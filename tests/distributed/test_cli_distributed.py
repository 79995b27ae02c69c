"""``mpiexec -n 2 bitnet train --distributed``: the same run as one process, checkpoints that resume in
either, rank 0 alone printing, and the global batch size checked."""
from __future__ import annotations

import subprocess
import sys

import numpy as np

import bitnet

from mpi_helpers import REPO, check

# lenet with SyncBatchNorm (so 2 processes normalize like 1), SGD (Adam would scale the rounding noise of
# the gradient of a bias feeding a batch norm, zero in exact arithmetic, up to steps of +-lr), 640 images
# in batches of 64: 10 steps per epoch; a constant learning rate, so that a run of 1 epoch resumed up to 2
# is the run of 2 epochs (a cosine schedule spans the epochs the run was started with).
RUN = ["--model", "lenet", "--sync-batchnorm", "--optimizer", "sgd", "--lr", "0.02", "--schedule", "constant",
       "--limit-train", "640", "--batch-size", "64", "--seed", "4"]


def _train(mpirun, data_dir, n, *args):
    """``bitnet train`` in one plain process (n = 1), or ``mpiexec -n N bitnet train --distributed``."""
    cmd = [sys.executable, "-m", "bitnet.cli", "train", "--data-dir", data_dir, *args]
    if n == 1:
        res = subprocess.run(cmd, capture_output=True, text=True, env=mpirun.env(), cwd=REPO, timeout=600)
        return check(res, "one process")
    return check(mpirun([*cmd[:4], "--distributed", *cmd[4:]], n=n), f"{n} processes")


def _weights(path):
    state = bitnet.load_training_state(path)
    return bitnet.load(path).state_dict(), state


def _close(a, b, what):
    """Weights and SGD momentum after 10-20 steps of 2 processes against 1. The gradients differ in the
    order of float32 summation (each rank sums its 32 images, MPI adds the two sums; SyncBatchNorm's
    statistics are combined per rank): an error relative to the sum of the terms' magnitudes, which in
    cancelling sums is far more than the result's ulp; SGD adds lr times the gradients to the weights.
    Measured: weights within 1.2e-6, momentum buffers (up to 0.1) within 1e-7; allowed: 2e-5 for both, 10x
    less than the change of weights from one step of a different batch (about lr * |g| = 2e-4 and more).
    Those figures hold while every run sums conv2's weight gradient in blocks that line up (one GEMM
    over 64 images, or two over 32 added by MPI): its 26 MB lowered matrix is below the size from which
    ``bitnet.ops.conv_chunks`` runs a convolution in chunks. With chunks of 20 images in the 1-process
    run (tried, 2026-12-01), a run resumed in the other process count ended up to 6.3e-5 away: ties of
    max pooling over ReLU zeros turn last-bit differences into a gradient routed elsewhere."""
    (wa, sa), (wb, sb) = a, b
    assert sa.epoch == sb.epoch and sa.rng == sb.rng, what  # the same data order, exactly
    for k in wa:
        np.testing.assert_allclose(wa[k], wb[k], rtol=0, atol=2e-5, err_msg=f"{what}: {k}")
    for i, entries in sa.optimizer["state"].items():
        for name, value in entries.items():
            np.testing.assert_allclose(value, sb.optimizer["state"][i][name], rtol=0, atol=2e-5,
                                       err_msg=f"{what}: optimizer state {i} {name}")


def test_two_processes_train_like_one_and_resume_in_either(mpirun, data_dir, tmp_path):
    one, two = tmp_path / "one.h5", tmp_path / "two.h5"
    res = _train(mpirun, data_dir, 2, *RUN, "--epochs", "2", "--save", two)
    out = res.stdout.splitlines()
    assert out[-1].startswith("test accuracy: ") and sum(line.startswith("test accuracy") for line in out) == 1
    assert any(line.startswith("distributed: 2 processes (rank 0 pid") and "32 images per process" in line
               for line in out)
    assert sum(line.startswith("epoch 2/2:") for line in out) == 1  # rank 0 alone prints
    _train(mpirun, data_dir, 1, *RUN, "--epochs", "2", "--save", one)
    _close(_weights(two), _weights(one), "2 processes vs 1")
    assert "SyncBatchNorm2d" in repr(bitnet.io.describe(two)["architecture"])  # the file keeps them synchronized

    # a 2-process checkpoint of epoch 1 resumed in 1 process, and the reverse, against the runs above
    for first, then in ((2, 1), (1, 2)):
        path = tmp_path / f"{first}-then-{then}.h5"
        _train(mpirun, data_dir, first, *RUN, "--epochs", "1", "--save", path)
        res = _train(mpirun, data_dir, then, "--resume", path, "--epochs", "2", "--save", path)
        assert f"resumed from {path} after epoch 1" in res.stdout
        _close(_weights(path), _weights(one), f"{first} then {then} processes vs 1")


def test_the_global_batch_must_split_equally(mpirun, data_dir):
    res = mpirun([sys.executable, "-m", "bitnet.cli", "train", "--distributed", "--data-dir", data_dir,
                  "--limit-train", "64", "--batch-size", "63", "--epochs", "1"], n=2, timeout=300)
    assert res.returncode == 2, res.stderr[-2000:]
    assert "bitnet train (rank 0 of 2): error: --batch-size 63: with --distributed it is the global batch, split " \
           "equally over the 2 processes; give a multiple of 2, e.g. 62 or 64" in res.stderr


def test_help_names_the_distributed_options():
    res = subprocess.run([sys.executable, "-m", "bitnet.cli", "train", "--help"], capture_output=True, text=True,
                         cwd=REPO)
    assert "--distributed" in res.stdout and "--sync-batchnorm" in res.stdout
