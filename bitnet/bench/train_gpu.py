"""``bitnet bench train --device cuda``: training images per second on one GPU, bitnet vs PyTorch, one run.

Measured, for each network (``resnet18-binary``: CIFAR-10 shape 3x32x32, batch 256, random data of
that shape; ``lenet-binary``: MNIST shape, batch 128, the MNIST training set in order where its
files are found, else random data of that shape; the output says which), on the same GPU in the
same process:

- ``bitnet``: the zoo model on "cuda" (``model.to("cuda")``), each batch a ``Tensor(x,
  device="cuda")``, forward, cross-entropy, backward and the Adam step (lr 1e-3, with the binary
  kernels' clip to [-1, 1]) on the device;
- ``torch fp32``: PyTorch training the same network (``bitnet.bench.torch_binary``: the float twins
  with sign straight-through estimators on activations and weights) from the same initial weights,
  on the same batches in the same order, with the same loss and optimizer, latent binary weights
  clipped after each step; PyTorch's default math settings (printed: cuDNN TF32 convolutions on,
  TF32 matmuls off), ``cudnn.benchmark`` on. bitnet's float GEMMs (the convolutions' backward, the
  float layers) run in full float32 on CuPy's cuBLAS unless ``CUPY_TF32=1`` is set (printed too);
- ``torch bf16``: the same with ``torch.autocast("cuda", dtype=torch.bfloat16)`` around the forward
  pass and the loss.

Every batch is copied to the GPU before timing (bitnet's labels stay on the host, as
``cross_entropy`` takes them), so the figures are the training step, not the host-to-device copy
(which ``DataLoader`` prefetching overlaps with compute). Each contender first runs ``warmup``
untimed steps (compilation, cuDNN autotuning, memory pools); then ``rounds`` rounds alternate
between the contenders, each round timing ``steps`` consecutive steps between two device
synchronizations (``bitnet.gpu.arrays.synchronize`` / ``torch.cuda.synchronize``, so the clock
stops when the GPU has finished, not when the host has queued the work). Reported: the median over
rounds of the time per step, images per second = batch / that median, the tail over rounds, and
bitnet's images per second over PyTorch fp32's and over bf16's. Losses are read back only after
the timing and printed side by side (same work).

PyTorch is optional: its columns are skipped with the reason when torch, or torch.cuda, is missing.
Without a GPU, ``bitnet.gpu.arrays.xp()`` raises ``CudaUnavailableError``; under
``NUMBA_ENABLE_CUDASIM=1`` bitnet runs on the CPU emulation of the device arrays instead: a slow
smoke test of the code path, not a measurement (and no PyTorch columns).
"""
from __future__ import annotations

import importlib.util
import time

import numpy as np

NETWORKS = ("resnet18-binary", "lenet-binary")
BATCH = {"resnet18-binary": 256, "lenet-binary": 128}
STEPS = 20
WARMUP = 3
EPOCH_IMAGES = 60000  # at most one MNIST epoch of batches is copied to the GPU


class Contender:
    """``step(i)`` runs one training step on batch ``i`` (cycling) and returns its loss still on the
    device; ``sync()`` waits for the device; ``loss_value(l)`` reads a returned loss (after timing)."""

    def __init__(self, step, sync, loss_value):
        self.step, self.sync, self.loss_value = step, sync, loss_value


def bitnet_sync() -> None:
    """Wait for all GPU work: CuPy's stream, then the whole device (numba.cuda kernels may queue on
    another stream); a no-op on the emulation."""
    from bitnet.gpu import arrays, emulated
    arrays.synchronize()
    module = arrays.xp()
    if module is not emulated.xp:
        module.cuda.Device().synchronize()


def bitnet_contender(model, batches) -> Contender:
    """bitnet's training step on "cuda": ``model`` (moved there in place), Adam lr 1e-3."""
    from bitnet import Tensor, functional as F, optim
    from bitnet.gpu.arrays import to_host
    model.to("cuda")
    params = list(model.parameters())
    opt = optim.Adam(params, lr=1e-3)
    on_device = [(Tensor(x, device="cuda"), y) for x, y in batches]

    def step(i):
        x, y = on_device[i % len(on_device)]
        for p in params:
            p.grad = None
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()  # applies the binary kernels' constraint (clip to [-1, 1])
        return loss.data
    return Contender(step, bitnet_sync, lambda l: float(to_host(l)))


