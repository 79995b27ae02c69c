"""``bitnet bench gemm``: the XNOR-popcount GEMM against NumPy's float32 GEMM.

Cases: the BMXNet paper's figure (M = 64 filters, N = 12800 = batch 200 of 8x8 outputs,
K = 5 * 5 * C for C in 32..512), a filter-number sweep (M = 16..512 at C = 256) and square
sizes (M = N = 1024..4096, K = 4096). Methods:

- ``numpy``: float32 ``A @ B`` of the +-1 operands, the faster of the layouts B (K, N) and
  B^T stored (N, K) (``A @ Bt.T``), measured per case;
- ``naive``: one scalar popcount per word pair (``kernels.xnor_naive``);
- ``xnor``: the fused kernel (``kernels.xnor_conv``) on pre-packed operands (its panel build
  included);
- ``xnor+binarize``: the same plus binarizing and packing B from float32 in every call.

TOPS count 2 operations per multiply-accumulate, as for float.
"""
from __future__ import annotations

import numpy as np

from bitnet.bench.timing import records_for, time_methods

PAPER_C = (32, 64, 128, 256, 512)
FILTERS = (16, 32, 64, 128, 256, 512)
SQUARE = (1024, 2048, 4096)


def cases(quick=False):
    if quick:
        return [("paper C=64", 64, 12800, 1600)]
    out = [(f"paper C={c}", 64, 12800, 25 * c) for c in PAPER_C]
    out += [(f"filters M={m} C=256", m, 12800, 6400) for m in FILTERS if m != 64]
    out += [(f"square {s}x{s} K=4096", s, s, 4096) for s in SQUARE]
    return out


def bench_case(name, m, n, k, rounds, repeats, naive=True):
    from bitnet.kernels.bitpack import pack_rows
    from bitnet.kernels.xnor_conv import panel_words, xnor_gemm_panels
    from bitnet.kernels.xnor_naive import xnor_gemm_naive
    rng = np.random.default_rng(0)
    a = np.where(rng.standard_normal((m, k)) >= 0, 1, -1).astype(np.float32)
    bt = np.where(rng.standard_normal((n, k)) >= 0, 1, -1).astype(np.float32)  # (N, K)
    b = np.ascontiguousarray(bt.T)                                             # (K, N)
    aw, bw = pack_rows(a), pack_rows(bt)
    a_panel = panel_words(aw)  # the weights' layout, made once, as a packed layer holds them
    methods = {"numpy (A@B)": lambda: a @ b, "numpy (A@Bt.T)": lambda: a @ bt.T}
    if naive:
        methods["naive"] = lambda: xnor_gemm_naive(aw, bw, k)
    methods["xnor"] = lambda: xnor_gemm_panels(a_panel, m, bw, k)
    methods["xnor+binarize"] = lambda: xnor_gemm_panels(a_panel, m, pack_rows(bt), k)
    # correctness of what is timed: exact
    ref = (a @ bt[:64].T).astype(np.int32)
    assert np.array_equal(xnor_gemm_panels(a_panel, m, bw[:64], k), ref)
    med = time_methods(methods, rounds, repeats)
    layouts = ("numpy (A@B)", "numpy (A@Bt.T)")
    best = min(layouts, key=med.get)
    med = {"numpy": med[best], **{k_: v for k_, v in med.items() if k_ not in layouts}}
    return records_for(name, med, "numpy", ops=2.0 * m * n * k, m=m, n=n, k=k, numpy_layout=best)
