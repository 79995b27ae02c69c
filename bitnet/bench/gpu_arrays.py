"""Which device arrays the GPU training engine (issue 14) should stand on, measured: numba.cuda device
arrays with bitnet's own kernels, CuPy, and PyTorch (for reference), on the operations a training
step is made of. ``python -m bitnet.bench.gpu_arrays [--json FILE] [--repeats N]``.

For each operation and library: ``host_us``, the host's time per call without waiting for the GPU
(median; at small sizes this is what bounds a Python training loop), and ``gpu_ms``, the GPU's time
per call between CUDA events (median):

- ``alloc``: a new float32 array of the size (numba ``device_array``, CuPy ``empty`` from its memory
  pool, ``torch.empty`` from its caching allocator);
- ``add``: ``out = a + b`` into an existing array (``bitnet.kernels.cuda_float.add``,
  ``cupy.add(out=)``, ``torch.add(out=)``);
- ``sum0``: the sum over axis 0 (CuPy, PyTorch; numba has no reduction of its own);
- ``gemm``: ``a @ b.T`` in float32 (bitnet's numba SGEMM ``cuda_float.sgemm_nt``, cuBLAS through
  CuPy and through PyTorch with TF32 off), also as TFLOPS;
- ``numba on cupy``: a bitnet kernel launched on CuPy arrays (``__cuda_array_interface__``: no copy);
- ``raw sign``, ``raw adam``: bitnet's own CUDA C kernels through ``bitnet.gpu.raw_kernels.launch``
  (the sign, 3 arguments; Adam's step, 15), the way the training engine launches them: the host time
  per launch to multiply by ``python -m bitnet.bench.gpu_launches``'s counts.

Sizes: 256 x 256 (a small layer: per-call cost dominates) and 4096 x 4096. Libraries that are not
installed are left out; in Numba's simulator only numba's rows run, with no timings.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import time

import numpy as np

SIZES = (256, 4096)


def host_time(fn, repeats):
    """Median seconds the host spends in ``fn()`` (the GPU is not waited for, except every 16 calls)."""
    from numba import cuda
    fn()
    cuda.synchronize()
    times = []
    for i in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
        if i % 16 == 15:
            cuda.synchronize()
    cuda.synchronize()
    return float(np.median(times))


def _libraries():
    libs = ["numba"]
    for name in ("cupy", "torch"):
        if importlib.util.find_spec(name) is not None:
            if name == "torch":
                import torch
                if not torch.cuda.is_available():
                    continue
            libs.append(name)
    return libs


def operations(lib, n, rng):
    """``{op: call}`` for one library at size n x n."""
    from numba import cuda

    from bitnet.kernels import cuda_float as cf
    x = rng.standard_normal((n, n)).astype(np.float32)
    y = rng.standard_normal((n, n)).astype(np.float32)
    if lib == "numba":
        a, b, out = cuda.to_device(x), cuda.to_device(y), cuda.device_array((n, n), np.float32)
        return {"alloc": lambda: cuda.device_array((n, n), np.float32), "add": lambda: cf.add(a, b, out),
                "gemm": lambda: cf.sgemm_nt(a, b, out)}
    if lib == "cupy":
        import cupy
        from bitnet.gpu.raw_kernels import blocks_for, launch
        from bitnet.kernels import cuda_adam as KA
        from bitnet.kernels import cuda_sign as KS
        a, b, out = cupy.asarray(x), cupy.asarray(y), cupy.empty((n, n), cupy.float32)
        p, m, v = a.copy(), cupy.zeros((n, n), cupy.float32), cupy.zeros((n, n), cupy.float32)
        blocks = blocks_for(n * n, KS.THREADS)
        adam = (p, b, m, v, m, n * n, 0, 0.9, 0.999, 0.1, 0.001, 0.0, 1e-3, 1.0, 1e-8)
        return {"alloc": lambda: cupy.empty((n, n), cupy.float32), "add": lambda: cupy.add(a, b, out=out),
                "sum0": lambda: a.sum(axis=0), "gemm": lambda: cupy.matmul(a, b.T),
                "numba on cupy": lambda: cf.add(cuda.as_cuda_array(a), cuda.as_cuda_array(b), cuda.as_cuda_array(out)),
                "raw sign": lambda: launch(KS, "sign_forward", blocks, KS.THREADS, (a, n * n, out), dict(SG_X="float")),
                "raw adam": lambda: launch(KA, "adam_step", blocks, KA.THREADS, adam, dict(AD_T="float"))}
    import torch
    torch.backends.cuda.matmul.allow_tf32 = False
    a, b, out = torch.from_numpy(x).cuda(), torch.from_numpy(y).cuda(), torch.empty((n, n), device="cuda")
    return {"alloc": lambda: torch.empty((n, n), device="cuda"), "add": lambda: torch.add(a, b, out=out),
            "sum0": lambda: a.sum(0), "gemm": lambda: torch.matmul(a, b.T)}


def run(repeats=50, sizes=SIZES, libs=None) -> list:
    from numba import config

    from bitnet.bench.gpu import event_time
    rng = np.random.default_rng(0)
    records = []
    print(f"{'size':>6} {'op':<14} {'library':<7} {'host us':>9} {'gpu ms':>9} {'TFLOPS':>7}", flush=True)
    for n in sizes:
        for lib in libs or _libraries():
            for op, call in operations(lib, n, rng).items():
                host = host_time(call, repeats)
                gpu = event_time(call, repeats)
                tflops = 2.0 * n ** 3 / gpu / 1e12 if op == "gemm" and gpu > 0 else None
                records.append({"size": n, "op": op, "library": lib, "host_us": host * 1e6,
                                "gpu_ms": None if config.ENABLE_CUDASIM else gpu * 1e3, "tflops": tflops})
                print(f"{n:>6} {op:<14} {lib:<7} {host * 1e6:>9.1f} {gpu * 1e3:>9.3f} "
                      f"{tflops if tflops else 0:>7.1f}", flush=True)
    return records


def main(argv=None) -> int:
    from bitnet.backend import cuda_module
    p = argparse.ArgumentParser(prog="python -m bitnet.bench.gpu_arrays", description=__doc__.split("\n\n")[0])
    p.add_argument("--json", help="write the records to this file")
    p.add_argument("--repeats", type=int, default=50)
    p.add_argument("--sizes", type=int, nargs="+", default=list(SIZES), help="n of the n x n arrays")
    args = p.parse_args(argv)
    cuda_module()
    records = run(args.repeats, args.sizes)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(records, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
