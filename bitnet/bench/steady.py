"""Steady-state timing of one workload for a fixed time, with or without other load: every call's time.

    python -m bitnet.bench.steady infer resnet18-binary --batch 64 --threads 2 --busy 2 --seconds 6
    python -m bitnet.bench.steady train lenet-binary --batch 128 --threads 2 --busy 2 --seconds 6

``infer``: the packed model's forward pass (``bitnet.pack``) on random inputs; ``train``: one training
step (forward, cross-entropy, backward, Adam) of the float-latent model on random inputs. The
workload is warmed up, the ``--busy`` processes are started (``bitnet.bench.load``), and the workload
is then called back to back for ``--seconds``; the line printed gives the number of calls, the median,
the 90th percentile and the maximum. Unlike ``bitnet bench model``, which alternates methods in short
blocks, this shows how one engine behaves over seconds on a shared machine (the tail: calls that lost
a scheduler time slice or waited for a thread that was not running). Run two code versions one after
the other, alternating, to compare them.
"""
from __future__ import annotations

import argparse
import time

import numpy as np

SHAPES = {"lenet-binary": (1, 28, 28), "resnet18-binary": (3, 32, 32)}


def workload(kind, name, batch):
    """A function running one call of the workload."""
    import bitnet
    from bitnet import functional as F
    from bitnet.tensor import Tensor, no_grad
    rng = np.random.default_rng(0)
    x = Tensor(rng.standard_normal((batch,) + SHAPES[name]).astype(np.float32))
    model = bitnet.models.get(name, seed=0)
    if kind == "infer":
        packed = bitnet.pack(model.eval())

        def call():
            with no_grad():
                packed(x)
        return call
    opt = bitnet.optim.Adam(model.parameters(), lr=1e-3)
    y = rng.integers(0, 10, batch)

    def step():
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
    return step


def measure(call, seconds, busy_processes):
    """Every call's seconds, after a warm-up, while ``busy_processes`` busy loops run."""
    from bitnet.bench.load import busy
    for _ in range(2):
        call()
    times = []
    with busy(busy_processes):
        end = time.perf_counter() + seconds
        while time.perf_counter() < end:
            t = time.perf_counter()
            call()
            times.append(time.perf_counter() - t)
    return np.array(times)


def main(argv=None):
    import numba
    ap = argparse.ArgumentParser(prog="python -m bitnet.bench.steady", description=__doc__.split("\n\n")[0])
    ap.add_argument("kind", choices=("infer", "train"))
    ap.add_argument("model", choices=tuple(SHAPES))
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--threads", type=int, default=None, help="bitnet's threads (default: all of Numba's)")
    ap.add_argument("--busy", type=int, default=0, help="busy-looping processes running alongside")
    ap.add_argument("--seconds", type=float, default=6.0)
    args = ap.parse_args(argv)
    if args.threads:
        numba.set_num_threads(args.threads)
    ts = measure(workload(args.kind, args.model, args.batch), args.seconds, args.busy) * 1e3
    print(f"{args.kind} {args.model} batch {args.batch}, {numba.get_num_threads()} threads, busy {args.busy}: "
          f"{len(ts)} calls, median {np.median(ts):.2f} ms, p90 {np.percentile(ts, 90):.2f} ms, "
          f"max {ts.max():.2f} ms", flush=True)
    return ts


if __name__ == "__main__":
    main()
