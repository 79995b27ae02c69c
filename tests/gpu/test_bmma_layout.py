"""The 1-bit MMA's fragment layout (``bitnet.kernels.bmma``) against a NumPy model of the warp-level
``mma.m16n8k256 .b1 .and.popc`` written from the PTX ISA's per-element formulas, and the kernels'
PTX for sm_80 / sm_90 (assembled by ptxas where the CUDA toolkit is installed). No GPU, no
simulator: the simulator cannot run an MMA (tests/gpu/xnor_mma_checks.py runs the kernels with its
emulation)."""
from __future__ import annotations

import os
import re
import shutil
import subprocess

import numpy as np
import pytest

from bitnet.kernels import bits
from bitnet.kernels.bmma import a_home, a_slot, b_home, b_slot, c_slot

from cudasim import require_ptx_compiler

rng = np.random.default_rng(16)


# -- the PTX ISA's element formulas (groupID = lane >> 2, threadID_in_group = lane % 4) ------------

def isa_a(lane, i):
    """Element i (0..127) of A's fragment: 4 registers x 32 elements, low to high."""
    g, t = lane >> 2, lane % 4
    row = g if (i < 32 or 64 <= i < 96) else g + 8
    col = t * 32 + (i & 31) + (128 if i >= 64 else 0)
    return row, col


def isa_b(lane, i):
    """Element i (0..63) of B's fragment: 2 registers x 32 elements."""
    g, t = lane >> 2, lane % 4
    return t * 32 + (i & 31) + (128 if i >= 32 else 0), g     # (row = k, col = n)


def isa_c(lane, i):
    g, t = lane >> 2, lane % 4
    return (g if i < 2 else g + 8), t * 2 + (i & 1)


