"""The program test_consistency.py runs under ``mpiexec -n 2`` (``python consistency_workers.py OUT``):
fit with ranks whose shuffles differ, with ranks whose loaders differ, evaluate with drop_last, a list
of batches and a shuffled loader, and the thread count init gives each rank. Each rank writes what it
saw to ``OUT/consistency-rank{R}.npz``; the same helpers build the one-process references."""
from __future__ import annotations

import os
import sys

import numba
import numpy as np

import bitnet
from bitnet import distributed as D, nn, optim
from bitnet.data import DataLoader

N_SHUFFLE, BATCH, EPOCHS = 256, 64, 2


class Recorder(nn.Module):
    """A tiny classifier of 1-feature inputs that records, in training mode, the sample indices it is fed
    (input = index / 256, exact in float32)."""

    def __init__(self):
        super().__init__()
        self.dense = nn.Dense(1, 3, rng=0)
        self.seen = []

    def forward(self, x):
        if self.training:
            self.seen.append(np.rint(x.data[:, 0] * N_SHUFFLE).astype(np.int64))
        return self.dense(x)


def index_data(n=N_SHUFFLE):
    """x = index / 256 (n, 1) and 3 classes."""
    return (np.arange(n, dtype=np.float32) / N_SHUFFLE).reshape(n, 1), np.arange(n) % 3


def record_fit(comm, loader, epochs=EPOCHS):
    """fit a Recorder on ``loader``; returns the (steps, local batch) indices this rank trained on."""
    model = Recorder()
    bitnet.fit(model, optim.SGD(model.parameters(), lr=0.01), loader, epochs, progress=False, log=None,
               distributed=comm)
    return np.stack(model.seen)


def eval_model():
    return nn.Sequential(nn.Flatten(), nn.Dense(64, 10, rng=0))


def eval_data(n=250):
    rng = np.random.default_rng(3)
    return rng.standard_normal((n, 1, 8, 8)).astype(np.float32), rng.integers(0, 10, n)


def eval_batches():
    """A plain list of (x, y) batches: 100, 100 and 50 samples."""
    return list(DataLoader(eval_data(), 100))


def mismatches(comm):
    """fit and evaluate with loaders that differ between the ranks: the error each rank gets, and how many
    training steps ran before it."""
    out = {}
    cases = {"length": (512 - 128 * comm.rank, BATCH, False),
             "batch": (N_SHUFFLE, BATCH if comm.rank == 0 else BATCH // 2, False),
             "drop_last": (250, BATCH, comm.rank == 1)}
    for case, (n, batch, drop_last) in cases.items():
        model = Recorder()
        try:
            bitnet.fit(model, optim.SGD(model.parameters(), lr=0.01),
                       DataLoader(index_data(n), batch, shuffle=True, rng=0, drop_last=drop_last), 1, progress=False,
                       log=None, distributed=comm)
            out[f"error_{case}"] = np.array("no error")
        except D.DistributedError as e:
            out[f"error_{case}"] = np.array(str(e))
        out[f"steps_{case}"] = np.array(len(model.seen))
    try:
        x, y = eval_data()
        bitnet.evaluate(eval_model(), DataLoader((x[:250 - 50 * comm.rank], y[:250 - 50 * comm.rank]), 100),
                        distributed=comm)
        out["error_evaluate"] = np.array("no error")
    except D.DistributedError as e:
        out["error_evaluate"] = np.array(str(e))
    return out


def evaluations(comm):
    out = {}
    model = eval_model()
    out["drop_last"] = bitnet.evaluate(model, DataLoader(eval_data(), 100, drop_last=True), distributed=comm)
    out["batches"] = bitnet.evaluate(model, eval_batches(), distributed=comm)
    loader = DataLoader(eval_data(), 100, shuffle=True, rng=20 + comm.rank, drop_last=True)  # rank 0's seed: 20
    out["shuffle_drop_last"] = bitnet.evaluate(model, loader, distributed=comm)
    out["shuffle_next_draw"] = loader.rng.integers(1 << 30)  # the generator advanced as one process's does
    # fit with a list of batches as the validation set
    train = DataLoader(eval_data(128), 32, shuffle=True, rng=1)
    model = eval_model()
    hist = bitnet.fit(model, optim.SGD(model.parameters(), lr=0.05), train, 1, val_loader=eval_batches(),
                      progress=False, log=None, distributed=comm)
    out["fit_val"] = (hist.last.val_loss, hist.last.val_accuracy)
    out["fit_val_here"] = bitnet.evaluate(model, eval_batches())  # this rank alone, the whole list
    return {k: np.asarray(v) for k, v in out.items()}


def main():
    out_dir = sys.argv[1]
    result = {"threads_before": np.array(numba.get_num_threads())}
    comm = D.init()
    result["threads_after_init"] = np.array(numba.get_num_threads())
    result["local_size"] = np.array(comm.local_size)
    x, y = index_data()
    result["seen_unseeded"] = record_fit(comm, DataLoader((x, y), BATCH, shuffle=True))  # rng=None: fresh seeds
    result["seen_rank_seeded"] = record_fit(comm, DataLoader((x, y), BATCH, shuffle=True, rng=100 + comm.rank))
    result.update(mismatches(comm))
    result.update(evaluations(comm))
    comm.close()
    result["threads_after_close"] = np.array(numba.get_num_threads())
    with D.init(share_cores=False) as other:
        result["threads_unshared"] = np.array(numba.get_num_threads())
        rank = other.rank
    np.savez(os.path.join(out_dir, f"consistency-rank{rank}.npz"), **result)


if __name__ == "__main__":
    main()
