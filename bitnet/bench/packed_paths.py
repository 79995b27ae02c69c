"""What the packed model's Python machinery costs: one packed model run three ways, alternated.

    python -m bitnet.bench.packed_paths --model lenet-binary --batch 1 64

- ``layer by layer``: each module called as a module (for a Sequential: ``Sequential.forward`` over
  the packed model's modules, no sign chains; for the ResNet: its own forward); the packed layers'
  prepared kernel calls still apply;
- ``chains`` (Sequential models): the sign chains in place of the layers they cover, the other layers
  called as modules (``bitnet.packed.plan._run``);
- ``planned``: the model's own forward (chains and plans: ``bitnet.packed.plan``; for the ResNet one
  plan for the whole network, its blocks included).

Each is timed in CPU time of the calling thread (``time.thread_time``: a busy machine moves it far
less than wall time), the best of ``--rounds`` rounds of ``--calls`` calls, rounds alternating
between the paths; the model runs whole batches (``micro_batch=None``) on ``--threads`` threads.
"""
from __future__ import annotations

import argparse
import time

import numpy as np

SHAPES = {"lenet-binary": (1, 28, 28), "binary-vgg-small": (1, 28, 28), "resnet18-binary": (3, 32, 32)}


def _paths(name, batch):
    import bitnet
    from bitnet.nn.container import Sequential
    from bitnet.packed.plan import _run
    from bitnet.tensor import Tensor
    packed = bitnet.pack(bitnet.models.get(name, seed=0).eval(), micro_batch=None)
    x = Tensor(np.random.default_rng(0).standard_normal((batch,) + SHAPES[name]).astype(np.float32))
    if not isinstance(packed, Sequential):
        return {"layer by layer": lambda: type(packed)._unplanned_forward(packed, x), "planned": lambda: packed(x)}
    mods = list(packed._modules.values())
    return {"layer by layer": lambda: Sequential.forward(packed, x),
            "chains": lambda: _run(packed, x, mods),
            "planned": lambda: packed(x)}


def main(argv=None):
    import numba
    ap = argparse.ArgumentParser(prog="python -m bitnet.bench.packed_paths", description=__doc__.split("\n")[0])
    ap.add_argument("--model", choices=sorted(SHAPES), default="lenet-binary")
    ap.add_argument("--batch", type=int, nargs="+", default=[1, 64])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--calls", type=int, default=0, help="calls per round (default: about 0.2 s of work)")
    args = ap.parse_args(argv)
    previous = numba.get_num_threads()
    numba.set_num_threads(args.threads)
    try:
        return _measure(args)
    finally:
        numba.set_num_threads(previous)


def _measure(args):
    """``{batch: {path: seconds per forward}}``, printed as it goes."""
    from bitnet.tensor import no_grad
    results = {}
    print(f"{args.model}, {args.threads} thread(s): CPU time per forward of the calling thread, best of "
          f"{args.rounds} alternating rounds")
    with no_grad():
        for batch in args.batch:
            paths = _paths(args.model, batch)
            calls = {}
            for name, fn in paths.items():
                fn(), fn()
                t = time.thread_time()
                fn()
                calls[name] = args.calls or max(3, int(0.2 / max(time.thread_time() - t, 1e-5)))
            best = {name: float("inf") for name in paths}
            for _ in range(args.rounds):
                for name, fn in paths.items():
                    t = time.thread_time()
                    for _ in range(calls[name]):
                        fn()
                    best[name] = min(best[name], (time.thread_time() - t) / calls[name])
            base = best["layer by layer"]
            cells = ", ".join(f"{name} {best[name] * 1e3:.3f} ms ({base / best[name]:.2f}x)" for name in paths)
            print(f"  batch {batch}: {cells}")
            results[batch] = best
    return results


if __name__ == "__main__":
    main()
