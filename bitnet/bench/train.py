"""``bitnet bench train``: training time per step and per epoch, bitnet vs PyTorch and Larq, in one run.

Models: ``lenet-binary`` (default, batch 128), ``resnet18-binary`` (batch 64) and the float
``lenet`` (batch 128); PyTorch and Larq (TensorFlow) train the same network from the same initial
weights (``bitnet.bench.train_step``: sign straight-through estimators, latent binary weights
clipped to [-1, 1] after each step, Adam lr 1e-3). PyTorch is timed where it is installed, Larq where
it is installed or ``larq_python`` names an interpreter that has it (Larq pins NumPy < 2, so it
usually lives in a virtual environment of its own). Each framework runs in its own worker process
(``bitnet.bench.worker``) with the same batch size and number of threads; the parent alternates
rounds of ``steps`` training steps between them, so that noise from a shared machine hits both
alike. Reported per framework: the median step time, the p90, max and max / median of the timed
steps, the implied time per epoch (steps per epoch x median: 60,000 MNIST images; for
resnet18-binary 50,000, a CIFAR-10 epoch, though it trains on random data of CIFAR shape: there
are no CIFAR files here) and bitnet / PyTorch. The MNIST models cycle through the MNIST training
set in order, so ``--steps 469 --rounds R`` (batch 128) times R real epochs of each framework.

Same work: both frameworks' losses over the timed steps are printed side by side (the last few,
and the mean of the first and last few), and kept in the records. With ``busy`` > 0 that many
busy-looping processes (``bitnet.bench.load``) run during the timed rounds.
"""
from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import time

import numpy as np

BATCH = {"lenet-binary": 128, "resnet18-binary": 64, "lenet": 128}
STEPS = {"lenet-binary": 20, "resnet18-binary": 5, "lenet": 20}
EPOCH = {"lenet-binary": (60000, "60k MNIST"), "resnet18-binary": (50000, "50k, CIFAR-10 size"),
         "lenet": (60000, "60k MNIST")}
LOSS_WINDOW = 5  # steps averaged at the start and end of the timed run


class Worker:
    def __init__(self, framework, model, batch_size, threads, data_dir, env=None, python=None):
        cmd = [python or sys.executable, "-m", "bitnet.bench.worker", "--framework", framework, "--model", model,
               "--batch-size", str(batch_size), "--threads", str(threads)]
        if data_dir:
            cmd += ["--data-dir", str(data_dir)]
        self.framework = framework
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
        hello = self.proc.stdout.readline()
        if not hello:
            self.close()
            raise RuntimeError(f"the {framework} benchmark worker failed to start (see its error above)")
        self.info = json.loads(hello)

    def run(self, steps):
        self.proc.stdin.write(json.dumps({"steps": steps}) + "\n")
        self.proc.stdin.flush()
        return json.loads(self.proc.stdout.readline())

    def close(self):
        """Ask the worker to stop; kill it if it does not (an error or Ctrl-C mid-step)."""
        try:
            self.proc.stdin.write("\n")
            self.proc.stdin.close()
            self.proc.wait(timeout=30)
        except Exception:  # noqa: BLE001 - a broken pipe, a timeout: it goes anyway
            self.proc.kill()
            self.proc.wait()


def default_frameworks(larq_python=None) -> list:
    """bitnet, PyTorch where it is installed, and Larq where it is installed or ``larq_python`` (an
    interpreter that has it, e.g. a virtual environment's: Larq pins NumPy < 2) is given."""
    from bitnet.bench import larq_models
    return (["bitnet"] + (["torch"] if importlib.util.find_spec("torch") else [])
            + (["larq"] if larq_python or not larq_models.missing() else []))


def run(model="lenet-binary", batch_size=None, threads=(2,), rounds=5, steps=None, data_dir=None,
        frameworks=None, busy=0, out=print, larq_python=None):
    """Run the comparison for each thread count; returns the result records (one per framework
    and thread count). The Larq worker runs under ``larq_python`` when given."""
    if frameworks is None:
        frameworks = default_frameworks(larq_python)
    batch_size = batch_size or BATCH[model]
    steps = steps or STEPS[model]
    records = []
    for t in threads:
        records += _run_threads(model, batch_size, t, rounds, steps, data_dir, frameworks, busy, out, larq_python)
    return records


