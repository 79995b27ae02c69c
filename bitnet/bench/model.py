"""``bitnet bench model``: whole-network inference, packed vs float.

Networks: ``lenet-binary`` (1 x 28 x 28) and ``resnet18-binary`` (CIFAR shape, 3 x 32 x 32), at
batch 1 and 64, with batch-norm statistics from a few training-mode passes (so folding is not
trivial). Methods: ``packed`` (``bitnet.pack(model)``), ``bitnet float`` (the same model in eval
mode on the float path, ``forward_on_bits`` off) and, when PyTorch is installed, ``torch float32``: the float twin of the
architecture in PyTorch (``bitnet.bench.torch_models``), eval mode, ``torch.no_grad``, same threads.
"""
from __future__ import annotations

import importlib.util

import numpy as np

NETWORKS = {"lenet-binary": (1, 28, 28), "resnet18-binary": (3, 32, 32)}
BATCHES = (1, 64)


def _model(name, shape):
    import bitnet
    from bitnet.tensor import Tensor, no_grad
    m = bitnet.models.get(name, seed=0)
    rng = np.random.default_rng(0)
    m.train()
    with no_grad():
        for _ in range(2):
            m(Tensor(rng.standard_normal((16,) + shape).astype(np.float32)))
    return m.eval()


def bench_network(name, batch, rounds, repeats, threads, torch_too=True):
    import bitnet
    from bitnet.bench.timing import records_for, time_methods
    from bitnet.tensor import Tensor, no_grad
    shape = NETWORKS[name]
    model = _model(name, shape)
    packed = bitnet.pack(model, device="cpu")
    for m in model.modules():  # the float path proper: binary layers' forward in float GEMMs
        if hasattr(m, "forward_on_bits"):
            m.forward_on_bits = False
    x = np.random.default_rng(1).standard_normal((batch,) + shape).astype(np.float32)
    xt = Tensor(x)

    def run(m):
        with no_grad():
            return m(xt).data

    # packed vs float outputs: equal up to float rounding, except where a value within rounding of
    # 0 took the other sign before a binary layer (it happens at this scale; docs/benchmarks.md)
    diff = float(np.abs(run(packed) - run(model)).max())
    methods = {"packed": lambda: run(packed), "bitnet float": lambda: run(model)}
    if torch_too and importlib.util.find_spec("torch") is not None:
        import torch
        from bitnet.bench.torch_models import float_twin
        torch.set_num_threads(threads)
        tm = float_twin(name).eval()
        xtorch = torch.from_numpy(x)

        def run_torch():
            with torch.no_grad():
                return tm(xtorch)
        methods["torch float32"] = run_torch
    med = time_methods(methods, rounds, repeats)
    recs = records_for(f"{name} batch {batch}", med, "bitnet float", ratio_key="ratio_vs_bitnet_float",
                       network=name, batch=batch, max_abs_diff_vs_float=diff)
    if "torch float32" in med:
        for r in recs:
            r["ratio_vs_torch"] = med["torch float32"] / r["median_s"]
    return recs
