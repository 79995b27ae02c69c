"""bitnet's own Python time per launch of one of its CUDA C kernels, without a GPU:
``python -m bitnet.bench.launch_overhead [--repeats N]``.

``bitnet.gpu.raw_kernels.launch`` checks the arguments, picks the compiled kernel and converts the
scalars to their C types before CuPy launches it; on a GPU that Python time adds to CuPy's own for
every launch of a training step (``python -m bitnet.bench.gpu_launches`` counts them). This runs
``launch`` with a stand-in for CuPy whose kernels do nothing (installed for the run only), on host
arrays, so what it times is bitnet's part alone: the median over rounds of ``repeats`` launches each,
for kernels of 3 (the sign), 15 (Adam's step) and 17 (batch norm's statistics) arguments. CuPy's own
host time per launch comes from ``python -m bitnet.bench.gpu_arrays`` on a GPU.
"""
from __future__ import annotations

import argparse
import contextlib
import sys
import time
import types

import numpy as np


class _StandInModule:
    def __init__(self, code, options):
        self.options = options

    def get_function(self, name):
        return lambda grid, block, args: None


@contextlib.contextmanager
def stand_in_cupy():
    """``raw_kernels`` launching into a stand-in CuPy (kernels that do nothing), for this block only."""
    from bitnet.gpu import raw_kernels
    saved_module, saved_compiled = sys.modules.get("cupy"), raw_kernels._compiled
    sys.modules["cupy"] = types.SimpleNamespace(RawModule=_StandInModule)
    raw_kernels._compiled = {}
    try:
        yield
    finally:
        raw_kernels._compiled = saved_compiled
        if saved_module is None:
            del sys.modules["cupy"]
        else:
            sys.modules["cupy"] = saved_module


def cases():
    """``{name: (number of arguments, call)}``: one launch each, as the training engine makes them."""
    from bitnet.gpu.raw_kernels import launch
    from bitnet.kernels import cuda_adam as KA
    from bitnet.kernels import cuda_batchnorm as KB
    from bitnet.kernels import cuda_sign as KS
    x, y = np.zeros(4096, np.float32), np.zeros(4096, np.float32)
    part, c = np.zeros(64), np.zeros(8)
    bn = dict(BN_T="float", BN_P="float", BN_B="float", BN_R="float", BN_V="float")
    sign = (x, x.size, y)
    adam = (x, y, x, y, x, x.size, 0, 0.9, 0.999, 0.1, 0.001, 0.0, 1e-3, 1.0, 1e-8)
    stats = (part, x, 8, 512, 4, 4096, 1e-5, 0.1, 1, c, c, c, c, c, c, c, c)
    return {"sign_forward": (len(sign), lambda: launch(KS, "sign_forward", 16, 256, sign, dict(SG_X="float"))),
            "adam_step": (len(adam), lambda: launch(KA, "adam_step", 16, 256, adam, dict(AD_T="float"))),
            "bn_stats_finalize": (len(stats), lambda: launch(KB, "bn_stats_finalize", 1, 256, stats, bn))}


def run(repeats=2000, rounds=5) -> list:
    records = []
    with stand_in_cupy():
        for name, (count, call) in cases().items():
            call()  # the first launch compiles (here: makes the stand-in) and looks the kernel up
            times = []
            for _ in range(rounds):
                t0 = time.perf_counter()
                for _ in range(repeats):
                    call()
                times.append((time.perf_counter() - t0) / repeats)
            records.append({"kernel": name, "arguments": count, "host_us": float(np.median(times)) * 1e6})
    return records


def main(argv=None) -> list:
    p = argparse.ArgumentParser(prog="python -m bitnet.bench.launch_overhead", description=__doc__.split("\n\n")[0])
    p.add_argument("--repeats", type=int, default=2000, help="launches per round (default 2000)")
    p.add_argument("--rounds", type=int, default=5, help="rounds; the median is reported (default 5)")
    args = p.parse_args(argv)
    if args.repeats < 1 or args.rounds < 1:
        p.error(f"--repeats and --rounds must be at least 1, got {args.repeats} and {args.rounds}")
    records = run(args.repeats, args.rounds)
    for r in records:
        print(f"{r['kernel']:<18} {r['arguments']:>2} arguments  {r['host_us']:6.2f} us per launch (bitnet's Python)")
    return records


if __name__ == "__main__":
    main()
