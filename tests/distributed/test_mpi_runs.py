"""Distributed training on 2 MPI processes (mpiexec -n 2, this machine) against one process."""
from __future__ import annotations

import numpy as np
import pytest

from bitnet import nn
from bitnet.distributed import SingleProcess

import workers as W
from mpi_helpers import check


def _ranks(out, mode):
    return [np.load(out / f"{mode}-rank{r}.npz") for r in (0, 1)]


def test_collectives_on_two_ranks(mpirun, tmp_path):
    check(mpirun.worker("collectives", tmp_path))
    r = _ranks(tmp_path, "collectives")
    for rank in (0, 1):
        np.testing.assert_array_equal(r[rank]["rank"], [rank, 2, rank, 2])  # one machine: local = global
        np.testing.assert_array_equal(r[rank]["sum"], np.arange(6, dtype=np.float32) * 3)
        np.testing.assert_array_equal(r[rank]["max"], np.arange(6, dtype=np.float32))  # rank 0's, rank 1's - 10
        np.testing.assert_array_equal(r[rank]["isum"], np.full(3, 2.0))
        np.testing.assert_array_equal(r[rank]["bcast"], np.full(4, 7))  # root 1's
        np.testing.assert_array_equal(r[rank]["gather"], [[0, 1], [10, 11]])


@pytest.mark.parametrize("kind", ["2d", "1d"])
def test_sync_batchnorm_on_two_ranks_is_batchnorm_on_the_concatenated_batch(mpirun, tmp_path, kind):
    """Rank 0 holds the first ceil(N/2) samples, rank 1 the rest (unequal parts for 1d: 5 and 5; 2d: 4 and 4
    images of 42 values). Outputs: the same float32 values up to 1 ulp of the largest (the statistics are
    float64 in both, combined per rank here); dx alike. dgamma and dbeta: each rank's part is a float64 sum
    rounded to float32, so their sum may be off by an ulp of each part (parts can be far larger than a
    cancelling total): 2 ulps of the larger part allowed. The running statistics are the same on both
    ranks, bit for bit, and equal the one process's up to float64 rounding."""
    check(mpirun.worker(f"syncbn{kind}", tmp_path))
    x, g = W.syncbn_inputs(kind)
    ref = W.syncbn_pass(None, x, g, nn.BatchNorm2d if kind == "2d" else nn.BatchNorm1d, slice(None))
    r = _ranks(tmp_path, f"syncbn{kind}")
    for key in ("y", "dx"):
        got = np.concatenate([r[0][key], r[1][key]])
        np.testing.assert_allclose(got, ref[key], rtol=0, atol=2 * np.spacing(np.abs(ref[key]).max()))
    for key in ("dgamma", "dbeta"):
        parts = np.abs(np.stack([r[0][key], r[1][key]])).max(axis=0)
        error = np.abs(r[0][key].astype(np.float64) + r[1][key] - ref[key])
        assert (error <= 2 * np.spacing(parts)).all(), (key, error, np.spacing(parts))
    for key in ("running_mean", "running_var"):
        np.testing.assert_array_equal(r[0][key], r[1][key])
        np.testing.assert_allclose(r[0][key], ref[key], rtol=1e-6)


def test_two_ranks_with_half_batches_end_with_the_weights_of_one_process(mpirun, tmp_path):
    """fit(distributed=comm) on 2 ranks, each with 16 of every global batch of 32 (SyncBatchNorm, Adam lr
    1e-2, 6 steps, ranks starting from different weights: rank 0's are broadcast) against fit() in one
    process with batches of 32.

    Tolerance: the gradients differ only in the order of float32 summation (each rank sums 16 samples,
    MPI adds the two sums; SyncBatchNorm combines per-rank statistics), a few ulps, i.e. a relative 1e-6.
    Adam's step lr * m / (sqrt(v) + eps) changes by a like relative amount, more where m is a cancelling
    sum; after 6 steps of at most lr = 1e-2 each, atol 1e-5 allows a relative change of 1.7e-4 in every
    step (measured: 5e-7). The control below shows what a real difference looks like: one process with
    batches of 16 (the per-rank batch, no averaging) ends 1e-3 or more away."""
    check(mpirun.worker("averaging", tmp_path))
    r = _ranks(tmp_path, "averaging")
    ref = W.train_averaged(SingleProcess())
    assert sorted(r[0].files) == sorted(ref)
    for key in ref:
        np.testing.assert_array_equal(r[0][key], r[1][key], err_msg=f"{key}: the ranks differ")  # bit for bit
        if key.endswith("step"):
            np.testing.assert_array_equal(r[0][key], ref[key])
        elif key.startswith("opt/"):  # Adam's moments: relative to their own size
            np.testing.assert_allclose(r[0][key], ref[key], rtol=1e-3, atol=1e-3 * np.abs(ref[key]).max())
        else:
            np.testing.assert_allclose(r[0][key], ref[key], rtol=0, atol=1e-5, err_msg=key)
    np.testing.assert_array_equal(r[0]["accuracy"], ref["accuracy"])  # whole counts over the global batch

    W.GLOBAL_BATCH, saved = W.GLOBAL_BATCH // 2, W.GLOBAL_BATCH
    try:
        control = W.train_averaged(SingleProcess())
    finally:
        W.GLOBAL_BATCH = saved
    assert max(np.abs(control[k] - ref[k]).max() for k in ref if k.startswith("model/") and "weight" in k) > 1e-3
