"""``bitnet bench gemm --device cuda`` and ``bitnet bench model --device cuda``: the GPU kernels
against cuBLAS and PyTorch on the same GPU, timed with CUDA events (median of the repeats).

- gemm: the XNOR-popcount GEMM (``bitnet.kernels.xnor_cuda.xnor_gemm``, operands packed on the
  device beforehand, int32 dots out) against cuBLAS float32 SGEMM of the +-1 operands (through
  PyTorch with TF32 off, or CuPy, whichever is installed), on the BMXNet paper configuration (64
  filters, N = 12800, K = 25 C) and squares M = N = K up to 8192. Also its fraction of the card's
  64-bit popcount peak: SMs x clock x 8 ``popc.b64`` per clock per SM (16 32-bit popcounts per
  clock per SM on compute capability 7.x-9.0, CUDA programming guide; a 64-bit one takes two) x 64
  multiply-accumulates x 2 operations.
- model: packed binary ResNet-18 (CIFAR shape, ``bitnet.pack(model, device="cuda")``, input and
  output on the device) against its float twin in PyTorch on the GPU (eval, no_grad, TF32 off).

Under Numba's CUDA simulator (tests) the events time nothing: medians are 0 and ratios None.
"""
from __future__ import annotations

import importlib.util

import numpy as np

PAPER_C = (32, 64, 128, 256, 512)
SQUARE = (1024, 2048, 4096, 8192)
BATCHES = (1, 64, 256)
POPC64_PER_CLOCK_PER_SM = 8


def gemm_cases(quick=False, tiny=False):
    if tiny:  # a smoke test for the simulator
        return [("tiny 40x24 K=200", 40, 24, 200)]
    if quick:
        return [("paper C=64", 64, 12800, 1600)]
    return ([(f"paper C={c}", 64, 12800, 25 * c) for c in PAPER_C]
            + [(f"square {s}", s, s, s) for s in SQUARE])


def event_time(fn, repeats, warmup=2) -> float:
    """Median seconds of ``fn()`` on the GPU, each call between two CUDA events."""
    from numba import cuda
    for _ in range(warmup):
        fn()
    cuda.synchronize()
    times = []
    for _ in range(repeats):
        start, end = cuda.event(), cuda.event()
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / 1e3)
    return float(np.median(times))


def _sgemm():
    """``(name, make(a, bt) -> call)``: cuBLAS SGEMM ``a @ bt.T`` through PyTorch or CuPy, TF32 off; or None."""
    if importlib.util.find_spec("torch") is not None:
        import torch
        if torch.cuda.is_available():
            torch.backends.cuda.matmul.allow_tf32 = False

            def make(a, bt):
                ta, tb = torch.from_numpy(a).cuda(), torch.from_numpy(bt).cuda()
                return lambda: torch.matmul(ta, tb.T)
            return "cublas sgemm (torch)", make
    if importlib.util.find_spec("cupy") is not None:
        import cupy

        def make(a, bt):
            ca, cb = cupy.asarray(a), cupy.asarray(bt)
            return lambda: ca @ cb.T
        return "cublas sgemm (cupy)", make
    return None


def popc_peak_tops() -> float:
    from numba import cuda
    dev = cuda.get_current_device()
    sms, clock_khz = dev.MULTIPROCESSOR_COUNT, dev.CLOCK_RATE
    return sms * clock_khz * 1e3 * POPC64_PER_CLOCK_PER_SM * 64 * 2 / 1e12


def bench_gemm_case(name, m, n, k, repeats):
    from numba import config, cuda

    from bitnet.kernels import bits
    from bitnet.kernels import xnor_cuda as XG
    rng = np.random.default_rng(0)
    a = np.where(rng.standard_normal((m, k)) >= 0, 1, -1).astype(np.float32)
    bt = np.where(rng.standard_normal((n, k)) >= 0, 1, -1).astype(np.float32)
    da, db = cuda.to_device(a), cuda.to_device(bt)
    aw = cuda.device_array((m, bits.words_for(k)), np.uint64)
    bw = cuda.device_array((n, bits.words_for(k)), np.uint64)
    XG.pack_rows(da, aw)
    XG.pack_rows(db, bw)
    out = cuda.device_array((m, n), np.int32)
    # what is timed is exact: a slice of the result against the float product
    XG.xnor_gemm(aw, bw, k, out)
    rows = min(m, 64)
    if not np.array_equal(out.copy_to_host()[:rows], (a[:rows] @ bt.T).astype(np.int32)):
        raise AssertionError(f"{name}: the GPU XNOR GEMM disagrees with the float product")
    med = {"xnor": event_time(lambda: XG.xnor_gemm(aw, bw, k, out), repeats),
           "xnor+binarize": event_time(lambda: (XG.pack_rows(db, bw), XG.xnor_gemm(aw, bw, k, out)), repeats)}
    sgemm = _sgemm()
    if sgemm is not None:
        label, make = sgemm
        med[label] = event_time(make(a, bt), repeats)
    ops = 2.0 * m * n * k
    peak = None if config.ENABLE_CUDASIM else popc_peak_tops()
    base = sgemm[0] if sgemm is not None else None
    recs = []
    for method, t in med.items():
        tops = ops / t / 1e12 if t > 0 else None
        recs.append(_known({"case": name, "method": method, "median_s": t, "tops": tops, "m": m, "n": n, "k": k,
                            "ratio_vs_cublas": (med[base] / t if base and t > 0 else None),
                            "fraction_of_popc_peak": (tops / peak if tops and peak and method.startswith("xnor")
                                                      else None)}))
    return recs


def _known(record: dict) -> dict:
    """The record without the entries this run could not measure."""
    return {k: v for k, v in record.items() if v is not None}


def bench_model(batch, repeats, torch_too=True, image=32, name="resnet18-binary"):
    import bitnet
    from bitnet.bench.model import _model
    from numba import cuda
    shape = (3, image, image)
    model = _model(name, shape)
    gpu = bitnet.pack(model, device="cuda")
    x = np.random.default_rng(1).standard_normal((batch,) + shape).astype(np.float32)
    dx = cuda.to_device(x)
    cpu_out = bitnet.pack(model, device="cpu")(bitnet.Tensor(x)).data
    gpu_out = gpu.run_device(dx).copy_to_host()
    diff = float(np.abs(gpu_out - cpu_out).max())
    med = {"packed (gpu)": event_time(lambda: gpu.run_device(dx), repeats)}
    if torch_too and importlib.util.find_spec("torch") is not None:
        import torch
        if torch.cuda.is_available():
            from bitnet.bench.torch_models import float_twin
            torch.backends.cudnn.allow_tf32 = False
            torch.backends.cuda.matmul.allow_tf32 = False
            tm = float_twin(name).eval().cuda()
            tx = torch.from_numpy(x).cuda()

            def run_torch():
                with torch.no_grad():
                    return tm(tx)
            med["torch float32 (gpu)"] = event_time(run_torch, repeats)
    recs = []
    for method, t in med.items():
        torch_t = med.get("torch float32 (gpu)")
        recs.append(_known({"case": f"{name} batch {batch}", "method": method, "median_s": t, "batch": batch,
                            "ratio_vs_torch": (torch_t / t if torch_t and t > 0 else None),
                            "max_abs_diff_vs_cpu_packed": diff}))
    return recs
