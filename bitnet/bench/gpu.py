"""``bitnet bench gemm --device cuda`` and ``bitnet bench model --device cuda``: the GPU kernels
against cuBLAS and PyTorch on the same GPU, timed with CUDA events (median of the repeats).

- gemm: the binary GEMM on pre-packed operands (int32 dots out), on the CUDA cores' popcount
  (``xnor``: ``bitnet.kernels.xnor_cuda``) and on the 1-bit tensor cores (``xnor mma``:
  ``bitnet.kernels.xnor_mma``, compute capability 8.0+), against cuBLAS float32 SGEMM of the +-1
  operands (PyTorch with TF32 off, or CuPy) and PyTorch's float16, bfloat16 and int8 GEMMs
  (``bitnet.bench.gpu_peaks``), on the BMXNet paper configuration (64 filters, N = 12800, K = 25 C)
  and squares up to 8192. Fractions: of the card's 64-bit popcount peak for ``xnor`` (SMs x
  clock x 8 ``popc.b64`` per clock per SM x 64 multiply-accumulates x 2), of the 1-bit MMA peak
  measured on this card (``gpu_peaks.mma_peak_tops``) for ``xnor mma``.
- model: packed binary ResNet-18 (CIFAR shape, input and output on the device) with either binary
  kernel, against its float twin in PyTorch on the GPU (eval, no_grad): float32 (TF32 off),
  float16 channels-last, bfloat16 autocast; the packed model with its forward pass replayed as a
  CUDA graph (the default) and without (``no graph``: every kernel launched from Python).
  ``host_ms`` is the host's time per forward (the Python and launch cost, measured without
  waiting for the GPU).

Under Numba's CUDA simulator (tests) the events time nothing: medians are 0 and ratios None; the
MMA runs emulated.
"""
from __future__ import annotations

import importlib.util

import numpy as np

PAPER_C = (32, 64, 128, 256, 512)
SQUARE = (1024, 2048, 4096, 8192)
BATCHES = (1, 64, 256, 1024)
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


def has_mma() -> bool:
    """Whether the binary kernels can run on the 1-bit MMA here (emulated in the simulator)."""
    from numba import config, cuda

    from bitnet.kernels.bmma import MIN_COMPUTE_CAPABILITY
    return bool(config.ENABLE_CUDASIM) or tuple(cuda.get_current_device().compute_capability) >= MIN_COMPUTE_CAPABILITY


def bench_gemm_case(name, m, n, k, repeats, mma_peak=None):
    from numba import config, cuda

    from bitnet.bench.gpu_peaks import torch_gemms
    from bitnet.kernels import bits
    from bitnet.kernels import xnor_cuda as XG
    from bitnet.kernels import xnor_mma as XM
    rng = np.random.default_rng(0)
    a = np.where(rng.standard_normal((m, k)) >= 0, 1, -1).astype(np.float32)
    bt = np.where(rng.standard_normal((n, k)) >= 0, 1, -1).astype(np.float32)
    da, db = cuda.to_device(a), cuda.to_device(bt)
    aw = cuda.device_array((m, bits.words_for(k)), np.uint64)
    bw = cuda.device_array((n, bits.words_for(k)), np.uint64)
    XG.pack_rows(da, aw)
    XG.pack_rows(db, bw)
    out = cuda.device_array((m, n), np.int32)
    binary = {"xnor": lambda: XG.xnor_gemm(aw, bw, k, out)}
    if has_mma():
        binary["xnor mma"] = lambda: XM.xnor_gemm(aw, bw, k, out)
    rows = min(m, 64)
    want = (a[:rows] @ bt.T).astype(np.int32)
    for method, call in binary.items():  # what is timed is exact: a slice of the result against the float product
        out[:rows].copy_to_device(np.zeros((rows, n), np.int32))
        call()
        if not np.array_equal(out.copy_to_host()[:rows], want):
            raise AssertionError(f"{name}: the GPU binary GEMM ({method}) disagrees with the float product")
    med = {method: event_time(call, repeats) for method, call in binary.items()}
    med["xnor+binarize"] = event_time(lambda: (XG.pack_rows(db, bw), XG.xnor_gemm(aw, bw, k, out)), repeats)
    sgemm = _sgemm()
    if sgemm is not None:
        label, make = sgemm
        med[label] = event_time(make(a, bt), repeats)
    for label, call in torch_gemms(a, bt).items():
        med[label] = event_time(call, repeats)
    ops = 2.0 * m * n * k
    peak = None if config.ENABLE_CUDASIM else popc_peak_tops()
    base = sgemm[0] if sgemm is not None else None
    recs = []
    for method, t in med.items():
        tops = ops / t / 1e12 if t > 0 else None
        fraction = (tops / mma_peak if tops and mma_peak and method == "xnor mma" else
                    tops / peak if tops and peak and method.startswith("xnor") and method != "xnor mma" else None)
        recs.append(_known({"case": name, "method": method, "median_s": t, "tops": tops, "m": m, "n": n, "k": k,
                            "ratio_vs_cublas": (med[base] / t if base and t > 0 else None),
                            "ratio_vs_fp16": (med["torch fp16"] / t if "torch fp16" in med and t > 0 else None),
                            "fraction_of_peak": fraction}))
    return recs


