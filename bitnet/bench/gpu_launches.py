"""Kernel launches per GPU training step, counted without a GPU: ``python -m bitnet.bench.gpu_launches``.

On a GPU every CuPy operation of a step is a kernel launch that costs the host a few microseconds
(issue 16 measured 9.5 us for a PyTorch op and 26.6 us for a numba-cuda launch on an H200), and a
step that reads nothing back (docs/gpu-training.md) is host-bound wherever those costs add up to
more than its GPU time: small networks and small batches. This tool runs the training step of
``bitnet bench train`` (forward, cross entropy, backward, Adam) on the NumPy emulation of the GPU
arrays (``bitnet.gpu.arrays.emulate``) and counts its device operations that would launch a kernel
(``bitnet.gpu.emulated.count_device_calls``: views and allocations without a fill are not counted,
so the count is an estimate), by phase of the step and by the bitnet function that made them.
The counts do not depend on the batch size; a small batch keeps the run short. The binary layers'
numba.cuda kernels do not run on the emulation (their float path stands in), so a binary layer's
forward counts its float path's operations instead of its few bit kernels.

Multiplied by the host time of one launch measured on a GPU (``python -m bitnet.bench.gpu_arrays``),
the count gives the host time of a step, to set beside its GPU time (``bitnet bench train --device
cuda``).
"""
from __future__ import annotations

import argparse
import json
from collections import Counter

import numpy as np

from bitnet.bench.worker import SHAPES

PHASES = ("forward", "loss", "backward", "optimizer")


def count_step(model_name="lenet-binary", batch=2, warmup=2, seed=0):
    """``{"phases": {phase: launches}, "total": n, "by_site": [(where, n)], "by_name": [(name, n)]}``
    for one training step (after ``warmup`` steps, which create the optimizer's state)."""
    from bitnet import Tensor, functional as F, models, optim
    from bitnet.gpu.arrays import emulate
    from bitnet.gpu.emulated import count_device_calls
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((batch,) + SHAPES[model_name]).astype(np.float32)
    y = rng.integers(0, 10, batch)
    with emulate():
        model = models.get(model_name, seed=seed).to("cuda")
        opt = optim.Adam(model.parameters(), lr=1e-3)
        params = list(model.parameters())
        xd = Tensor(x, device="cuda")

        def step(phases=None):
            with count_device_calls() as calls:
                for p in params:
                    p.grad = None
                logits = model(xd)
                marks = [len(calls)]
                loss = F.cross_entropy(logits, y)
                marks.append(len(calls))
                loss.backward()
                marks.append(len(calls))
                opt.step()  # with the binary kernels' constraint (clip to [-1, 1])
                marks.append(len(calls))
            if phases is not None:
                phases.update(zip(PHASES, np.diff([0] + marks).tolist()))
            return calls

        for _ in range(warmup):
            step()
        phases = {}
        calls = step(phases)
    return {"model": model_name, "batch": batch, "phases": phases, "total": len(calls),
            "by_site": Counter(where for _, where in calls).most_common(),
            "by_name": Counter(name for name, _ in calls).most_common()}


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m bitnet.bench.gpu_launches", description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="lenet-binary,resnet18-binary",
                        help="comma-separated zoo models (default: lenet-binary,resnet18-binary)")
    parser.add_argument("--batch", type=int, default=2, help="batch size (the counts do not depend on it; default 2)")
    parser.add_argument("--top", type=int, default=12, help="sites and names to list (default 12)")
    parser.add_argument("--json", help="also write the counts to this file")
    args = parser.parse_args(argv)
    names = [m.strip() for m in args.model.split(",") if m.strip()]
    unknown = [m for m in names if m not in SHAPES]
    if unknown:
        parser.error(f"unknown model(s) {', '.join(unknown)}; choose from {', '.join(sorted(SHAPES))}")
    results = []
    for name in names:
        r = count_step(name, args.batch)
        results.append(r)
        phases = ", ".join(f"{k} {v}" for k, v in r["phases"].items())
        print(f"{name}: {r['total']} kernel launches per training step ({phases})")
        print("  by bitnet function:")
        for where, n in r["by_site"][:args.top]:
            print(f"    {n:6d}  {where}")
        print("  by operation:")
        for what, n in r["by_name"][:args.top]:
            print(f"    {n:6d}  {what}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)
    return results


if __name__ == "__main__":
    main()
