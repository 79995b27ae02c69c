"""One process of ``bitnet bench distributed``: training steps of a zoo model on N ranks, timed.

Run by the benchmark (``python -m bitnet.bench.distributed_worker ...``, under ``mpiexec -n N`` for N > 1).
Each rank trains on random images (the data's values do not change the time of a step) with its part
B/N of the global batch B, the gradients averaged by ``GradientAverager``. Every round times ``steps``
steps after a barrier; a step is forward, loss, backward (with the averaging) and the Adam update, and
the time in allreduce is the averager's (packing and starting buckets, waiting for them after backward,
writing the averages: the wait includes waiting for a slower rank). Per round the slowest rank's
numbers count (it sets the pace); rank 0 writes the medians over the rounds as JSON. Then the bare
allreduce of a buffer of the gradients' size, timed alone, gives the transport's cost.
"""
from __future__ import annotations

import argparse
import json
import time

import numpy as np


def main(argv=None):
    p = argparse.ArgumentParser()
    p.add_argument("--model", default="lenet-binary")
    p.add_argument("--batch", type=int, default=128, help="global batch")
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--threads", type=int, required=True)
    p.add_argument("--no-overlap", action="store_true")
    p.add_argument("--out", required=True)
    args = p.parse_args(argv)

    import numba
    from bitnet import Tensor, distributed, functional as F, models, optim
    numba.set_num_threads(args.threads)
    comm = distributed.init()
    model = models.get(args.model, seed=0)
    shape = (1, 28, 28) if args.model.startswith("lenet") else (3, 32, 32)
    opt = optim.Adam(model.parameters(), lr=1e-3)
    averager = distributed.GradientAverager(model, comm, overlap=not args.no_overlap)
    rng = np.random.default_rng(comm.rank)
    local = args.batch // comm.size
    x = rng.standard_normal((local,) + shape).astype(np.float32)
    y = rng.integers(0, 10, local)

    def step():
        opt.zero_grad()
        F.cross_entropy(model(Tensor(x)), y).backward()
        opt.step()

    for _ in range(args.warmup):
        step()
    rows = []
    for _ in range(args.rounds):
        comm.barrier()
        before = sum(averager.seconds.values())
        t0 = time.perf_counter()
        for _ in range(args.steps):
            step()
        elapsed = (time.perf_counter() - t0) / args.steps
        reduce = (sum(averager.seconds.values()) - before) / args.steps
        rows.append(comm.allgather(np.array([elapsed, reduce])).max(axis=0))  # the slowest rank's
    rows = np.array(rows)

    buffer = np.zeros(averager.gradient_bytes // 4, np.float32)
    bare = []
    for _ in range(args.rounds * 4 if comm.size > 1 else 0):
        comm.barrier()
        t0 = time.perf_counter()
        comm.allreduce(buffer)
        bare.append(time.perf_counter() - t0)
    if comm.is_main:
        record = {"model": args.model, "processes": comm.size, "threads": args.threads, "global_batch": args.batch,
                  "batch_per_process": local, "overlap": not args.no_overlap, "steps": args.steps,
                  "rounds": args.rounds, "step_s": float(np.median(rows[:, 0])),
                  "allreduce_s": float(np.median(rows[:, 1])), "gradient_bytes": averager.gradient_bytes,
                  "buckets": len(averager.buckets), "bare_allreduce_s": float(np.median(bare)) if bare else 0.0}
        with open(args.out, "w") as f:
            json.dump(record, f)
    averager.close()
    comm.close()


if __name__ == "__main__":
    main()