def torch_contender(name, bitnet_model, batches, bf16=False, device="cuda") -> Contender:
    """PyTorch's training step of ``name``'s sign-STE twin, started from ``bitnet_model``'s weights
    (on the host), fp32 or under bf16 autocast, on ``device`` ("cpu" only in tests)."""
    import torch
    from torch import nn
    from bitnet.bench.torch_binary import TWINS, binary_weights, clip_binary_weights, copy_from_bitnet
    model = TWINS[name]()
    copy_from_bitnet(model, bitnet_model)
    model.to(device)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    clipped = binary_weights(model)
    tb = [(torch.from_numpy(x).to(device), torch.from_numpy(y).to(device)) for x, y in batches]

    def step(i):
        x, y = tb[i % len(tb)]
        opt.zero_grad(set_to_none=True)
        with torch.autocast(device, dtype=torch.bfloat16, enabled=bf16):
            loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        clip_binary_weights(clipped)
        return loss.detach()
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    return Contender(step, sync, lambda l: float(l.item()))


def torch_status(no_torch: bool, emulated: bool):
    """``(usable, note)``: whether the PyTorch columns run, and why not."""
    if no_torch:
        return False, "PyTorch columns skipped (--no-torch)"
    if emulated:
        return False, "PyTorch columns skipped: bitnet runs on the CPU emulation, there is no GPU to compare on"
    if importlib.util.find_spec("torch") is None:
        return False, "PyTorch columns skipped: PyTorch is not installed (pip install torch, a CUDA build)"
    import torch
    if not torch.cuda.is_available():
        return False, (f"PyTorch columns skipped: torch {torch.__version__} has no usable CUDA "
                       "(a CPU-only build, or no GPU visible to it)")
    return True, (f"PyTorch {torch.__version__}: cuDNN TF32 {torch.backends.cudnn.allow_tf32}, "
                  f"matmul TF32 {torch.backends.cuda.matmul.allow_tf32}, cudnn.benchmark on")


def time_rounds(contenders: dict, rounds: int, steps: int, warmup: int, clock=time.perf_counter):
    """``({name: [seconds per step of each round]}, {name: [loss of each timed step]})``: ``warmup``
    untimed steps each, then ``rounds`` rounds alternating between the contenders, each timing
    ``steps`` steps from a synchronized device to a synchronized device."""
    times = {name: [] for name in contenders}
    handles = {name: [] for name in contenders}
    index = {name: 0 for name in contenders}
    for name, c in contenders.items():
        for _ in range(warmup):
            c.step(index[name])
            index[name] += 1
        c.sync()
    for _ in range(rounds):
        for name, c in contenders.items():
            c.sync()
            t0 = clock()
            for _ in range(steps):
                handles[name].append(c.step(index[name]))
                index[name] += 1
            c.sync()
            times[name].append((clock() - t0) / steps)
    losses = {name: [contenders[name].loss_value(h) for h in hs] for name, hs in handles.items()}
    return times, losses


def device_name(emulated: bool) -> str:
    if emulated:
        return "the CPU emulation of the GPU arrays (NUMBA_ENABLE_CUDASIM=1)"
    from bitnet.gpu.arrays import xp
    cupy = xp()
    name = cupy.cuda.runtime.getDeviceProperties(cupy.cuda.Device().id)["name"]
    return name.decode() if isinstance(name, bytes) else str(name)


def check_device() -> bool:
    """True on the emulation, False on a GPU; ``CudaUnavailableError`` (with the simulator named as the
    way to smoke-test) where neither can run."""
    from bitnet.backend import CudaUnavailableError
    from bitnet.gpu import arrays, emulated
    try:
        return arrays.xp() is emulated.xp
    except CudaUnavailableError as e:
        raise CudaUnavailableError(f"bench train --device cuda: {e}. NUMBA_ENABLE_CUDASIM=1 runs it on the CPU "
                                   "emulation instead, as a slow smoke test") from None


