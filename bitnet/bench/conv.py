"""``bitnet bench conv``: one binary convolution layer from a float32 input.

Input 200 x C x 12 x 12, 64 filters 5x5 (stride 1, no padding: 8x8 outputs, the paper's GEMM
shape), C in 32..512. Methods:

- ``numpy gemm``: NumPy's float32 GEMM alone on an already im2col'ed operand (the faster layout);
- ``float conv``: bitnet's float convolution (im2col + GEMM), ``bitnet.functional.conv2d``;
- ``packed``: binarize-and-pack the float input, bit im2col, XNOR GEMM and the affine epilogue
  (``PackedConv2d``), float32 NCHW out.
"""
from __future__ import annotations

import numpy as np

from bitnet.bench.timing import records_for, time_methods

CHANNELS = (32, 64, 128, 256, 512)


def bench_case(c, rounds, repeats, n=200, hw=12, o=64, k=5):
    from bitnet import functional as F
    from bitnet import nn
    from bitnet.packed import PackedConv2d
    from bitnet.tensor import Tensor, no_grad
    rng = np.random.default_rng(c)
    x = rng.standard_normal((n, c, hw, hw)).astype(np.float32)
    layer = nn.QConv2d(c, o, k, bias=False, rng=0)
    packed = PackedConv2d.from_layer(layer)
    w = np.where(layer.weight.data >= 0, 1, -1).astype(np.float32)
    xs = Tensor(np.where(x >= 0, 1, -1).astype(np.float32))
    out = hw - k + 1
    kk = c * k * k
    cols = rng.standard_normal((kk, n * out * out)).astype(np.float32)
    cols_t = np.ascontiguousarray(cols.T)
    w2 = w.reshape(o, -1)

    def float_conv():
        with no_grad():
            return F.conv2d(xs, Tensor(w), None, 1, 0, 1, 1)

    with no_grad():
        assert np.array_equal(packed.dots(x), float_conv().data)  # what is timed is exact
    methods = {"numpy gemm (A@B)": lambda: w2 @ cols, "numpy gemm (A@Bt.T)": lambda: w2 @ cols_t.T,
               "float conv": float_conv, "packed": lambda: packed(x)}
    med = time_methods(methods, rounds, repeats)
    layouts = ("numpy gemm (A@B)", "numpy gemm (A@Bt.T)")
    best = min(layouts, key=med.get)
    med = {"numpy gemm": med[best], **{k_: v for k_, v in med.items() if k_ not in layouts}}
    recs = records_for(f"conv C={c} 200x12x12 64x5x5", med, "numpy gemm", ops=2.0 * o * kk * n * out * out, c=c)
    for r in recs:
        r["ratio_vs_float_conv"] = med["float conv"] / r["median_s"]
    return recs
