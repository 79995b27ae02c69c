"""Where a training step's time goes: ``python -m bitnet.bench.profile_step --model lenet-binary``.

Runs the training step of ``bitnet bench train`` (``bitnet.bench.train_step``: forward, cross
entropy, backward, Adam with the kernel constraint) on random data of the model's input shape and
reports, per step (median over the timed steps), the time spent in

- each autograd op's forward and backward (``Function`` subclasses, by class name),
- the kernels those ops call (GEMM, im2col / col2im, layout moves, ...), as *exclusive* times: a
  kernel's time is taken out of the op that called it, so the rows add up to the step,
- the optimizer step, and "other" (graph bookkeeping, Python, what no row covers);

and the step's minor page faults and system (kernel) CPU time (``getrusage``). Timing wrappers
cost a few microseconds per call; the totals are printed next to an unwrapped step's time.
Wrappers are installed only for the run and removed after it (``profiled``).
"""
from __future__ import annotations

import argparse
import contextlib
import importlib
import resource
import threading
import time
from collections import defaultdict

import numpy as np

# kernels timed on their own: (module, attribute) -> row name (the ops call them through their module)
KERNELS = [
    ("bitnet.ops.conv", "gemm", "gemm (conv)"),
    ("bitnet.ops.conv", "matmul_each", "gemm per image (conv)"),
    ("bitnet.ops.conv", "matmul_sum", "gemm summed (conv)"),
    ("bitnet.ops.elementwise", "gemm", "gemm (dense)"),
    ("bitnet.kernels.im2col", "im2col", "im2col"),
    ("bitnet.kernels.im2col", "col2im", "col2im"),
    ("bitnet.kernels.im2col", "im2col_rows", "im2col_rows"),
    ("bitnet.kernels.im2col", "col2im_rows", "col2im_rows"),
    ("bitnet.kernels.im2col", "transpose_inner", "transpose_inner"),
    ("bitnet.kernels.im2col", "swap_leading_axes", "swap_leading_axes"),
    ("bitnet.kernels.xnor_conv", "xnor_conv2d", "xnor_conv2d"),
    ("bitnet.kernels.xnor_conv", "xnor_gemm", "xnor_gemm"),
    ("bitnet.kernels.bitpack", "pack_nchw", "pack_nchw"),
    ("bitnet.kernels.bitpack", "pack_rows", "pack_rows"),
    ("bitnet.kernels.sign_tables", "signs_t_matmul", "signs_t_matmul"),
    ("bitnet.kernels.sign_tables", "lower_signs", "lower_signs"),
    ("bitnet.kernels.sign_tables", "row_signs", "row_signs"),
]


class Profile:
    """Exclusive wall times per row name, accumulated over calls (a stack of open timers). Only the
    thread that made the profile is timed: a kernel that a helper thread runs inside a parallel
    worker (``bitnet.kernels.threads``; e.g. ``bitnet.ops.conv_chunks``) counts in the row of the
    call that started the worker."""

    def __init__(self):
        self.times = defaultdict(float)
        self.calls = defaultdict(int)
        self.stack = []  # [name, start, time of the callees]
        self.thread = threading.get_ident()

    def wrap(self, name, fn):
        def timed(*args, **kwargs):
            if threading.get_ident() != self.thread:
                return fn(*args, **kwargs)
            self.stack.append([name, time.perf_counter(), 0.0])
            try:
                return fn(*args, **kwargs)
            finally:
                name_, t0, inner = self.stack.pop()
                dt = time.perf_counter() - t0
                self.times[name_] += dt - inner
                self.calls[name_] += 1
                if self.stack:
                    self.stack[-1][2] += dt
        timed.__wrapped__ = fn
        return timed

    def reset(self):
        self.times.clear()
        self.calls.clear()


def _functions():
    from bitnet.tensor import Function
    seen, todo = [], list(Function.__subclasses__())
    while todo:
        cls = todo.pop()
        if cls not in seen:
            seen.append(cls)
            todo += cls.__subclasses__()
    return seen


