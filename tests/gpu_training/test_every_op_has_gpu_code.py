"""Every autograd primitive of bitnet runs on "cuda": it has a GPU class registered for it or is written
for both devices. A new Function without either fails here, naming itself (add it to bitnet/gpu/ops/,
or declare ``devices = ("cpu", "cuda")`` where its math is already device-generic)."""
from __future__ import annotations

import importlib
import pkgutil

import bitnet
from bitnet.gpu import dispatch
from bitnet.tensor import Function

# the primitives that stay on the CPU, and why
CPU_ONLY = {
    "bitnet.nn.sync_batchnorm.SyncBatchNormTrain": "distributed training (MPI) runs on the CPU only",
    "bitnet.tensor._FreedGraph": "stands in for a freed graph node; never applied",
}


def _every_function():
    for package in ("bitnet.ops", "bitnet.nn", "bitnet.optim", "bitnet.packed"):
        module = importlib.import_module(package)
        for info in pkgutil.iter_modules(module.__path__):
            importlib.import_module(f"{package}.{info.name}")
    importlib.import_module("bitnet.quantizers")
    importlib.import_module("bitnet.nn.sync_batchnorm")
    seen, todo = set(), list(Function.__subclasses__())
    while todo:
        cls = todo.pop()
        if cls not in seen:
            seen.add(cls)
            todo.extend(cls.__subclasses__())
    gpu_classes = set(dispatch.registered().values())
    return [c for c in seen if c not in gpu_classes and c.__module__.startswith("bitnet.")
            and not c.__module__.startswith("bitnet.gpu.")]


def test_every_primitive_has_gpu_code():
    missing, found = [], 0
    for cls in _every_function():
        name = f"{cls.__module__}.{cls.__qualname__}"
        try:
            dispatch.implementation(cls)
            found += 1
        except NotImplementedError:
            missing.append(name)
    assert sorted(missing) == sorted(CPU_ONLY), f"no GPU code for: {sorted(set(missing) - set(CPU_ONLY))}"
    assert found >= 40
    assert bitnet.ops.elementwise.Add in dispatch.registered()
