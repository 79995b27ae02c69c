"""bitnet.distributed without MPI: sharded batches, the launcher's environment, the single-process
fallback, buckets, SyncBatchNorm in model files, and `import bitnet` without mpi4py."""
from __future__ import annotations

import subprocess
import sys
from types import SimpleNamespace

import numpy as np
import pytest

import bitnet
from bitnet import distributed as D, nn
from bitnet.data import DataLoader
from bitnet.distributed.data import evaluation_bounds

from mpi_helpers import REPO


def _dataset(n):
    return np.arange(n, dtype=np.float32).reshape(n, 1), np.arange(n) % 7


@pytest.mark.parametrize("n,batch,size", [(100, 20, 2), (100, 32, 2), (103, 32, 4), (60, 12, 3), (9, 8, 1),
                                          (100, 32, 8)])
def test_ranks_together_see_the_batches_of_one_process(n, batch, size):
    """Epoch after epoch, rank r's batch b is the r-th part of one process's batch b (same seed), every
    rank has the same number of batches and samples; where (n mod B) mod N != 0, the last batch loses its
    last (n mod B) mod N samples."""
    ref = DataLoader(_dataset(n), batch, shuffle=True, rng=3)
    ranks = [D.ShardedLoader(DataLoader(_dataset(n), batch, shuffle=True, rng=3), SimpleNamespace(rank=r, size=size))
             for r in range(size)]
    assert len({len(s) for s in ranks}) == 1
    drop = (n % batch) % size
    assert ranks[0].dropped_per_epoch == drop
    for epoch in range(3):
        one = list(ref)
        parts = [list(s) for s in ranks]
        assert len(parts[0]) == len(one) - (1 if 0 < n % batch < size else 0)
        for b, (x1, y1) in enumerate(one[:len(parts[0])]):
            xs = np.concatenate([p[b][0] for p in parts])
            ys = np.concatenate([p[b][1] for p in parts])
            assert len({len(p[b][1]) for p in parts}) == 1  # equal parts
            keep = len(x1) - (drop if b == len(one) - 1 else 0)
            np.testing.assert_array_equal(xs, x1[:keep])
            np.testing.assert_array_equal(ys, y1[:keep])
            assert xs.dtype == np.float32 and ys.dtype == np.int64


def test_global_batch_must_be_a_multiple_of_the_ranks_and_drop_last_is_kept():
    with pytest.raises(ValueError, match="batch size 10 is not a multiple of the 3 processes.*e.g. 9 or 12"):
        D.ShardedLoader(DataLoader(_dataset(30), 10), SimpleNamespace(rank=0, size=3))
    with pytest.raises(TypeError, match="expected a bitnet.data.DataLoader"):
        D.ShardedLoader([1, 2], SimpleNamespace(rank=0, size=1))
    s = D.ShardedLoader(DataLoader(_dataset(50), 16, drop_last=True), SimpleNamespace(rank=1, size=2))
    assert s.batch_sizes() == [16, 16, 16] and s.dropped_per_epoch == 0 and s.local_batch_size == 8
    assert [x[:, 0].tolist() for x, _ in s] == [list(range(8, 16)), list(range(24, 32)), list(range(40, 48))]


def test_evaluation_parts_cover_the_set_once():
    for n in (0, 1, 5, 10, 1001):
        for size in (1, 2, 3, 8):
            bounds = [evaluation_bounds(n, r, size) for r in range(size)]
            assert bounds[0][0] == 0 and bounds[-1][1] == n
            assert all(a[1] == b[0] for a, b in zip(bounds, bounds[1:]))
            assert max(b - a for a, b in bounds) - min(b - a for a, b in bounds) <= 1
    loader = DataLoader(_dataset(11), 4, transform=lambda x: x * 2)
    part = D.shard_for_evaluation(loader, SimpleNamespace(rank=1, size=2))
    np.testing.assert_array_equal(np.concatenate([x for x, _ in part])[:, 0], np.arange(6, 11) * 2)


def test_launcher_environment_is_read_without_mpi4py():
    assert D.mpi_environment({}) is None and not D.launched_by_mpi({})
    env = D.mpi_environment({"PMI_RANK": "1", "PMI_SIZE": "4"})
    assert env["rank"] == 1 and env["size"] == 4 and "Hydra" in env["launcher"]
    assert D.mpi_environment({"OMPI_COMM_WORLD_RANK": "0", "OMPI_COMM_WORLD_SIZE": "2"})["launcher"] == "Open MPI"
    assert D.launched_by_mpi({"PMIX_RANK": "3", "SLURM_STEP_NUM_TASKS": "8"})
    assert not D.launched_by_mpi({"PMI_RANK": "0", "PMI_SIZE": "1"})  # mpiexec -n 1: one process
    assert D.mpi_environment({"PMI_RANK": "5", "PMI_SIZE": "2"}) is None  # inconsistent: not a launch