def _known(record: dict) -> dict:
    """The record without the entries this run could not measure."""
    return {k: v for k, v in record.items() if v is not None}


def bench_model(batch, repeats, torch_too=True, image=32, name="resnet18-binary"):
    import time

    import bitnet
    from bitnet.bench.model import _model
    from numba import cuda
    shape = (3, image, image)
    model = _model(name, shape)
    x = np.random.default_rng(1).standard_normal((batch,) + shape).astype(np.float32)
    dx = cuda.to_device(x)
    cpu_out = bitnet.pack(model, device="cpu")(bitnet.Tensor(x)).data
    med, host, diff = {}, {}, {}
    variants = [(k, g) for k in (("popcount", "mma") if has_mma() else ("popcount",)) for g in (True, False)]
    for kernels, graphs in variants:
        gpu = bitnet.pack(model, device="cuda", binary_kernels=kernels)
        gpu.graphs = graphs and gpu.graphs      # (off in the simulator)
        method = f"packed (gpu, {kernels}{'' if graphs else ', no graph'})"
        diff[method] = float(np.abs(gpu.run_device(dx).copy_to_host() - cpu_out).max())
        med[method] = event_time(lambda: gpu.run_device(dx), repeats)
        calls = []
        for _ in range(max(3, repeats)):
            cuda.synchronize()
            t0 = time.perf_counter()
            gpu.run_device(dx)
            calls.append(time.perf_counter() - t0)
        cuda.synchronize()
        host[method] = float(np.median(calls))
    if torch_too:
        med.update(_torch_model_times(name, x, repeats))
    base = "torch float32 (gpu)"
    recs = []
    for method, t in med.items():
        recs.append(_known({"case": f"{name} batch {batch}", "method": method, "median_s": t, "batch": batch,
                            "images_per_s": batch / t if t > 0 else None,
                            "ratio_vs_torch": (med[base] / t if base in med and t > 0 else None),
                            "ratio_vs_fp16": (med["torch fp16 channels-last (gpu)"] / t
                                              if "torch fp16 channels-last (gpu)" in med and t > 0 else None),
                            "host_ms": host[method] * 1e3 if method in host else None,
                            "max_abs_diff_vs_cpu_packed": diff.get(method)}))
    return recs


def _torch_model_times(name, x, repeats) -> dict:
    """The float twin in PyTorch on the GPU: float32 (TF32 off), float16 channels-last, bfloat16 autocast."""
    if importlib.util.find_spec("torch") is None:
        return {}
    import torch
    if not torch.cuda.is_available():
        return {}
    from bitnet.bench.torch_models import float_twin
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
    tm = float_twin(name).eval().cuda()
    tx = torch.from_numpy(x).cuda()
    half = float_twin(name).eval().cuda().half().to(memory_format=torch.channels_last)
    hx = tx.half().to(memory_format=torch.channels_last)

    def run(model, inp, autocast=None):
        with torch.no_grad():
            if autocast is None:
                return model(inp)
            with torch.autocast("cuda", dtype=autocast):
                return model(inp)
    return {"torch float32 (gpu)": event_time(lambda: run(tm, tx), repeats),
            "torch fp16 channels-last (gpu)": event_time(lambda: run(half, hx), repeats),
            "torch bf16 autocast (gpu)": event_time(lambda: run(tm, tx, torch.bfloat16), repeats)}
