"""Checks of the tensor-core binary kernels (``bitnet.kernels.xnor_mma``) against the CPU kernels,
run by tests/gpu/test_xnor_mma.py under Numba's CUDA simulator with the MMA emulated
(``bitnet.kernels.bmma.mma_and_popc_emulated``), or on a real GPU (``BITNET_TEST_CUDA=gpu``) with
the real MMA where the GPU has it (compute capability 8.0+) and the emulation as well. Every
comparison is exact."""
from __future__ import annotations

import sys

import numpy as np
from numba import config, cuda, int32, uint32

from bitnet.kernels import bitpack, bits
from bitnet.kernels import xnor_conv as XC
from bitnet.kernels import xnor_mma as XM
from bitnet.kernels.bmma import mma_and_popc_emulated
from test_bmma_layout import numpy_mma
from xnor_cuda_checks import CONVS, conv_case, equal, expect_error

rng = np.random.default_rng(16)


def modes():
    """The MMA variants this machine can run: the emulation always; the instruction on a GPU of
    compute capability 8.0 or newer."""
    out = [True]
    if not config.ENABLE_CUDASIM and cuda.get_current_device().compute_capability >= (8, 0):
        out.append(False)
    return out


@cuda.jit
def _one_mma(fa, fb, fc, fd):
    scratch = cuda.shared.array((1, 32, 6), dtype=uint32)
    lane = cuda.threadIdx.x
    d = mma_and_popc_emulated(scratch, 0, lane, int32(fc[lane, 0]), int32(fc[lane, 1]), int32(fc[lane, 2]),
                              int32(fc[lane, 3]), fa[lane, 0], fa[lane, 1], fa[lane, 2], fa[lane, 3], fb[lane, 0],
                              fb[lane, 1])
    for i in range(4):
        fd[lane, i] = d[i]


def check_fragments():
    """The emulated MMA against the NumPy model of the instruction (written from the PTX ISA)."""
    for _ in range(3):
        fa = rng.integers(0, 2 ** 32, (32, 4), dtype=np.uint64).astype(np.uint32)
        fb = rng.integers(0, 2 ** 32, (32, 2), dtype=np.uint64).astype(np.uint32)
        fc = rng.integers(-500, 500, (32, 4)).astype(np.int32)
        fd = cuda.device_array((32, 4), np.int32)
        _one_mma[1, 32](cuda.to_device(fa), cuda.to_device(fb), cuda.to_device(fc), fd)
        equal(fd.copy_to_host(), numpy_mma(fa, fb, fc), "emulated m16n8k256 against the ISA model")


def check_gemm():
    """Odd shapes: K not a multiple of 256 (or of 64), N not a multiple of 8, one row; several
    shared-memory stages of K; more rows and filters than one block."""
    for m, n, k in ((1, 9, 64), (37, 21, 200), (5, 70, 300), (70, 3, 64 * (2 * XM.TILES["64x64"].bkw + 1) - 5)):
        a = bits.pack_reference(rng.standard_normal((m, k)))
        b = bits.pack_reference(rng.standard_normal((n, k)))
        want = bits.xnor_dot_reference(a, b, k)
        for emulate in modes():
            out = cuda.device_array((m, n), np.int32)
            XM.xnor_gemm(cuda.to_device(a), cuda.to_device(b), k, out, emulate=emulate)
            equal(out.copy_to_host(), want, f"xnor_mma.xnor_gemm M={m} N={n} K={k} emulate={emulate}")


def check_tiles():
    """Every block shape of ``TILES``: a GEMM across several row and filter blocks, and a convolution
    whose signs span two words (two per row of a 128-filter block)."""
    m, n, k = 130, 70, 64 * 9 - 7
    a = bits.pack_reference(rng.standard_normal((m, k)))
    b = bits.pack_reference(rng.standard_normal((n, k)))
    want = bits.xnor_dot_reference(a, b, k)
    x = rng.standard_normal((1, 70, 4, 3)).astype(np.float32)
    w = rng.standard_normal((70, 70, 3, 3)).astype(np.float32)
    xb, padword = bitpack.pack_nchw(x, 1), XC.pad_words(70, 1.0)
    scale, shift = (rng.standard_normal(70).astype(np.float32) for _ in range(2))
    want_f, want_bits = XC.xnor_conv2d(xb, XC.pack_filters(w, 1), 70, 70, (3, 3), (1, 1), (1, 1), (1, 1),
                                       padword=padword, scale=scale, shift=shift, emit_bits=True, layout="nhwc")
    rows = cuda.to_device(np.ascontiguousarray(XC.unpanel_words(XC.pack_filters(w, 1), 70)[0]))
    for name in XM.TILES:
        for emulate in modes():
            what = f"tile {name} emulate={emulate}"
            out = cuda.device_array((m, n), np.int32)
            XM.xnor_gemm(cuda.to_device(a), cuda.to_device(b), k, out, emulate=emulate, tile=name)
            equal(out.copy_to_host(), want, f"xnor_mma.xnor_gemm {what}")
            if XM.TILES[name].bn < 128:  # check_conv covers the one-word blocks
                continue
            out_f = cuda.device_array((12, 70), np.float32)
            signs = cuda.device_array((12, 2), np.uint64)
            XM.xnor_conv(cuda.to_device(xb), 0, (3, 3), (1, 1), (1, 1), (1, 1), cuda.to_device(padword), rows, 70 * 9,
                         out_f, scale=cuda.to_device(scale), shift=cuda.to_device(shift), bits=signs, emulate=emulate,
                         tile=name)
            equal(out_f.copy_to_host().reshape(want_f.shape), want_f, f"xnor_mma.xnor_conv {what}")
            equal(signs.copy_to_host().reshape(want_bits.shape), want_bits, f"xnor_mma.xnor_conv {what} signs")


