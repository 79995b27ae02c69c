"""A benchmark worker process: builds one framework's stepper, then times steps on request.

Protocol (one JSON object per line): the worker first prints {"ready": true, "source": data};
then the parent sends {"steps": n}, the worker replies {"times": [seconds per step, ...],
"losses": [loss of each step, ...]}; an empty line ends the worker. Each framework runs in its own
process so their thread pools never compete for the cores.

Data: the MNIST training set in order (normalized as bitnet trains) for the MNIST-shaped models,
random data of the model's input shape otherwise or when MNIST is absent: for resnet18-binary
(CIFAR-10 shape; no CIFAR files here) ``RANDOM_BATCHES`` fixed batches of standard-normal images
with random labels, cycled, so that the loss has something to fit and falls as on real data.
"""
from __future__ import annotations

import argparse
import json
import sys
import time

import numpy as np

SHAPES = {"lenet": (1, 28, 28), "lenet-binary": (1, 28, 28), "resnet18-binary": (3, 32, 32)}
RANDOM_BATCHES = 4


def _split(x, y, batch_size):
    return [(np.ascontiguousarray(x[i:i + batch_size]), y[i:i + batch_size].astype(np.int64))
            for i in range(0, len(y), batch_size)]


def load_batches(batch_size, n_batches, data_dir, shape=(1, 28, 28)):
    """The first n_batches MNIST training batches (normalized; all 60000 images at most) for the
    MNIST shape, else (or if the files are absent) ``RANDOM_BATCHES`` batches of random data."""
    if tuple(shape) == (1, 28, 28):
        try:
            from bitnet.data import load_mnist, Normalize, MNIST_MEAN, MNIST_STD
            x, y = load_mnist("train", data_dir=data_dir)
            x = Normalize(MNIST_MEAN, MNIST_STD)(x[:batch_size * n_batches])
            return _split(x, y[:batch_size * n_batches], batch_size), "mnist"
        except Exception:  # noqa: BLE001 - the benchmark also runs without the data set
            pass
    rng = np.random.default_rng(0)
    n = batch_size * RANDOM_BATCHES
    x = rng.standard_normal((n,) + tuple(shape)).astype(np.float32)
    return _split(x, rng.integers(0, 10, n), batch_size), f"random {'x'.join(map(str, shape))}"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--framework", required=True)
    ap.add_argument("--model", default="lenet")
    ap.add_argument("--batch-size", type=int, required=True)
    ap.add_argument("--threads", type=int, required=True)
    ap.add_argument("--data-dir", default=None)
    args = ap.parse_args()
    from bitnet.bench.train_step import make_stepper
    batches, source = load_batches(args.batch_size, -(-60000 // args.batch_size), args.data_dir,
                                   SHAPES[args.model])
    step = make_stepper(args.framework, args.model, batches, args.threads)
    for i in range(3):  # warm-up: compilation, allocator, thread pools
        step(i)
    print(json.dumps({"ready": True, "source": source}), flush=True)
    i = 0
    for line in sys.stdin:
        if not line.strip():
            break
        n = json.loads(line)["steps"]
        times, losses = [], []
        for _ in range(n):
            t = time.perf_counter()
            losses.append(step(i))
            times.append(time.perf_counter() - t)
            i += 1
        print(json.dumps({"times": times, "losses": losses}), flush=True)


if __name__ == "__main__":
    main()
