"""What the GPU benchmarks compare against: the card's measured 1-bit tensor-core peak, and the float
and int8 GEMMs of PyTorch on the same card.

- ``mma_peak_tops()``: a register-only loop of ``mma.m16n8k256 .and.popc`` (four independent
  accumulator chains per warp, 8 blocks of 256 threads per SM, no memory traffic), timed with
  CUDA events: the most 1-bit AND-popcount operations this card does per second, counting
  ``2 * 16 * 8 * 256`` operations per MMA as for a float multiply-add. None where the GPU has no
  1-bit MMA (compute capability below 8.0) or in the simulator.
- ``torch_gemms(a, bt)``: ``a @ bt.T`` of the +-1 operands through PyTorch in float16, bfloat16
  (float32 accumulation, cuBLAS) and int8 (``torch._int_mm``, int32 out) where PyTorch with CUDA
  is installed and the shape suits it; an empty dict otherwise.
"""
from __future__ import annotations

import importlib.util

import numpy as np

OPS_PER_MMA = 2 * 16 * 8 * 256
CHAINS = 4

_PEAK = {}


def _peak_kernel():
    if "kernel" in _PEAK:
        return _PEAK["kernel"]
    from numba import cuda, int32, uint32

    from bitnet.kernels.bmma import mma_and_popc

    def kernel(words, iters, out):
        scratch = cuda.shared.array((1, 1, 1), dtype=uint32)
        lane = cuda.threadIdx.x % 32
        a0, a1, a2, a3 = words[0] ^ uint32(lane), words[1], words[2], words[3]   # operands the compiler cannot fold
        b0, b1 = words[4], words[5] ^ uint32(lane)
        x0 = x1 = x2 = x3 = y0 = y1 = y2 = y3 = int32(0)
        u0 = u1 = u2 = u3 = v0 = v1 = v2 = v3 = int32(0)
        for _ in range(iters):   # CHAINS independent chains (the same operands, kept in place: no copies)
            x0, x1, x2, x3 = mma_and_popc(scratch, 0, lane, x0, x1, x2, x3, a0, a1, a2, a3, b0, b1)
            y0, y1, y2, y3 = mma_and_popc(scratch, 0, lane, y0, y1, y2, y3, a0, a1, a2, a3, b0, b1)
            u0, u1, u2, u3 = mma_and_popc(scratch, 0, lane, u0, u1, u2, u3, a0, a1, a2, a3, b0, b1)
            v0, v1, v2, v3 = mma_and_popc(scratch, 0, lane, v0, v1, v2, v3, a0, a1, a2, a3, b0, b1)
        out[cuda.grid(1)] = x0 + x1 + x2 + x3 + y0 + y1 + y2 + y3 + u0 + u1 + u2 + u3 + v0 + v1 + v2 + v3

    _PEAK["kernel"] = (kernel, cuda.jit(kernel))
    return _PEAK["kernel"]


def mma_peak_tops(iters=4096, blocks_per_sm=8, threads=256):
    """The measured 1-bit MMA peak of the current GPU in TOPS (see the module docstring), or None."""
    from numba import config, cuda

    from bitnet.bench.gpu import event_time
    from bitnet.kernels.bmma import MIN_COMPUTE_CAPABILITY
    if config.ENABLE_CUDASIM:
        return None
    dev = cuda.get_current_device()
    if tuple(dev.compute_capability) < MIN_COMPUTE_CAPABILITY:
        return None
    blocks = dev.MULTIPROCESSOR_COUNT * blocks_per_sm
    words = cuda.to_device(np.random.default_rng(0).integers(0, 2 ** 32, 6, dtype=np.uint64).astype(np.uint32))
    out = cuda.device_array(blocks * threads, np.int32)
    kernel = _peak_kernel()[1]
    t = event_time(lambda: kernel[blocks, threads](words, iters, out), repeats=5)
    return blocks * threads / 32 * iters * CHAINS * OPS_PER_MMA / t / 1e12


def torch_gemms(a, bt) -> dict:
    """``{label: call}`` for PyTorch's float16 / bfloat16 / int8 GEMMs of ``a @ bt.T`` on the GPU."""
    if importlib.util.find_spec("torch") is None:
        return {}
    import torch
    if not torch.cuda.is_available():
        return {}
    ta, tb = torch.from_numpy(a).cuda(), torch.from_numpy(bt).cuda()
    out = {}
    for label, dtype in (("torch fp16", torch.float16), ("torch bf16", torch.bfloat16)):
        x, y = ta.to(dtype), tb.to(dtype).T
        out[label] = (lambda x=x, y=y: torch.matmul(x, y))
    m, k = a.shape
    n = bt.shape[0]
    if hasattr(torch, "_int_mm") and m > 16 and k % 8 == 0 and n % 8 == 0:   # the shapes _int_mm takes
        x, y = ta.to(torch.int8), tb.to(torch.int8).T.contiguous()
        out["torch int8 (_int_mm)"] = (lambda: torch._int_mm(x, y))
    return out