def _larq_absent(larq_python) -> str:
    """Why there is no Larq column: not installed in this interpreter (and no ``--larq-python``),
    or left out (``--no-larq``)."""
    from bitnet.bench import larq_models
    why = None if larq_python else larq_models.missing()
    if why is None:
        return "Larq not measured (--no-larq)"
    return f"Larq is not measured: {why}; or pass --larq-python PYTHON, an interpreter that has it"


def _run_threads(model, batch_size, threads, rounds, steps, data_dir, frameworks, busy, out, larq_python=None):
    from bitnet.bench import load
    from bitnet.bench.timing import tail_stats
    env = dict(os.environ, OMP_NUM_THREADS=str(threads))
    workers = []
    times = {f: [] for f in frameworks}
    losses = {f: [] for f in frameworks}
    try:
        for f in frameworks:
            workers.append(Worker(f, model, batch_size, threads, data_dir, env, larq_python if f == "larq" else None))
        with load.busy(busy):
            for r in range(rounds):
                for w in workers:
                    time.sleep(0.3)  # let the other process's thread pool go idle
                    reply = w.run(steps)
                    times[w.framework] += reply["times"]
                    losses[w.framework] += reply["losses"]
                out(f"round {r + 1}/{rounds}: " + ", ".join(
                    f"{f} {1e3 * np.median(t[-steps:]):.1f} ms/step (loss {losses[f][-1]:.3f})"
                    for f, t in times.items()))
    finally:
        for w in workers:
            w.close()
    epoch_images, epoch_label = EPOCH[model]
    steps_per_epoch = -(-epoch_images // batch_size)
    source = workers[0].info["source"]
    med = {f: float(np.median(t)) for f, t in times.items()}
    k = max(1, min(LOSS_WINDOW, len(losses[frameworks[0]]) // 2))  # first and last k do not overlap
    records = []
    for f, t in times.items():
        rec = {"case": f"{model} train batch {batch_size}, {threads} thr", "method": f, "model": model,
               "batch": batch_size, "threads": threads, "busy": busy, "median_s": med[f], **tail_stats(t),
               "calls": len(t), "epoch_s": med[f] * steps_per_epoch, "steps_per_epoch": steps_per_epoch,
               "ratio_vs_bitnet": med[f] / med["bitnet"] if "bitnet" in med else None, "data": source,
               "loss_first_mean": float(np.mean(losses[f][:k])), "loss_last_mean": float(np.mean(losses[f][-k:])),
               "last_losses": losses[f][-k:]}
        for other in ("torch", "larq"):
            if other in med:
                rec[f"ratio_vs_{other}"] = med[other] / med[f]
        records.append(rec)
    out(f"\n{model} training step, batch {batch_size}, {threads} thread{'s' if threads > 1 else ''}, "
        f"{rounds} rounds x {steps} steps, data: {source}, load: {load.describe(busy)}")
    out(f"{'framework':<10} {'median ms':>10} {'p90 ms':>9} {'max ms':>9} {'max/med':>8} "
        f"{'s/epoch (' + epoch_label + ')':>28}")
    for rec in records:
        out(f"{rec['method']:<10} {1e3 * rec['median_s']:>10.1f} {1e3 * rec['p90_s']:>9.1f} "
            f"{1e3 * rec['max_s']:>9.1f} {rec['max_over_median']:>7.2f}x {rec['epoch_s']:>28.1f}")
    if "torch" in med and "bitnet" in med:
        out(f"bitnet / PyTorch time per step (and per epoch): {med['bitnet'] / med['torch']:.2f}x")
    elif importlib.util.find_spec("torch") is None:
        out("PyTorch is not installed: no comparison "
            "(pip install torch --index-url https://download.pytorch.org/whl/cpu)")
    else:
        out("PyTorch not measured (--no-torch)")
    if "larq" in med and "bitnet" in med:
        out(f"bitnet / Larq time per step (and per epoch): {med['bitnet'] / med['larq']:.2f}x")
    elif "larq" not in frameworks:
        out(_larq_absent(larq_python))
    out(f"losses, last {k} timed steps: " + "; ".join(
        f"{f} " + " ".join(f"{v:.3f}" for v in losses[f][-k:]) for f in frameworks))
    out(f"mean loss, first {k} -> last {k} timed steps: " + ", ".join(
        f"{r['method']} {r['loss_first_mean']:.3f} -> {r['loss_last_mean']:.3f}" for r in records))
    return records
