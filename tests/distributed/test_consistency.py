"""The ranks of a distributed fit use one data order and compatible loaders; evaluate splits what one
process would evaluate; init shares the cores. One ``mpiexec -n 2`` run (consistency_workers.py) checked
against one process, plus checks without MPI."""
from __future__ import annotations

import os
import sys
from types import SimpleNamespace

import numba
import numpy as np
import pytest

import bitnet
from bitnet import distributed as D
from bitnet.data import DataLoader
from bitnet.distributed.data import agree

import consistency_workers as W
from mpi_helpers import check

WORKER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "consistency_workers.py")


@pytest.fixture(scope="module")
def ranks(mpirun, tmp_path_factory):
    out = tmp_path_factory.mktemp("consistency")
    check(mpirun([sys.executable, WORKER, out]), "consistency_workers.py on 2 ranks")
    return [dict(np.load(out / f"consistency-rank{r}.npz")) for r in (0, 1)]


def _global_batches(ranks, key):
    """Every step's global batch: rank 0's part, then rank 1's."""
    return np.concatenate([ranks[0][key], ranks[1][key]], axis=1)


@pytest.mark.parametrize("key", ["seen_unseeded", "seen_rank_seeded"])
def test_every_sample_is_used_once_per_epoch_though_the_ranks_generators_differ(ranks, key):
    """DataLoader(shuffle=True) without rng (a fresh seed on each rank), and a seed derived from the rank:
    in every epoch the 2 ranks together train on each of the 256 samples exactly once (before the fix:
    195 distinct of 256), in the same order as one process seeded like rank 0."""
    steps = W.N_SHUFFLE // W.BATCH
    batches = _global_batches(ranks, key)
    assert batches.shape == (W.EPOCHS * steps, W.BATCH)
    for epoch in range(W.EPOCHS):
        used = batches[epoch * steps:(epoch + 1) * steps].reshape(-1)
        np.testing.assert_array_equal(np.sort(used), np.arange(W.N_SHUFFLE), err_msg=f"epoch {epoch + 1}")
    assert not np.array_equal(batches[:steps], batches[steps:])  # a new order each epoch
    if key == "seen_rank_seeded":  # rank 0 was seeded 100: one process with that seed
        loader = DataLoader(W.index_data(), W.BATCH, shuffle=True, rng=100)
        one = [np.rint(xb[:, 0] * W.N_SHUFFLE) for _ in range(W.EPOCHS) for xb, _ in loader]
        np.testing.assert_array_equal(batches, np.stack(one))


@pytest.mark.parametrize("case,expected", [
    ("length", "dataset length 512 on rank 0, 384 on rank 1; steps per epoch 8 on rank 0, 6 on rank 1"),
    ("batch", "batch size 64 on rank 0, 32 on rank 1; steps per epoch 4 on rank 0, 8 on rank 1"),
    ("drop_last", "drop_last False on rank 0, True on rank 1; steps per epoch 4 on rank 0, 3 on rank 1"),
])
def test_loaders_that_differ_between_ranks_stop_fit_before_the_first_step(ranks, case, expected):
    """Rank r with 512 - 128 r samples ran 8 steps against 6 and ended with a misleading "weights differ"
    error; now both ranks raise the same DistributedError, naming each rank's values, before training."""
    for r in (0, 1):
        message = str(ranks[r][f"error_{case}"])
        assert f"rank {r} of 2: the ranks' training loaders differ: {expected}." in message, message
        assert "same data set" in message and "weights" not in message
        assert int(ranks[r][f"steps_{case}"]) == 0
    assert "dataset length 250 on rank 0, 200 on rank 1" in str(ranks[1]["error_evaluate"])


def test_distributed_evaluate_gives_the_one_process_result(ranks):
    """drop_last (250 samples in batches of 100: 200 evaluated, not 250), a plain list of batches, a
    shuffled loader with drop_last and a seed per rank (rank 0's order decides which 200, as one process
    seeded alike), and fit's validation on a list: the numbers of one process, on both ranks, up to the
    order of float summation."""
    model = W.eval_model()
    x, y = W.eval_data()
    drop = bitnet.evaluate(model, DataLoader((x, y), 100, drop_last=True))
    assert drop != bitnet.evaluate(model, DataLoader((x, y), 100))  # dropping matters for this set
    shuffled = DataLoader((x, y), 100, shuffle=True, rng=20, drop_last=True)
    expected = {"drop_last": drop, "batches": bitnet.evaluate(model, W.eval_batches()),
                "shuffle_drop_last": bitnet.evaluate(model, shuffled)}
    next_draw = shuffled.rng.integers(1 << 30)
    for r in (0, 1):
        for key, (loss, acc) in expected.items():
            np.testing.assert_allclose(ranks[r][key][0], loss, rtol=1e-6, err_msg=f"rank {r}: {key}")
            assert ranks[r][key][1] == acc, (r, key)
        np.testing.assert_allclose(ranks[r]["fit_val"], ranks[r]["fit_val_here"], rtol=1e-6)
    assert int(ranks[0]["shuffle_next_draw"]) == next_draw