def fragments(a_bits, b_bits):
    """Registers of each lane from a 16 x 256 and a 256 x 8 0/1 matrix, by the ISA formulas."""
    fa, fb = np.zeros((32, 4), np.uint32), np.zeros((32, 2), np.uint32)
    for lane in range(32):
        for i in range(128):
            r, c = isa_a(lane, i)
            fa[lane, i // 32] |= np.uint32(int(a_bits[r, c]) << (i % 32))
        for i in range(64):
            k, n = isa_b(lane, i)
            fb[lane, i // 32] |= np.uint32(int(b_bits[k, n]) << (i % 32))
    return fa, fb


def numpy_mma(fa, fb, fc):
    """The instruction: D = C + A AND-popcount B, from and to the lanes' registers (ISA layout)."""
    a, b = np.zeros((16, 256), np.int64), np.zeros((256, 8), np.int64)
    for lane in range(32):
        for i in range(128):
            a[isa_a(lane, i)] = (int(fa[lane, i // 32]) >> (i % 32)) & 1
        for i in range(64):
            b[isa_b(lane, i)] = (int(fb[lane, i // 32]) >> (i % 32)) & 1
    prod = a @ b
    fd = fc.astype(np.int64).copy()
    for lane in range(32):
        for i in range(4):
            fd[lane, i] += prod[isa_c(lane, i)]
    return fd.astype(np.int32)


def test_slot_helpers_follow_the_isa_formulas():
    for lane in range(32):
        for reg in range(4):
            row, word = a_slot(lane, reg)
            assert {isa_a(lane, 32 * reg + i) for i in range(32)} == {(row, 32 * word + i) for i in range(32)}
            assert isa_c(lane, reg) == c_slot(lane, reg)
        for reg in range(2):
            col, word = b_slot(lane, reg)
            assert {isa_b(lane, 32 * reg + i) for i in range(32)} == {(32 * word + i, col) for i in range(32)}


def test_home_is_the_inverse_of_slot():
    """Every 32-bit word of a 16-row A tile and an 8-column B tile has exactly one (lane, register)."""
    assert sorted(a_home(r, w) for r in range(16) for w in range(8)) == [(ln, g) for ln in range(32) for g in range(4)]
    assert sorted(b_home(c, w) for c in range(8) for w in range(8)) == [(ln, g) for ln in range(32) for g in range(2)]
    for lane in range(32):
        for reg in range(4):
            assert a_home(*a_slot(lane, reg)) == (lane, reg)
        for reg in range(2):
            assert b_home(*b_slot(lane, reg)) == (lane, reg)


def test_fragments_loaded_from_packed_words_give_the_xnor_dot():
    """What the kernel does: 16 activation rows and 8 filter rows packed into uint64 words, split
    into 32-bit words, loaded with a_slot / b_slot; the MMA's AND counts plus the row popcounts give
    K - 2 popc(a XOR b) for every row and filter."""
    k = 256
    x, w = rng.standard_normal((16, k)), rng.standard_normal((8, k))
    a_words, b_words = bits.pack_reference(x), bits.pack_reference(w)      # (16, 4), (8, 4) uint64
    a32, b32 = a_words.view(np.uint32), b_words.view(np.uint32)            # little end first: word 2j = bits 64j..
    fa, fb = np.zeros((32, 4), np.uint32), np.zeros((32, 2), np.uint32)
    for lane in range(32):
        for reg in range(4):
            row, word = a_slot(lane, reg)
            fa[lane, reg] = a32[row, word]
        for reg in range(2):
            col, word = b_slot(lane, reg)
            fb[lane, reg] = b32[col, word]
    # the same registers as the ISA's element formulas give for the 0/1 matrices
    ref_a, ref_b = fragments((x < 0).astype(int), (w < 0).astype(int).T)
    np.testing.assert_array_equal(fa, ref_a)
    np.testing.assert_array_equal(fb, ref_b)
    d = numpy_mma(fa, fb, np.zeros((32, 4), np.int32))
    pa, pb = bits.popcount_reference(a_words).sum(1), bits.popcount_reference(b_words).sum(1)
    dots = np.zeros((16, 8), np.int64)
    for lane in range(32):
        for reg in range(4):
            r, c = c_slot(lane, reg)
            dots[r, c] = k - 2 * (pa[r] + pb[c] - 2 * d[lane, reg])
    np.testing.assert_array_equal(dots, bits.xnor_dot_reference(a_words, b_words, k))


def test_accumulator_input_is_added():
    fa = rng.integers(0, 2 ** 32, (32, 4), dtype=np.uint64).astype(np.uint32)
    fb = rng.integers(0, 2 ** 32, (32, 2), dtype=np.uint64).astype(np.uint32)
    fc = rng.integers(-1000, 1000, (32, 4)).astype(np.int32)
    np.testing.assert_array_equal(numpy_mma(fa, fb, fc) - numpy_mma(fa, fb, np.zeros_like(fc)), fc)


# -- the kernels' PTX ---------------------------------------------------------------------------

def _mma_kernel_ptx(cc, tile="64x64"):
    from numba import cuda
    from numba import types as T

    from bitnet.kernels import xnor_mma as XM
    u1, u2 = T.Array(T.uint64, 1, "C"), T.Array(T.uint64, 2, "C")
    f1, f2, i2, i64 = T.Array(T.float32, 1, "C"), T.Array(T.float32, 2, "C"), T.Array(T.int32, 2, "C"), T.int64
    sig = (u1, i64) + (i64,) * 14 + (u1, u2, i64, i64, i2, i64, f1, f1, f2, i2, f2, i64, u2)
    ptx, _ = cuda.compile_ptx(XM._kernel(False, XM.TILES[tile])[0], sig, cc=cc)
    return ptx


TILE_NAMES = ["64x64", "128x64", "128x128"]


@pytest.mark.parametrize("cc", [(8, 0), (9, 0)])
@pytest.mark.parametrize("tile", TILE_NAMES)
def test_mma_kernel_compiles_with_its_accumulators_in_registers(cc, tile, tmp_path):
    from bitnet.kernels import xnor_mma as XM
    require_ptx_compiler(cc)
    assert sorted(TILE_NAMES) == sorted(XM.TILES)
    ptx = _mma_kernel_ptx(cc, tile)
    t = XM.TILES[tile]
    mmas = re.findall(r"mma\.sync\.aligned\.m16n8k256\.row\.col\.s32\.b1\.b1\.s32\.and\.popc", ptx)
    assert len(mmas) >= t.fm * t.fn, "the warp's MMA tiles of one 256-bit step are unrolled"
    assert not re.search(r"\b(ld|st)\.local", ptx), "accumulators or fragments spilled to local memory"
    assert "mul.rn.f32" in ptx and not re.search(r"\bfma\.", ptx), "the epilogue must round as the CPU does"
    ptxas = shutil.which("ptxas")
    if ptxas is None:
        pytest.skip("ptxas (CUDA toolkit) not on PATH: the PTX was generated but not assembled")
    src = tmp_path / "k.ptx"
    src.write_text(ptx)
    arch = f"sm_{cc[0]}{cc[1]}"
    proc = subprocess.run([ptxas, f"-arch={arch}", "-v", str(src), "-o", os.devnull], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert "0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads" in proc.stderr, proc.stderr
    smem = int(re.search(r"(\d+) bytes smem", proc.stderr).group(1))
    assert smem <= 48 * 1024, f"{smem} bytes of static shared memory: more than a block may declare statically"
    regs = int(re.search(r"Used (\d+) registers", proc.stderr).group(1))
    assert regs * t.threads <= 64 * 1024, f"{regs} registers x {t.threads} threads do not fit one SM"


def test_the_mma_is_refused_below_compute_capability_8(tmp_path):
    """The fallback's reason: a target without the 1-bit MMA does not assemble it."""
    require_ptx_compiler((8, 0))
    ptxas = shutil.which("ptxas")
    if ptxas is None:
        pytest.skip("ptxas (CUDA toolkit) not on PATH")
    ptx = _mma_kernel_ptx((8, 0)).replace(".target sm_80", ".target sm_75")
    src = tmp_path / "k.ptx"
    src.write_text(ptx)
    proc = subprocess.run([ptxas, "-arch=sm_75", str(src), "-o", os.devnull], capture_output=True, text=True)
    assert proc.returncode != 0 and "mma" in proc.stderr.lower(), proc.stderr


def test_peak_probe_compiles_to_a_register_only_mma_loop():
    """The benchmark's 1-bit MMA peak (bitnet.bench.gpu_peaks): four chains of MMAs in the loop, no
    memory traffic inside it."""
    from numba import cuda
    from numba import types as T

    from bitnet.bench.gpu_peaks import CHAINS, _peak_kernel
    require_ptx_compiler((9, 0))
    ptx, _ = cuda.compile_ptx(_peak_kernel()[0], (T.Array(T.uint32, 1, "C"), T.int64, T.Array(T.int32, 1, "C")),
                              cc=(9, 0))
    assert ptx.count("mma.sync.aligned.m16n8k256") >= CHAINS
    assert not re.search(r"\b(ld|st)\.local", ptx)


def test_the_big_tile_is_chosen_where_it_fills_the_gpu():
    from bitnet.kernels.xnor_mma import TILES, choose_tile
    assert choose_tile(8192, 8192, 132) == TILES["128x128"]           # 4,096 blocks of 128 x 128
    assert choose_tile(256 * 32 * 32, 64, 132) == TILES["128x128"]    # a ResNet stage at batch 256
    assert choose_tile(32 * 32, 64, 132) == TILES["64x64"]            # the same convolution at batch 1
    assert choose_tile(12800, 64, 132) == TILES["64x64"]              # 100 blocks: too few for 132 SMs
    assert choose_tile(12800, 64, 20) == TILES["128x128"]             # ... enough for a 20-SM GPU
