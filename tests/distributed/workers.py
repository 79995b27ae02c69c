"""Programs the distributed tests run under ``mpiexec -n 2`` (``python workers.py MODE OUT``), and the
same computations in one process for the tests to compare with. Each rank writes what it computed to
``OUT/MODE-rank{R}.npz``."""
from __future__ import annotations

import os
import sys
import time

import numpy as np

import bitnet
from bitnet import distributed as D, functional as F, nn, optim
from bitnet.data import DataLoader

STEPS_DATA = 96        # samples of the averaging run: 3 global batches of 32 per epoch, 2 epochs
GLOBAL_BATCH = 32


def small_net(seed, sync_comm=None):
    """Conv (no bias: a bias before batch norm has a zero gradient in exact arithmetic, rounding noise in
    float, which Adam would scale up to steps of +-lr) -> SyncBatchNorm2d -> ReLU -> pool -> Dense ->
    SyncBatchNorm1d -> Tanh -> Dense."""
    rng = np.random.default_rng(seed)
    model = nn.Sequential(nn.Conv2d(1, 6, 3, bias=False, rng=rng), nn.BatchNorm2d(6), nn.ReLU(), nn.MaxPool2d(2),
                          nn.Flatten(), nn.Dense(6 * 5 * 5, 16, bias=False, rng=rng), nn.BatchNorm1d(16), nn.Tanh(),
                          nn.Dense(16, 4, rng=rng))
    return nn.convert_sync_batchnorm(model, sync_comm)


def data(n=STEPS_DATA, seed=5):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, 1, 12, 12)).astype(np.float32)
    y = rng.integers(0, 4, n)
    return x, y


def train_averaged(comm, epochs=2):
    """fit() on ``comm``'s ranks: every rank starts from other weights (seed 100 + rank) and rank 0's are
    broadcast; returns the state dict, the optimizer's state arrays and the history."""
    model = small_net(100 + comm.rank, comm)
    opt = optim.Adam(model.parameters(), lr=1e-2)
    loader = DataLoader(data(), GLOBAL_BATCH, shuffle=True, rng=7)
    hist = bitnet.fit(model, opt, loader, epochs, progress=False, log=None, distributed=comm)
    state = {f"model/{k}": v for k, v in model.state_dict().items()}
    for i, entries in opt.state_dict()["state"].items():
        for name, value in entries.items():
            state[f"opt/{i}/{name}"] = np.asarray(value)
    state["loss"] = np.array([s.loss for s in hist.steps])
    state["accuracy"] = np.array([s.accuracy for s in hist.steps])
    return state


def syncbn_pass(comm, x, g, layer_cls, rank_part):
    """Forward and backward of a SyncBatchNorm layer on this rank's rows ``rank_part`` of x with output
    gradient g; returns y, dx, dgamma, dbeta and the running statistics."""
    bn = layer_cls(x.shape[1], momentum=0.3)
    bn.weight.data[...] = np.linspace(0.5, 1.5, x.shape[1], dtype=np.float32)
    bn.bias.data[...] = np.linspace(-0.2, 0.3, x.shape[1], dtype=np.float32)
    nn.sync_batchnorm.attach(bn, comm)
    xt = bitnet.Tensor(x[rank_part], requires_grad=True)
    y = bn(xt)
    y.backward(g[rank_part])
    return {"y": y.data, "dx": xt.grad, "dgamma": bn.weight.grad, "dbeta": bn.bias.grad,
            "running_mean": bn.running_mean, "running_var": bn.running_var}


def syncbn_inputs(kind):
    rng = np.random.default_rng(11)
    shape = (8, 5, 6, 7) if kind == "2d" else (10, 5)
    x = (rng.standard_normal(shape) * 3 + 10).astype(np.float32)  # |mean| >> std: cancellation would show
    g = rng.standard_normal(shape).astype(np.float32)
    return x, g


def rank_rows(n, comm):
    """Rows of rank r: a contiguous part, rank 0's larger when n is odd (unequal parts are allowed)."""
    from bitnet.distributed.data import evaluation_bounds
    start, stop = evaluation_bounds(n, comm.rank, comm.size)
    return slice(start, stop)


def collectives(comm):
    out = {"rank": np.array([comm.rank, comm.size, comm.local_rank, comm.local_size])}
    a = np.arange(6, dtype=np.float32) * (comm.rank + 1)
    out["sum"] = comm.allreduce(a.copy())
    out["max"] = comm.allreduce(a.copy() - 10 * comm.rank, op="max")
    r = comm.iallreduce(np.full(3, comm.rank + 0.5))
    out["isum"] = r.wait()
    b = np.full(4, 7 if comm.rank == 1 else -1, np.int64)
    out["bcast"] = comm.broadcast(b, root=1)
    out["gather"] = comm.allgather(np.array([comm.rank * 10, comm.rank * 10 + 1], np.int32))
    comm.barrier()
    return out


def fail(comm, out, how):
    """fit() with a checkpoint after every epoch; rank 1 fails in epoch 2, step 2: it raises
    (``raise``), sleeps (``hang``), or its process ends at once with status 0 (``vanish``: as a library
    calling ``_exit`` would; a launcher that does not clean up leaves the other rank waiting)."""
    model = small_net(3, comm)
    opt = optim.Adam(model.parameters(), lr=1e-2)
    loader = DataLoader(data(), GLOBAL_BATCH, shuffle=True, rng=7)
    ckpt = bitnet.callbacks.ModelCheckpoint(os.path.join(out, "ckpt.h5"), monitor="loss")

    class Fault(bitnet.callbacks.Callback):
        def on_step_end(self, run, step):
            if comm.rank == 1 and step.epoch == 2 and step.step == 2:
                if how == "raise":
                    raise RuntimeError("injected failure at epoch 2, step 2")
                print(f"rank 1 pid {os.getpid()} stops", flush=True)
                if how == "vanish":
                    os._exit(0)
                time.sleep(1000)

    bitnet.fit(model, opt, loader, 3, progress=False, log=None, distributed=comm, callbacks=[ckpt, Fault()])


def main():
    mode, out = sys.argv[1], sys.argv[2]
    comm = D.init()
    if mode == "averaging":
        result = train_averaged(comm)
    elif mode.startswith("syncbn"):
        kind = mode[-2:]
        x, g = syncbn_inputs(kind)
        cls = nn.SyncBatchNorm2d if kind == "2d" else nn.SyncBatchNorm1d
        result = syncbn_pass(comm, x, g, cls, rank_rows(len(x), comm))
    elif mode == "collectives":
        result = collectives(comm)
    elif mode in ("raise", "hang", "vanish"):
        fail(comm, out, mode)
        result = {}
    else:
        raise SystemExit(f"unknown mode {mode!r}")
    np.savez(os.path.join(out, f"{mode}-rank{comm.rank}.npz"), **result)
    comm.close()


if __name__ == "__main__":
    main()
