"""``bitnet bench distributed``: data-parallel training steps on 1 and N processes of this machine,
the share of a step spent in allreduce, and the ring-allreduce estimate for a cluster.

Each configuration runs in fresh processes (``bitnet.bench.distributed_worker``; ``mpiexec -n N`` for
N > 1): one process with all the cores' threads, one with a thread, and N processes splitting the cores
(with and without overlapping the allreduce with backward). The global batch B is the same in all, so
"images/s" compares like with like and the speed-up is the 1-process step time over the N-process one
(on a machine with C cores, at most C / threads-per-process-of-the-baseline).

The estimate for a cluster of N machines with one process each: ring allreduce sends and receives
2 (N - 1) / N times the buffer per machine in 2 (N - 1) messages, so with the measured gradient size G,
a link bandwidth W and a per-message latency L,

    t_allreduce = 2 (N - 1) / N * G / W + 2 (N - 1) * L

set against the compute time of a step of each machine at batch B (the measured one-process step; the
global batch is then N * B, as data-parallel runs on clusters grow it): the part of the step that
communication takes where it does not overlap with backward.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile


def find_mpiexec():
    """``mpiexec`` beside this Python (MPICH's wheel puts it there) or on PATH, or None."""
    for found in (shutil.which("mpiexec", path=os.path.dirname(sys.executable)), shutil.which("mpiexec")):
        if found:
            return found
    return None


def ring_allreduce_s(nbytes: float, machines: int, bandwidth_bytes_s: float, latency_s: float) -> float:
    """The ring-allreduce time of the module docstring."""
    n = machines
    return 2 * (n - 1) / n * nbytes / bandwidth_bytes_s + 2 * (n - 1) * latency_s


def configurations(processes, cores):
    """(processes, threads per process, overlap) to run: 1 x cores, 1 x 1, and for each N > 1 N x
    cores/N with overlap and without."""
    rows = [(1, cores, True)]
    if cores > 1:
        rows.append((1, 1, True))
    for n in processes:
        if n > 1:
            rows += [(n, max(1, cores // n), True), (n, max(1, cores // n), False)]
    return rows


def run_one(model, batch, processes, threads, overlap, steps, rounds, timeout=1800):
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "record.json")
        cmd = [sys.executable, "-m", "bitnet.bench.distributed_worker", "--model", model, "--batch", str(batch),
               "--steps", str(steps), "--rounds", str(rounds), "--threads", str(threads), "--out", out]
        if not overlap:
            cmd.append("--no-overlap")
        if processes > 1:
            mpiexec = find_mpiexec()
            if mpiexec is None:
                raise RuntimeError('bench distributed: no mpiexec found; pip install "bitnet-bnn[mpi]"')
            cmd = [mpiexec, "-n", str(processes)] + cmd
        env = dict(os.environ)
        env.pop("NUMBA_NUM_THREADS", None)
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
        if res.returncode != 0:
            raise RuntimeError(f"bench distributed: {' '.join(cmd)} failed ({res.returncode}):\n{res.stderr[-3000:]}")
        with open(out) as f:
            return json.load(f)


def run(model, batch, processes, steps, rounds, bandwidth_gbit, latency_us, cores=None) -> list:
    """Run every configuration, print the table and the estimate; returns the records."""
    cores = cores or len(os.sched_getaffinity(0))
    if any(batch % n for n in processes):
        raise ValueError(f"bench distributed: --batch-size {batch} must be a multiple of every process count "
                         f"({', '.join(map(str, processes))})")
    print(f"bitnet bench distributed: {model}, global batch {batch}, {cores} cores, median of {rounds} rounds of "
          f"{steps} steps (per round the slowest process)", flush=True)
    header = (f"{'processes':>9} {'threads':>7} {'per proc':>8} {'overlap':>7} {'step ms':>8} {'allreduce ms':>12} "
              f"{'share':>6} {'images/s':>9} {'speed-up':>8}")
    print(header, flush=True)
    records, base = [], None
    for n, threads, overlap in configurations(processes, cores):
        r = run_one(model, batch, n, threads, overlap, steps, rounds)
        base = base or r["step_s"]
        r["images_per_s"] = batch / r["step_s"]
        r["speedup_vs_1_process"] = base / r["step_s"]
        r["allreduce_share"] = r["allreduce_s"] / r["step_s"]
        records.append(r)
        print(f"{n:>9} {threads:>7} {r['batch_per_process']:>8} {'yes' if overlap else 'no':>7} "
              f"{1e3 * r['step_s']:>8.1f} {1e3 * r['allreduce_s']:>12.2f} {100 * r['allreduce_share']:>5.1f}% "
              f"{r['images_per_s']:>9.0f} {r['speedup_vs_1_process']:>7.2f}x", flush=True)
    grad = records[0]["gradient_bytes"]
    bare = [r for r in records if r["bare_allreduce_s"]]
    if bare:
        b = bare[0]
        print(f"gradients: {grad / 1e6:.2f} MB in {records[0]['buckets']} buckets; a bare allreduce of them on "
              f"{b['processes']} processes here: {1e3 * b['bare_allreduce_s']:.2f} ms "
              f"({2 * (b['processes'] - 1) / b['processes'] * grad / b['bare_allreduce_s'] / 1e9:.1f} GB/s "
              "ring-equivalent)", flush=True)
    compute_1 = records[0]["step_s"]
    bw = bandwidth_gbit * 1e9 / 8
    print(f"ring allreduce estimate at {bandwidth_gbit:g} Gbit/s and {latency_us:g} us per message, one process per "
          f"machine, each at batch {batch} (the 1-process step above: {1e3 * compute_1:.1f} ms):", flush=True)
    estimates = []
    for machines in (8, 64):
        t = ring_allreduce_s(grad, machines, bw, latency_us * 1e-6)
        estimates.append({"machines": machines, "allreduce_s": t, "compute_s": compute_1,
                          "share": t / (t + compute_1), "efficiency": compute_1 / (t + compute_1)})
        print(f"  {machines:>2} machines: allreduce {1e3 * t:.2f} ms = {100 * t / (t + compute_1):.0f}% of a step "
              f"if not overlapped; {machines * batch / (t + compute_1):.0f} images/s "
              f"({100 * compute_1 / (t + compute_1):.0f}% scaling efficiency)", flush=True)
    records.append({"estimate": estimates, "bandwidth_gbit": bandwidth_gbit, "latency_us": latency_us,
                    "gradient_bytes": grad})
    return records
