"""resnet18-binary with and without a ReLU at the end of its float stem, trained side by side.

    python -m bitnet.bench.resnet_stem --steps 300 --seeds 0 1 --data-dir ../shared/data

For each seed both variants start from the same weights (``models.get("resnet18-binary", seed=...,
stem_relu=...)``: the ReLU has no parameters) and see the same batches of Fashion-MNIST (28x28, batch
32, Adam at 1e-3, training mode). Per run it prints the training loss (mean of the first and of the
last 25 steps), the test accuracy in eval mode (running statistics, ``--limit-test`` images) and the
number of dead binary convolutions: those whose batch norm got an all-zero weight gradient in the
last step, i.e. whose output was one constant per channel (sign(relu(v)) = +1, so behind a ReLU the
first binary stage reads only +1 signs: models/resnet.py). Time: about 1 s a step on 2 cores.
"""
from __future__ import annotations

import argparse
import sys
import time

import numpy as np

LOG_EVERY = 50


def train_one(stem_relu: bool, seed: int, steps: int, train, test, batch: int = 32, log=print) -> dict:
    """One run (module docstring): ``{"loss_first", "loss_last", "test_accuracy", "dead"}``."""
    import bitnet
    from bitnet import functional as F
    from bitnet import models, optim
    from bitnet.nn import BatchNorm2d
    (x, y), (xt, yt) = train, test
    model = models.get("resnet18-binary", in_channels=1, image_size=x.shape[-1], seed=seed, stem_relu=stem_relu)
    opt = optim.Adam(model.parameters(), lr=1e-3)
    order = np.random.default_rng(seed + 1000).integers(0, len(x), (steps, batch))  # same batches for both
    losses, start = [], time.perf_counter()
    model.train()
    for step, idx in enumerate(order, 1):
        opt.zero_grad()
        loss = F.cross_entropy(model(bitnet.Tensor(x[idx])), y[idx])
        loss.backward()
        opt.step()
        losses.append(float(loss.data))
        if log and (step % LOG_EVERY == 0 or step == steps):
            log(f"  stem_relu={stem_relu} seed {seed}: step {step}/{steps}, loss (last {min(step, 25)}) "
                f"{np.mean(losses[-25:]):.4f}, {time.perf_counter() - start:.0f} s", flush=True)
    dead = sum(1 for name, m in model.named_modules()
               if isinstance(m, BatchNorm2d) and ".bn" in name and m.weight.grad is not None and not m.weight.grad.any())
    model.eval()
    right = 0
    with bitnet.no_grad():
        for i in range(0, len(xt), 500):
            right += int((model(bitnet.Tensor(xt[i:i + 500])).data.argmax(axis=1) == yt[i:i + 500]).sum())
    return {"loss_first": float(np.mean(losses[:25])), "loss_last": float(np.mean(losses[-25:])),
            "test_accuracy": right / len(xt), "dead": dead}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m bitnet.bench.resnet_stem", description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=300, help="training steps per run (default 300)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0], help="weight seeds (default 0)")
    p.add_argument("--limit-test", type=int, default=10000, help="test images evaluated (default all 10000)")
    p.add_argument("--data-dir", default=None, help="where the Fashion-MNIST files are (default: bitnet's data folder)")
    args = p.parse_args(argv)
    if args.steps < 1 or args.limit_test < 1:
        p.error(f"--steps and --limit-test must be at least 1, got {args.steps} and {args.limit_test}")
    from bitnet.data.datasets import load_splits, transform_for
    (x, y), (xt, yt) = load_splits("fashion-mnist", data_dir=args.data_dir)
    norm = transform_for("fashion-mnist")
    train, test = (norm(x), y), (norm(xt[:args.limit_test]), yt[:args.limit_test])
    rows = []
    for seed in args.seeds:
        for stem_relu in (False, True):
            rows.append((seed, stem_relu, train_one(stem_relu, seed, args.steps, train, test)))
    print(f"\nresnet18-binary on Fashion-MNIST, {args.steps} steps of 32, Adam 1e-3; test: {len(test[1])} images, "
          "eval mode")
    print("| seed | stem | loss, first 25 steps | loss, last 25 | test accuracy | dead binary convolutions |")
    print("|---|---|---|---|---|---|")
    for seed, stem_relu, r in rows:
        stem = "conv, BN, ReLU" if stem_relu else "conv, BN"
        print(f"| {seed} | {stem} | {r['loss_first']:.3f} | {r['loss_last']:.3f} | {r['test_accuracy']:.4f} | "
              f"{r['dead']} of 16 |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