@contextlib.contextmanager
def profiled(prof: Profile, optimizer):
    """Install timing wrappers on every op's forward / backward, on ``KERNELS`` and on
    ``optimizer.step``; remove them on exit."""
    import bitnet.ops.binary  # noqa: F401 - its ops must exist to be wrapped
    patches = []
    for cls in _functions():
        for phase in ("forward", "backward"):
            if phase in cls.__dict__:
                patches.append((cls, phase, cls.__dict__[phase], prof.wrap(f"{cls.__name__}.{phase}",
                                                                          cls.__dict__[phase])))
    for path, attr, name in KERNELS:
        owner = importlib.import_module(path)
        if hasattr(owner, attr):
            fn = getattr(owner, attr)
            patches.append((owner, attr, fn, prof.wrap(name, fn)))
    patches.append((optimizer, "step", None, prof.wrap("optimizer.step", optimizer.step)))
    try:
        for owner, attr, _, new in patches:
            setattr(owner, attr, new)
        yield
    finally:
        for owner, attr, old, _ in reversed(patches):
            if old is None:
                delattr(owner, attr)
            else:
                setattr(owner, attr, old)


def make_step(model_name, batch, seed=0):
    """(step, optimizer) for one bitnet training step on a fixed random batch."""
    from bitnet import Tensor, functional as F, models, optim
    from bitnet.bench.worker import SHAPES
    model = models.get(model_name, seed=seed)
    opt = optim.Adam(model.parameters(), lr=1e-3)
    params = list(model.parameters())
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((batch,) + SHAPES[model_name]).astype(np.float32)
    y = rng.integers(0, 10, batch)

    def step():
        for p in params:
            p.grad = None
        loss = F.cross_entropy(model(Tensor(x)), y)
        loss.backward()
        opt.step()
    return step, opt


def profile(model_name="lenet-binary", batch=None, threads=1, steps=10, warmup=3):
    """``(rows, summary)``: rows ``(name, ms per step, calls per step)`` sorted by time, and a dict
    with the plain and profiled step medians (ms), page faults and system ms per step."""
    import numba
    from bitnet.bench.train import BATCH
    numba.set_num_threads(threads)
    batch = batch or BATCH[model_name]
    step, opt = make_step(model_name, batch)
    for _ in range(warmup):
        step()
    plain, faults, sys_s = [], [], []
    for _ in range(steps):
        r0 = resource.getrusage(resource.RUSAGE_SELF)
        t0 = time.perf_counter()
        step()
        plain.append(time.perf_counter() - t0)
        r1 = resource.getrusage(resource.RUSAGE_SELF)
        faults.append(r1.ru_minflt - r0.ru_minflt)
        sys_s.append(r1.ru_stime - r0.ru_stime)
    prof = Profile()
    wrapped = []
    with profiled(prof, opt):
        step()
        prof.reset()
        for _ in range(steps):
            t0 = time.perf_counter()
            step()
            wrapped.append(time.perf_counter() - t0)
    total = sum(prof.times.values())
    rows = sorted(((k, 1e3 * v / steps, prof.calls[k] / steps) for k, v in prof.times.items()),
                  key=lambda r: -r[1])
    rows.append(("other (graph, Python)", 1e3 * (sum(wrapped) - total) / steps, 0))
    summary = dict(model=model_name, batch=batch, threads=threads, steps=steps,
                   step_ms=1e3 * float(np.median(plain)), profiled_step_ms=1e3 * float(np.median(wrapped)),
                   page_faults=float(np.median(faults)), sys_ms=1e3 * float(np.median(sys_s)))
    return rows, summary


def main(argv=None):
    from bitnet.bench.train import BATCH
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", choices=sorted(BATCH), default="lenet-binary")
    ap.add_argument("--batch-size", type=int, default=None)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--top", type=int, default=30, help="rows to print")
    args = ap.parse_args(argv)
    rows, s = profile(args.model, args.batch_size, args.threads, args.steps)
    print(f"{s['model']} training step, batch {s['batch']}, {s['threads']} thread(s), {s['steps']} steps: "
          f"{s['step_ms']:.1f} ms/step (profiled {s['profiled_step_ms']:.1f}), "
          f"{s['page_faults']:.0f} minor page faults and {s['sys_ms']:.1f} ms system time per step")
    print(f"{'where':<34} {'ms/step':>8} {'calls':>6}")
    for name, ms, calls in rows[:args.top]:
        print(f"{name:<34} {ms:>8.2f} {calls:>6.0f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
