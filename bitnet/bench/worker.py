"""A benchmark worker process: builds one framework's stepper, then times steps on request.

Protocol (one JSON object per line): the parent sends {"steps": n}, the worker replies
{"times": [seconds per step, ...], "loss": last loss}; an empty line ends the worker. Each
framework runs in its own process so their thread pools never compete for the cores.
"""
from __future__ import annotations

import argparse
import json
import sys
import time

import numpy as np


def load_batches(batch_size, n_batches, data_dir):
    """The first n_batches MNIST training batches (normalized; all 60000 images at most), or
    random data of the same shape if the files are absent."""
    try:
        from bitnet.data import load_mnist, Normalize, MNIST_MEAN, MNIST_STD
        x, y = load_mnist("train", data_dir=data_dir)
        x = Normalize(MNIST_MEAN, MNIST_STD)(x[:batch_size * n_batches])
        y = y[:batch_size * n_batches]
        source = "mnist"
    except Exception:  # noqa: BLE001 - the benchmark also runs without the data set
        rng = np.random.default_rng(0)
        x = rng.standard_normal((batch_size * n_batches, 1, 28, 28)).astype(np.float32)
        y = rng.integers(0, 10, batch_size * n_batches)
        source = "random"
    batches = [(np.ascontiguousarray(x[i:i + batch_size]), y[i:i + batch_size].astype(np.int64))
               for i in range(0, len(y), batch_size)]
    return batches, source


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--framework", required=True)
    ap.add_argument("--batch-size", type=int, required=True)
    ap.add_argument("--threads", type=int, required=True)
    ap.add_argument("--data-dir", default=None)
    args = ap.parse_args()
    from bitnet.bench.lenet_step import make_stepper
    batches, source = load_batches(args.batch_size, -(-60000 // args.batch_size), args.data_dir)
    step = make_stepper(args.framework, batches, args.threads)
    for i in range(3):  # warm-up: compilation, allocator, thread pools
        step(i)
    print(json.dumps({"ready": True, "source": source}), flush=True)
    i = 0
    for line in sys.stdin:
        if not line.strip():
            break
        n = json.loads(line)["steps"]
        times, loss = [], float("nan")
        for _ in range(n):
            t = time.perf_counter()
            loss = step(i)
            times.append(time.perf_counter() - t)
            i += 1
        print(json.dumps({"times": times, "loss": loss}), flush=True)


if __name__ == "__main__":
    main()
