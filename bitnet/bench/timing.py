"""Side-by-side timing for the kernel benchmarks: every method of a case is timed in the same run,
in alternating rounds (a shared machine's noise hits all of them alike), and reported as the
median of its repeats with ratios against a baseline method of the same case."""
from __future__ import annotations

import time

import numpy as np


SETTLE_S = 0.25  # longer than OpenBLAS's and OpenMP's spin-wait after a call (2**28 cycles ~ 0.1 s)
WARMUP_S = 0.02


def time_methods(methods: dict, rounds: int = 3, repeats: int = 3, settle_s: float | None = None) -> dict:
    """``{name: median seconds}`` of calling each ``methods[name]()``, its steady-state time per
    call. Every round gives each method in turn a block: a pause of ``settle_s`` (the previous
    method's thread pool stops spinning: on 2 cores a spinning OpenBLAS pool halves the next
    method's speed), untimed warm-up calls for at least ``WARMUP_S`` (compilation, caches,
    waking the method's own threads), then ``repeats`` timed calls."""
    settle_s = SETTLE_S if settle_s is None else settle_s
    times = {name: [] for name in methods}
    for _ in range(rounds):
        for name, fn in methods.items():
            time.sleep(settle_s)
            t_end = time.perf_counter() + WARMUP_S
            fn()
            while time.perf_counter() < t_end:
                fn()
            for _ in range(repeats):
                t0 = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - t0)
    return {name: float(np.median(ts)) for name, ts in times.items()}


def records_for(case: str, medians: dict, baseline: str, ops: float | None = None,
                ratio_key: str = "ratio_vs_numpy", **extra) -> list:
    """One record per method: ``case``, ``method``, ``median_s``, ``ratio_key`` (the baseline
    method's time / this method's time: > 1 means faster) and, when ``ops`` (operations per call)
    is given, ``tops``."""
    out = []
    for method, t in medians.items():
        rec = {"case": case, "method": method, "median_s": t, ratio_key: medians[baseline] / t}
        if ops:
            rec["tops"] = ops / t / 1e12
        rec.update(extra)
        out.append(rec)
    return out


def print_table(records: list, ratio_keys=("ratio_vs_numpy",), header=True, file=None) -> None:
    """Print records as a table: case, method, median, TOPS and the ratio columns."""
    head = f"{'case':<34} {'method':<16} {'median':>10} {'TOPS':>7}"
    head += "".join(f" {k.replace('ratio_vs_', 'x '):>13}" for k in ratio_keys)
    if header:
        print(head, file=file)
    for r in records:
        tops = f"{r['tops']:.3f}" if r.get("tops") is not None else "-"
        line = f"{r['case']:<34} {r['method']:<16} {1e3 * r['median_s']:>8.2f}ms {tops:>7}"
        line += "".join(f" {r[k]:>12.2f}x" if r.get(k) is not None else f" {'-':>13}" for k in ratio_keys)
        print(line, file=file, flush=True)
