"""``bitnet bench train``: LeNet training time per epoch, bitnet vs PyTorch, in one run.

Each framework runs in its own worker process (``bitnet.bench.worker``) with the same batch size
and the same number of threads; the parent alternates rounds of ``steps`` training steps between
them, so that noise from a shared machine hits both alike, and reports the median step time,
the implied time per epoch (steps per epoch x median) and the ratio bitnet / PyTorch. The
workers cycle through the MNIST training set in order, so ``--steps 469 --rounds R`` (batch 128)
times R real epochs of each framework, alternated.
"""
from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import time

import numpy as np


class Worker:
    def __init__(self, framework, batch_size, threads, data_dir, env=None):
        cmd = [sys.executable, "-m", "bitnet.bench.worker", "--framework", framework,
               "--batch-size", str(batch_size), "--threads", str(threads)]
        if data_dir:
            cmd += ["--data-dir", str(data_dir)]
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                                     env=env)
        hello = self.proc.stdout.readline()
        if not hello:
            raise RuntimeError(f"the {framework} benchmark worker failed to start (see its error above)")
        self.info = json.loads(hello)
        self.framework = framework

    def run(self, steps):
        self.proc.stdin.write(json.dumps({"steps": steps}) + "\n")
        self.proc.stdin.flush()
        return json.loads(self.proc.stdout.readline())

    def close(self):
        try:
            self.proc.stdin.write("\n")
            self.proc.stdin.close()
        finally:
            self.proc.wait(timeout=30)


def run(batch_size=128, threads=2, rounds=5, steps=20, data_dir=None, frameworks=None, out=print):
    """Run the comparison; returns a list of result records (one per framework)."""
    if frameworks is None:
        frameworks = ["bitnet"] + (["torch"] if importlib.util.find_spec("torch") else [])
    env = dict(os.environ, OMP_NUM_THREADS=str(threads))
    workers = [Worker(f, batch_size, threads, data_dir, env) for f in frameworks]
    times = {w.framework: [] for w in workers}
    try:
        for r in range(rounds):
            for w in workers:
                time.sleep(0.3)  # let the other process's thread pool go idle
                times[w.framework] += w.run(steps)["times"]
            out(f"round {r + 1}/{rounds}: " + ", ".join(
                f"{f} {1e3 * np.median(t[-steps:]):.1f} ms/step" for f, t in times.items()))
    finally:
        for w in workers:
            w.close()
    steps_per_epoch = -(-60000 // batch_size)
    base = np.median(times["bitnet"])
    records = []
    for f, t in times.items():
        med = float(np.median(t))
        records.append({"case": f"lenet-train-b{batch_size}", "method": f, "median_s": med,
                        "epoch_s": med * steps_per_epoch, "ratio_vs_bitnet": med / base,
                        "data": workers[0].info["source"]})
    out(f"\nLeNet (BMXNet layout) training step, batch {batch_size}, {threads} threads, "
        f"{rounds} rounds x {steps} steps, data: {workers[0].info['source']}")
    out(f"{'framework':<10} {'median ms/step':>15} {'s/epoch (60k)':>14}")
    for rec in records:
        out(f"{rec['method']:<10} {1e3 * rec['median_s']:>15.1f} {rec['epoch_s']:>14.1f}")
    if "torch" in times:
        ratio = base / np.median(times["torch"])
        out(f"bitnet / PyTorch time per epoch: {ratio:.2f}x")
    elif importlib.util.find_spec("torch") is None:
        out("PyTorch is not installed: no comparison (pip install torch)")
    else:
        out("PyTorch not measured (--no-torch)")
    return records