def test_single_process_collectives_are_the_identity():
    comm = D.init("single")
    assert (comm.rank, comm.size, comm.local_rank, comm.local_size, comm.is_main) == (0, 1, 0, 1, True)
    a = np.arange(4, dtype=np.float32)
    assert comm.allreduce(a) is a and comm.broadcast(a) is a and comm.iallreduce(a).wait() is a
    np.testing.assert_array_equal(comm.allgather(a), a[None])
    comm.barrier()
    with pytest.raises(ValueError, match="C-contiguous and writable"):
        comm.allreduce(np.arange(8.0)[::2])
    with pytest.raises(TypeError, match="expected a NumPy array"):
        comm.allreduce([1.0, 2.0])
    with pytest.raises(ValueError, match="op must be one of sum, max, min"):
        comm.allreduce(a, op="mean")
    with pytest.raises(ValueError, match="backend must be"):
        D.init("nccl")
    assert isinstance(D.init(), D.SingleProcess)  # no launcher here


def test_averager_buckets_follow_backward_order_and_do_nothing_on_one_process():
    model = nn.Sequential(nn.Dense(300, 400, rng=0), nn.Tanh(), nn.Dense(400, 10, rng=1))
    avg = D.GradientAverager(model, D.SingleProcess(), bucket_bytes=100_000)
    names = {id(p): n for n, p in model.named_parameters()}
    # last layer first; the 480 kB weight alone in a bucket; each bucket one dtype
    assert [[names[id(p)] for p in b.params] for b in avg.buckets] == [["2.bias", "2.weight", "0.bias"],
                                                                         ["0.weight"]]
    assert avg.gradient_bytes == 4 * (model.num_parameters() + 4)  # + one flag per parameter
    assert all(not p._grad_hooks for p in model.parameters())  # one process: nothing to average
    with pytest.raises(TypeError, match="expected a bitnet Parameter"):
        D.GradientAverager([bitnet.Tensor(np.zeros(2, np.float32), requires_grad=True)], D.SingleProcess())


def test_sync_batchnorm_is_batchnorm_on_one_process_and_in_model_files(tmp_path):
    rng = np.random.default_rng(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3, rng=rng), nn.BatchNorm2d(4), nn.Flatten(), nn.Dense(4 * 36, 8, rng=rng),
                          nn.BatchNorm1d(8))
    x = rng.standard_normal((5, 1, 8, 8)).astype(np.float32)
    expected = model(bitnet.Tensor(x)).data
    bn = model[1]
    nn.convert_sync_batchnorm(model, D.SingleProcess())
    assert [type(m).__name__ for m in model] == ["Conv2d", "SyncBatchNorm2d", "Flatten", "Dense", "SyncBatchNorm1d"]
    assert model[1].weight is bn.weight and model[1].running_mean is bn.running_mean  # the same objects
    np.testing.assert_array_equal(model(bitnet.Tensor(x)).data, expected)  # training mode, batch statistics
    state = model.state_dict()
    bitnet.save(model, tmp_path / "m.h5", input_shape=(1, 8, 8))
    loaded = bitnet.load(tmp_path / "m.h5")
    assert type(loaded[1]).__name__ == "SyncBatchNorm2d" and loaded[1].comm is None
    for a, b in zip(loaded.state_dict().values(), state.values()):
        np.testing.assert_array_equal(a, b)
    loaded.eval()
    model.eval()
    np.testing.assert_array_equal(loaded(bitnet.Tensor(x)).data, model(bitnet.Tensor(x)).data)
    assert bitnet.pack(loaded) is not None  # packing sees batch norms (they are subclasses)


def test_import_bitnet_never_imports_mpi4py():
    code = ("import sys, bitnet, bitnet.distributed, bitnet.cli; bitnet.distributed.init(); "
            "bitnet.cli.build_parser(); assert 'mpi4py' not in sys.modules, 'mpi4py imported'")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO,
                         env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO)})
    assert res.returncode == 0, res.stderr


def test_ring_allreduce_estimate_formula():
    from bitnet.bench.distributed import configurations, ring_allreduce_s
    # 2 (N-1)/N * bytes / bandwidth + 2 (N-1) * latency
    assert ring_allreduce_s(8e6, 2, 1e9, 1e-5) == pytest.approx(8e6 / 1e9 + 2e-5)
    assert ring_allreduce_s(8e6, 64, 1.25e9, 2e-5) == pytest.approx(2 * 63 / 64 * 8e6 / 1.25e9 + 126 * 2e-5)
    assert configurations([2], 2) == [(1, 2, True), (1, 1, True), (2, 1, True), (2, 1, False)]


class _FloatLabels:
    """A dataset of its own kind (not an ArrayDataset) whose labels are not whole numbers."""

    def __len__(self):
        return 8

    def __getitem__(self, idx):
        idx = np.asarray(idx)
        return np.zeros((len(idx), 1), np.float32), np.full(len(idx), 0.5)


def test_sharded_batches_check_labels_as_the_loader_does():
    for loader in (DataLoader(_FloatLabels(), 4), D.ShardedLoader(DataLoader(_FloatLabels(), 4),
                                                                   SimpleNamespace(rank=0, size=1))):
        with pytest.raises(ValueError, match="labels of batch 0"):
            next(iter(loader))
