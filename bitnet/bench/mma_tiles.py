"""Which block shape of the tensor-core kernels (``bitnet.kernels.xnor_mma.TILES``) is fastest on this
GPU, per problem: ``python -m bitnet.bench.mma_tiles [--json FILE] [--repeats N]``.

For each case (square GEMMs, the BMXNet paper configuration, ResNet-18 convolutions as implicit
GEMMs at batch 1 and 256) and each tile: the median time over CUDA events, TOPS (2 operations per
multiply-accumulate), the fraction of the card's measured 1-bit MMA peak
(``bitnet.bench.gpu_peaks.mma_peak_tops``), and which tile ``choose_tile`` picks. Every timed
result is checked first against the popcount kernel (``xnor_cuda``), exactly. Needs a GPU with
the 1-bit MMA (compute capability 8.0+).
"""
from __future__ import annotations

import argparse
import json
import sys

import numpy as np

GEMMS = [("square 4096", 4096, 4096, 4096), ("square 8192", 8192, 8192, 8192),
         ("paper C=128", 12800, 64, 25 * 128), ("paper C=512", 12800, 64, 25 * 512)]
CONVS = [  # (name, batch, channels, size, filters, stride): 3x3, padding 1, like ResNet-18's stages on 32x32
    ("resnet conv 64 32x32 batch 1", 1, 64, 32, 64, 1), ("resnet conv 512 4x4 batch 1", 1, 512, 4, 512, 1),
    ("resnet conv 64 32x32 batch 256", 256, 64, 32, 64, 1), ("resnet conv 256 8x8 batch 256", 256, 256, 8, 256, 1)]


def _gemm_case(cuda, m, n, k, rng):
    from bitnet.kernels import bits
    a = cuda.to_device(bits.pack_reference(rng.standard_normal((m, k)).astype(np.float32)))
    b = cuda.to_device(bits.pack_reference(rng.standard_normal((n, k)).astype(np.float32)))
    out = cuda.device_array((m, n), np.int32)
    return out, dict(a=a, b=b, k=k, out=out)


def _conv_case(cuda, batch, c, size, o, stride, rng):
    from bitnet.kernels import bitpack
    from bitnet.kernels import xnor_conv as XC
    x = rng.standard_normal((batch, c, size, size)).astype(np.float32)
    w = rng.standard_normal((o, c, 3, 3)).astype(np.float32)
    oh = (size + 2 - 3) // stride + 1
    out = cuda.device_array((batch * oh * oh, o), np.int32)
    args = dict(x=cuda.to_device(bitpack.pack_nchw(x, 1)), g=0, kernel_size=(3, 3), stride=(stride, stride),
                padding=(1, 1), dilation=(1, 1), padword=cuda.to_device(XC.pad_words(c, 1.0)),
                b=cuda.to_device(np.ascontiguousarray(XC.unpanel_words(XC.pack_filters(w, 1), o)[0])), k=9 * c, out=out)
    return out, args


def make_cases(cuda, gemms, convs) -> list:
    rng = np.random.default_rng(0)
    cases = [(name, "gemm", _gemm_case(cuda, m, n, k, rng), 2.0 * m * n * k) for name, m, n, k in gemms]
    for name, batch, c, size, o, stride in convs:
        out, case = _conv_case(cuda, batch, c, size, o, stride, rng)
        cases.append((name, "conv", (out, case), 2.0 * out.shape[0] * o * 9 * c))
    return cases


def _reference(cuda, case):
    """The popcount kernels' result for the same problem (what every tile must reproduce)."""
    from bitnet.kernels import xnor_cuda as XG
    if "a" in case:
        out = cuda.device_array(case["out"].shape, np.int32)
        XG.xnor_gemm(case["a"], case["b"], case["k"], out)
        return out.copy_to_host()
    x = case["x"]
    n, h, w, _, cwg = x.shape
    rows = cuda.device_array((case["out"].shape[0], 9 * cwg), np.uint64)
    XG.im2col_bits(x, 0, case["kernel_size"], case["stride"], case["padding"], case["dilation"], case["padword"], rows)
    out = cuda.device_array(case["out"].shape, np.int32)
    XG.xnor_gemm(rows, case["b"], case["k"], out)
    return out.copy_to_host()


def sweep(cuda, cases, peak, repeats, tiles=None) -> list:
    """Time every tile of ``tiles`` (default: all of ``TILES``) on every case ``(name, "gemm" |
    "conv", (out, arguments), operations)``, after checking its result; print a line each."""
    from bitnet.bench.gpu import event_time
    from bitnet.kernels import xnor_mma as XM
    records = []
    print(f"{'case':<34} {'tile':<12} {'median':>10} {'TOPS':>8} {'of peak':>8}  chosen", flush=True)
    for name, kind, (out, case), ops in cases:
        want = _reference(cuda, case)
        chosen = XM.choose_tile(out.shape[0], out.shape[1], XM._sm_count())
        for tile_name in tiles or XM.TILES:
            tile = XM.TILES[tile_name]
            call = (lambda t=tile: XM.xnor_gemm(**case, tile=t)) if kind == "gemm" else \
                (lambda t=tile: XM.xnor_conv(**case, tile=t))
            out.copy_to_device(np.zeros(out.shape, np.int32))
            call()
            if not np.array_equal(out.copy_to_host(), want):
                raise AssertionError(f"{name}: tile {tile_name} differs from the popcount kernel")
            t = event_time(call, repeats)
            tops = ops / t / 1e12 if t > 0 else None     # (the simulator's events time nothing)
            rec = {"case": name, "tile": tile_name, "median_s": t, "tops": tops,
                   "fraction_of_peak": tops / peak if tops and peak else None, "chosen": tile == chosen}
            records.append(rec)
            print(f"{name:<34} {tile_name:<12} {t * 1e3:>8.3f}ms {tops or 0:>8.0f} {rec['fraction_of_peak'] or 0:>8.3f}"
                  f"  {'*' if rec['chosen'] else ''}", flush=True)
    return records


def main(argv=None) -> int:
    from bitnet.backend import cuda_module
    from bitnet.bench.gpu_peaks import mma_peak_tops
    parser = argparse.ArgumentParser(prog="python -m bitnet.bench.mma_tiles", description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", help="write the records to this file")
    parser.add_argument("--repeats", type=int, default=10)
    args = parser.parse_args(argv)
    cuda = cuda_module()
    peak = mma_peak_tops()
    if peak is None:
        print("this GPU has no 1-bit MMA (compute capability below 8.0), or this is the simulator", file=sys.stderr)
        return 2
    print(f"{cuda.get_current_device().name}: 1-bit MMA peak {peak:.0f} TOPS (measured)", flush=True)
    cases = make_cases(cuda, GEMMS, CONVS)
    records = sweep(cuda, cases, peak, args.repeats)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"mma_peak_tops": peak, "records": records}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
