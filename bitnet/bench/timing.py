"""Side-by-side timing for the kernel benchmarks: every method of a case is timed in the same run,
in alternating rounds (a shared machine's noise hits all of them alike), and reported as the
median of its repeats with ratios against a baseline method of the same case; where asked, also
the tail of the timed calls: their 90th percentile, their maximum and max / median (how much
slower the slowest call was than the typical one, e.g. under ``--busy`` load)."""
from __future__ import annotations

import time

import numpy as np


SETTLE_S = 0.25  # longer than OpenBLAS's and OpenMP's spin-wait after a call (2**28 cycles ~ 0.1 s)
# untimed calls before each block: at least this long. On the development VM a 2-thread engine
# whose helper threads block when idle (bitnet's) runs its first ~50 ms of calls after an idle pause
# up to 1.6x slower (the idle vCPU is slow to be scheduled again); 0.1 s reaches the steady state
# (lenet-binary batch 64, 2 threads: 4.1 ms median with 0.02 s, 2.7 ms with 0.1 s and 2.6 with 0.3 s)
WARMUP_S = 0.1


def time_calls(methods: dict, rounds: int = 3, repeats: int = 3, settle_s: float | None = None) -> dict:
    """``{name: [seconds of each timed call]}`` of calling each ``methods[name]()``. Every round
    gives each method in turn a block: a pause of ``settle_s`` (the previous
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
    return times


def time_methods(methods: dict, rounds: int = 3, repeats: int = 3, settle_s: float | None = None) -> dict:
    """``{name: median seconds}`` of ``time_calls``: each method's steady-state time per call."""
    return {name: float(np.median(ts)) for name, ts in time_calls(methods, rounds, repeats, settle_s).items()}


def tail_stats(times) -> dict:
    """``p90_s`` (90th percentile, linear interpolation), ``max_s`` and ``max_over_median`` of a
    list of call times."""
    ts = np.asarray(times, dtype=float)
    med = float(np.median(ts))
    return {"p90_s": float(np.percentile(ts, 90)), "max_s": float(ts.max()), "max_over_median": float(ts.max()) / med}


def records_for(case: str, medians: dict, baseline: str, ops: float | None = None,
                ratio_key: str = "ratio_vs_numpy", calls: dict | None = None, **extra) -> list:
    """One record per method: ``case``, ``method``, ``median_s``, ``ratio_key`` (the baseline
    method's time / this method's time: > 1 means faster), when ``ops`` (operations per call)
    is given ``tops``, and when ``calls`` (``time_calls``'s lists) is given the ``tail_stats``."""
    out = []
    for method, t in medians.items():
        rec = {"case": case, "method": method, "median_s": t, ratio_key: medians[baseline] / t}
        if ops:
            rec["tops"] = ops / t / 1e12
        if calls is not None:
            rec.update(tail_stats(calls[method]), calls=len(calls[method]))
        rec.update(extra)
        out.append(rec)
    return out


def _ms(t) -> str:
    return f"{1e3 * t:.2f}ms"


def _cell(value, key) -> str:
    """One table cell: a ratio as ``1.23x``, a ``*_ms`` entry in milliseconds, a fraction as is."""
    if value is None:
        return f" {'-':>13}"
    if key.endswith("_ms"):
        return f" {value:>10.3f} ms"
    return f" {value:>12.2f}x" if key.startswith("ratio") else f" {value:>13.3f}"


def print_table(records: list, ratio_keys=("ratio_vs_numpy",), header=True, file=None, tail=False,
                tops=True) -> None:
    """Print records as a table: case, method, median, TOPS, the ratio columns and, with ``tail``,
    the p90 and max of the timed calls and max / median."""
    head = f"{'case':<34} {'method':<16} {'median':>10}" + (f" {'TOPS':>7}" if tops else "")
    head += f" {'p90':>10} {'max':>10} {'max/med':>7}" if tail else ""
    head += "".join(f" {k.replace('ratio_vs_', 'x '):>13}" for k in ratio_keys)
    if header:
        print(head, file=file)
    for r in records:
        line = f"{r['case']:<34} {r['method']:<16} {_ms(r['median_s']):>10}"
        if tops:
            line += f" {r['tops']:>7.3f}" if r.get("tops") is not None else f" {'-':>7}"
        if tail:
            line += f" {_ms(r['p90_s']):>10} {_ms(r['max_s']):>10} {r['max_over_median']:>6.2f}x"
        line += "".join(_cell(r.get(k), k) for k in ratio_keys)
        print(line, file=file, flush=True)
