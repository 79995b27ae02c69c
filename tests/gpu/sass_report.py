"""How many instructions the tensor-core kernels' K loop issues per MMA, from the machine code ptxas
makes for a GPU, without a GPU: ``python tests/gpu/sass_report.py [--cc 90] [--cuobjdump PATH]``.

Each kernel (every ``xnor_mma.TILES`` block shape, rows and convolution) is compiled to PTX by Numba,
assembled by ptxas, disassembled by cuobjdump (CUDA toolkit, or the ``nvidia-cuda-cuobjdump`` wheel),
and the largest loop holding ``BMMA`` instructions is counted: its instructions per BMMA, and its
shared / global loads and stores. A warp scheduler issues one instruction per cycle and the H200's
1-bit MMA peak is about one BMMA per 6.7 cycles per scheduler, so a loop above ~7 instructions per
BMMA cannot reach the peak however well the memory keeps up (docs/gpu.md)."""
from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections import Counter


def kernel_sass(tile, conv, cc, cuobjdump, tmp):
    from numba import cuda
    from numba import types as T

    from bitnet.kernels import xnor_mma as XM
    u1, u2 = T.Array(T.uint64, 1, "C"), T.Array(T.uint64, 2, "C")
    f1, f2, i2, i64 = T.Array(T.float32, 1, "C"), T.Array(T.float32, 2, "C"), T.Array(T.int32, 2, "C"), T.int64
    sig = (u1, i64) + (i64,) * 14 + (u1, u2, i64, i64, i2, i64, f1, f1, f2, i2, f2, i64, u2)
    ptx, _ = cuda.compile_ptx(XM._kernel(False, XM.TILES[tile], conv)[0], sig, cc=cc)
    src, cubin = os.path.join(tmp, "k.ptx"), os.path.join(tmp, "k.cubin")
    with open(src, "w") as f:
        f.write(ptx)
    subprocess.run(["ptxas", f"-arch=sm_{cc[0]}{cc[1]}", src, "-o", cubin], check=True)
    return subprocess.run([cuobjdump, "-sass", cubin], capture_output=True, text=True, check=True).stdout


def k_loop(sass):
    """(instructions, BMMA count, opcode counts) of the largest backward-branch loop holding a BMMA."""
    ins = []
    for line in sass.splitlines():
        m = re.match(r"\s+/\*([0-9a-f]{4,})\*/\s+(.*?);", line)
        if m:
            ins.append((int(m.group(1), 16), re.sub(r"^@!?U?P\w+\s+", "", m.group(2).strip())))
    at = {a: i for i, (a, _) in enumerate(ins)}
    mma = [i for i, (_, t) in enumerate(ins) if t.startswith("BMMA")]
    best = None
    for i, (a, t) in enumerate(ins):
        m = re.match(r"BRA\s+(?:`\()?(0x[0-9a-f]+)", t)
        if m and int(m.group(1), 16) <= a and int(m.group(1), 16) in at:
            j = at[int(m.group(1), 16)]
            n = sum(1 for b in mma if j <= b <= i)
            if n and (best is None or i - j > best[1] - best[0]):
                best = (j, i, n)
    j, i, n = best
    return i - j + 1, n, Counter(t.split()[0].split(".")[0] for _, t in ins[j:i + 1])


def main(argv=None) -> int:
    from bitnet.kernels import xnor_mma as XM
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cc", default="90", help="compute capability, e.g. 80 or 90")
    p.add_argument("--cuobjdump", default=shutil.which("cuobjdump"))
    args = p.parse_args(argv)
    if not args.cuobjdump or not shutil.which("ptxas"):
        print("needs ptxas and cuobjdump (CUDA toolkit; or pip download nvidia-cuda-cuobjdump)", file=sys.stderr)
        return 2
    cc = (int(args.cc[0]), int(args.cc[1:]))
    print(f"{'tile':<12} {'kernel':<6} {'loop':>5} {'BMMA':>5} {'per BMMA':>9}  LDS STS LDG BAR")
    with tempfile.TemporaryDirectory() as tmp:
        for conv in (False, True):
            for tile in XM.TILES:
                size, n, ops = k_loop(kernel_sass(tile, conv, cc, args.cuobjdump, tmp))
                print(f"{tile:<12} {'conv' if conv else 'gemm':<6} {size:>5} {n:>5} {size / n:>9.1f}  "
                      f"{ops['LDS']:>3} {ops['STS']:>3} {ops['LDG']:>3} {ops['BAR']:>3}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