def check_tile_sweep():
    """The tile benchmark (bitnet.bench.mma_tiles) on tiny cases: results checked, one record each."""
    from bitnet.bench import mma_tiles
    cases = mma_tiles.make_cases(cuda, [("tiny gemm", 20, 10, 100)], [("tiny conv", 1, 3, 4, 5, 2)])
    recs = mma_tiles.sweep(cuda, cases, peak=None, repeats=1, tiles=("64x64",))
    if [(r["case"], r["tile"]) for r in recs] != [("tiny gemm", "64x64"), ("tiny conv", "64x64")]:
        raise AssertionError(f"sweep records {recs}")


def check_conv():
    """One launch per group against the CPU's packed convolution: dots, then scale * dot + shift +
    residual with the signs packed by the epilogue."""
    for c, o, ksize, stride, padding, dilation, g, pad_value in CONVS:
        xb, w, padword, corr = conv_case(c, o, ksize, stride, padding, dilation, g, pad_value)
        cfg = f"xnor_mma.xnor_conv C={c} O={o} k={ksize} s={stride} p={padding} d={dilation} g={g} pad={pad_value:g}"
        scale = rng.standard_normal(o).astype(np.float32)
        shift = rng.standard_normal(o).astype(np.float32)
        common = dict(padword=padword, corr=corr, layout="nhwc")
        dots = XC.xnor_conv2d(xb, XC.pack_filters(w, g), c, o, ksize, stride, padding, dilation, dots=True, **common)
        res = rng.standard_normal(dots.shape).astype(np.float32)
        emit = g == 1
        affine = XC.xnor_conv2d(xb, XC.pack_filters(w, g), c, o, ksize, stride, padding, dilation, scale=scale,
                                shift=shift, residual=res, emit_bits=emit, **common)
        want, want_bits = affine if emit else (affine, None)
        p = int(np.prod(dots.shape[:3]))
        rows = XC.unpanel_words(XC.pack_filters(w, g), o // g)
        dev = dict(x=cuda.to_device(xb), padword=cuda.to_device(padword),
                   corr=None if corr is None else cuda.to_device(corr))
        for emulate in modes():
            out_i = cuda.device_array((p, o), np.int32)
            out_f = cuda.device_array((p, o), np.float32)
            fused = cuda.device_array((p, bits.words_for(o)), np.uint64) if emit else None
            for gi in range(g):
                b = cuda.to_device(np.ascontiguousarray(rows[gi]))
                k = (c // g) * ksize[0] * ksize[1]
                args = (dev["x"], gi, ksize, stride, padding, dilation, dev["padword"], b, k)
                XM.xnor_conv(*args, out_i, corr=dev["corr"], col0=gi * (o // g), emulate=emulate)
                XM.xnor_conv(*args, out_f, corr=dev["corr"], scale=cuda.to_device(scale), shift=cuda.to_device(shift),
                             residual=cuda.to_device(res.reshape(p, o)), col0=gi * (o // g), bits=fused,
                             emulate=emulate)
            equal(out_i.copy_to_host().reshape(dots.shape), dots, f"{cfg} emulate={emulate} dots")
            equal(out_f.copy_to_host().reshape(want.shape), want, f"{cfg} emulate={emulate} scale*dot+shift+residual")
            if emit:
                equal(fused.copy_to_host().reshape(want_bits.shape), want_bits, f"{cfg} emulate={emulate} signs")


def check_errors():
    x = cuda.to_device(np.zeros((1, 4, 4, 1, 1), np.uint64))
    b = cuda.to_device(np.zeros((3, 9), np.uint64))
    pad = cuda.to_device(np.zeros(1, np.uint64))
    out = cuda.device_array((16, 3), np.int32)
    out15, a16 = cuda.device_array((15, 3), np.int32), cuda.to_device(np.zeros((16, 9), np.uint64))
    b25 = cuda.to_device(np.zeros((3, 25), np.uint64))
    for call, text in (
            (lambda: XM.xnor_conv(x, 1, (3, 3), (1, 1), (1, 1), (1, 1), pad, b, 9, out), "group 1 out of range"),
            (lambda: XM.xnor_conv(x, 0, (3, 2), (1, 1), (1, 1), (1, 1), pad, b, 9, out), "must have 6 words"),
            (lambda: XM.xnor_conv(x, 0, (5, 5), (1, 1), (0, 0), (1, 1), pad, b25, 9, out),
             "smaller than the 5x5 kernel"),
            (lambda: XM.xnor_conv(x, 0, (3, 3), (1, 1), (1, 1), (1, 1), pad, b, 9, out15), "out must have 16 rows"),
            (lambda: XM.xnor_gemm(np.zeros((2, 3), np.uint64), b, 64, out), "expected a CUDA device array"),
            (lambda: XM.xnor_gemm(a16, b, 64, out, tile="256x256"),
             "tile must be a Tile or one of"),
            (lambda: XM.xnor_gemm(a16, b, 64, out, tile=XM.Tile(1, 1, 1, 1, 8)), "unusable tile")):
        expect_error(call, text)


CHECKS = {"fragments": check_fragments, "gemm": check_gemm, "tiles": check_tiles, "sweep": check_tile_sweep,
          "conv": check_conv, "errors": check_errors}

if __name__ == "__main__":
    for name in sys.argv[1:] or CHECKS:
        CHECKS[name]()
        print(f"{name}: ok", flush=True)
