"""Figures of benchmark records (matplotlib, an optional extra): ``bitnet bench gemm --plot FILE``.

``gemm_speedup(records, file)``: the BMXNet paper's figure. For the paper's configuration (M = 64
filters, N = 12800, K = 25 * C) the speed-up of each binary method over NumPy's float32 GEMM of
the same +-1 operands (``ratio_vs_numpy``: NumPy's time / the method's time, measured in the same
run) against the number of input channels C, on a log-2 axis.
"""
from __future__ import annotations

import re

from bitnet.plotting import new_figure

LABELS = {"naive": "naive popcount", "xnor": "xnor (packed operands)", "xnor+binarize": "xnor + binarize"}


def gemm_speedup(records, file, title=None):
    """Plot the paper cases of ``bitnet bench gemm`` records to ``file``; returns the Figure."""
    series = {}
    for r in records:
        m = re.fullmatch(r"paper C=(\d+)", str(r.get("case", "")))
        if m and r.get("method") in LABELS:
            series.setdefault(r["method"], []).append((int(m.group(1)), float(r["ratio_vs_numpy"])))
    if not series:
        raise ValueError("bitnet bench gemm --plot: the records hold no paper case (\"paper C=...\"); "
                         "run without --quick")
    fig = new_figure("bitnet bench gemm --plot", figsize=(6, 4))
    ax = fig.add_subplot(1, 1, 1)
    for method in LABELS:
        if method in series:
            pts = sorted(series[method])
            ax.plot([c for c, _ in pts], [v for _, v in pts], "o-", label=LABELS[method])
    ax.axhline(1.0, color="gray", lw=0.8, ls="--")
    ax.set_xscale("log", base=2)
    cs = sorted({c for pts in series.values() for c, _ in pts})
    ax.set_xticks(cs)
    ax.set_xticklabels([str(c) for c in cs])
    ax.minorticks_off()
    ax.set_xlabel("input channels C (M = 64, N = 12800, K = 25 C)")
    ax.set_ylabel("speed-up over NumPy float32 GEMM")
    ax.set_title(title or "Binary GEMM speed-up (the BMXNet paper's configuration)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(file)
    return fig


def main(argv=None):
    """``python -m bitnet.bench.plots gemm RECORDS.json FIGURE``: the figure of a saved run."""
    import argparse
    import json
    ap = argparse.ArgumentParser(prog="python -m bitnet.bench.plots", description=main.__doc__)
    ap.add_argument("kind", choices=("gemm",))
    ap.add_argument("records", help="JSON written by bitnet bench gemm --json")
    ap.add_argument("figure")
    args = ap.parse_args(argv)
    with open(args.records) as f:
        gemm_speedup(json.load(f), args.figure)
    print(f"figure: {args.figure}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