def bitnet_math_note(emulated: bool) -> str:
    """How bitnet's float32 GEMMs compute: CuPy's cuBLAS in full float32 unless ``CUPY_TF32=1`` is in
    the environment (TF32 tensor cores, as PyTorch's cuDNN convolutions by default)."""
    if emulated:
        return "NumPy (the emulation)"
    import os
    tf32 = os.environ.get("CUPY_TF32", "0") == "1"
    return f"float GEMMs by CuPy (cuBLAS), TF32 {'on' if tf32 else 'off'} (CUPY_TF32={'1' if tf32 else '0'})"


def run(networks=NETWORKS, batch_size=None, rounds=5, steps=None, warmup=WARMUP, data_dir=None,
        no_torch=False, out=None) -> list:
    """The comparison for each network; returns one record per network and contender."""
    emulated = check_device()  # before any work: no GPU means a clear error at once
    out = out or (lambda text: print(text, flush=True))
    steps = steps or STEPS
    use_torch, torch_note = torch_status(no_torch, emulated)
    out(f"bitnet bench train --device cuda: {device_name(emulated)}; rounds x steps per contender: {rounds} x "
        f"{steps}, after {warmup} untimed warm-up steps; each round timed between two device synchronizations")
    if emulated:
        out("  a slow smoke test of the code path on the CPU emulation, not a measurement")
    out(f"  {torch_note}")
    out(f"  bitnet: {bitnet_math_note(emulated)}")
    records = []
    for net in networks:
        records += bench_network(net, batch_size or BATCH[net], rounds, steps, warmup, data_dir, use_torch, out)
    return records


def bench_network(net, batch, rounds, steps, warmup, data_dir, use_torch, out) -> list:
    from bitnet import models
    from bitnet.bench.timing import tail_stats
    from bitnet.bench.worker import SHAPES, load_batches
    n_batches = min(warmup + rounds * steps, -(-EPOCH_IMAGES // batch))
    batches, source = load_batches(batch, n_batches, data_dir, SHAPES[net])
    model = models.get(net, seed=0)
    contenders = {}
    if use_torch:  # the twins copy the initial weights from the host model, before it moves
        contenders["torch fp32"] = torch_contender(net, model, batches)
        contenders["torch bf16"] = torch_contender(net, model, batches, bf16=True)
        import torch
        torch.backends.cudnn.benchmark = True
    contenders = {"bitnet": bitnet_contender(model, batches), **contenders}
    times, losses = time_rounds(contenders, rounds, steps, warmup)
    med = {name: float(np.median(t)) for name, t in times.items()}
    case = f"{net} train batch {batch}, cuda"
    records = []
    for name, t in times.items():
        rec = {"case": case, "method": name, "model": net, "batch": batch, "device": "cuda", "data": source,
               "median_s": med[name], "images_per_s": batch / med[name], **tail_stats(t), "calls": len(t),
               "steps_per_round": steps, "warmup": warmup, "losses": losses[name]}
        for base, key in (("torch fp32", "ratio_vs_torch_fp32"), ("torch bf16", "ratio_vs_torch_bf16")):
            if base in med:
                rec[key] = med[base] / med[name]  # this one's images per second over the baseline's
        records.append(rec)
    out(f"\n{net} training step, batch {batch}, data: {source}")
    out(f"{'framework':<12} {'images/s':>10} {'median ms':>10} {'p90 ms':>9} {'max ms':>9} {'loss first -> last':>20}")
    for r in records:
        ls = r["losses"]
        out(f"{r['method']:<12} {r['images_per_s']:>10.1f} {1e3 * r['median_s']:>10.2f} {1e3 * r['p90_s']:>9.2f} "
            f"{1e3 * r['max_s']:>9.2f} {ls[0]:>10.3f} -> {ls[-1]:.3f}")
    ours = records[0]
    for key, label in (("ratio_vs_torch_fp32", "PyTorch fp32"), ("ratio_vs_torch_bf16", "PyTorch bf16 autocast")):
        if key in ours:
            out(f"bitnet / {label} images per second: {ours[key]:.2f}x")
    return records