def test_init_gives_each_rank_its_share_of_the_cores_and_close_gives_it_back(ranks):
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    for r in (0, 1):
        got = {k: int(ranks[r][k]) for k in ("threads_before", "threads_after_init", "threads_after_close",
                                             "threads_unshared", "local_size")}
        assert got["local_size"] == 2
        assert got["threads_after_init"] == max(1, min(cores // 2, got["threads_before"])), got
        assert got["threads_after_close"] == got["threads_before"] == got["threads_unshared"], got


# -- without MPI ----------------------------------------------------------------------------------------

class TwoRanks:
    """Rank 0 of 2, the other rank's values given: what ``allgather`` would return."""
    rank, size = 0, 2

    def __init__(self, other):
        self.other = np.asarray(other, np.int64)

    def allgather(self, a, what=""):
        return np.stack([a, self.other])


def test_agree_names_each_differing_value_per_rank():
    agree(TwoRanks([5, 1]), [("n", 5), ("b", 1)], "things", "fix it")  # equal: nothing
    with pytest.raises(D.DistributedError,
                       match=r"^rank 0 of 2: the ranks' things differ: b 1 on rank 0, 2 on rank 1\. fix it$"):
        agree(TwoRanks([5, 2]), [("n", 5), ("b", 1)], "things", "fix it")


def test_evaluation_shares_follow_drop_last_and_lists_and_refuse_unsized_iterables():
    x = np.arange(250, dtype=np.float32).reshape(250, 1)
    loader = DataLoader((x, np.zeros(250, np.int64)), 100, drop_last=True)
    parts = [np.concatenate([b[0] for b in D.shard_for_evaluation(loader, SimpleNamespace(rank=r, size=2))])
             for r in (0, 1)]
    np.testing.assert_array_equal(np.concatenate(parts)[:, 0], np.arange(200))  # what one process evaluates
    batches = list(DataLoader((x, np.zeros(250, np.int64)), 30))  # 9 batches
    shares = [list(D.shard_for_evaluation(batches, SimpleNamespace(rank=r, size=2))) for r in (0, 1)]
    assert [len(s) for s in shares] == [5, 4]
    assert all(a is b for a, b in zip(shares[0] + shares[1], batches))
    with pytest.raises(TypeError, match="expected a bitnet.data.DataLoader or a sized iterable"):
        D.shard_for_evaluation(iter(batches), SimpleNamespace(rank=0, size=2))


def test_share_cores_by_default_respects_a_chosen_thread_count(monkeypatch):
    from bitnet.distributed.env import restore_threads, share_cores_by_default, threads_chosen
    monkeypatch.delenv("NUMBA_NUM_THREADS", raising=False)
    default = numba.config.NUMBA_NUM_THREADS
    before = numba.get_num_threads()
    try:
        numba.set_num_threads(default)
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
        comm = SimpleNamespace(local_size=2, threads_set=None)
        share_cores_by_default(comm)
        assert numba.get_num_threads() == max(1, min(cores // 2, default))
        restore_threads(comm)
        assert numba.get_num_threads() == default and comm.threads_set is None
        if default > 1:  # a count lowered by the user stays
            numba.set_num_threads(default - 1)
            assert threads_chosen()
            share_cores_by_default(comm)
            assert numba.get_num_threads() == default - 1 and comm.threads_set is None
        monkeypatch.setenv("NUMBA_NUM_THREADS", str(default))
        numba.set_num_threads(default)
        share_cores_by_default(comm)
        assert numba.get_num_threads() == default
        share_cores_by_default(SimpleNamespace(local_size=1))  # alone on the machine: nothing to share
        assert numba.get_num_threads() == default
    finally:
        numba.set_num_threads(before)
