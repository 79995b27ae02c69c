"""Which implementation of an autograd primitive runs for inputs on "cuda".

``Function.apply`` (bitnet/tensor.py) finds the device of its inputs. On the CPU it runs the
``Function`` class itself (the Numba kernels). On "cuda" it runs ``implementation(cls)``:

- the class registered for it with ``@implements(cls)`` in a module of ``bitnet.gpu.ops`` (usually
  a subclass that replaces ``forward`` and keeps the CPU ``backward``, or the reverse);
- else ``cls`` itself when it declares ``devices = ("cpu", "cuda")`` in its own body (not inherited:
  a subclass that changes the math must say so again): its forward and backward use only array
  methods and operators, which CuPy arrays have too, so the math is written once.

A primitive with neither raises ``NotImplementedError`` naming it and the way out (the CPU).
"""
from __future__ import annotations

import importlib
import pkgutil

_GPU: dict = {}
_loaded = False


def implements(cpu_cls):
    """Class decorator: register the decorated ``Function`` as ``cpu_cls``'s implementation on "cuda"."""
    def register(gpu_cls):
        if cpu_cls in _GPU and _GPU[cpu_cls] is not gpu_cls:
            raise RuntimeError(f"{cpu_cls.__name__} already has a GPU implementation: {_GPU[cpu_cls].__qualname__}")
        _GPU[cpu_cls] = gpu_cls
        return gpu_cls
    return register


def _load_all() -> None:
    """Import every module of ``bitnet.gpu.ops`` once (each registers its implementations)."""
    global _loaded
    if _loaded:
        return
    import bitnet.gpu.ops as package
    for info in pkgutil.iter_modules(package.__path__):
        importlib.import_module(f"{package.__name__}.{info.name}")
    _loaded = True


def implementation(cls):
    """The ``Function`` class that computes ``cls`` on "cuda" inputs (module docstring)."""
    _load_all()
    gpu = _GPU.get(cls)
    if gpu is not None:
        return gpu
    if "cuda" in cls.__dict__.get("devices", ()):
        return cls
    raise NotImplementedError(
        f"{cls.__name__} has no GPU implementation yet; run this part on the CPU (tensor.to('cpu'), "
        "model.to('cpu'))")


def registered() -> dict:
    """``{cpu class: GPU class}`` for every primitive with a GPU implementation of its own."""
    _load_all()
    return dict(_GPU)
