"""Which implementation of an autograd primitive runs for inputs on "cuda".

``Function.apply`` (bitnet/tensor.py) asks ``place`` where its inputs are. On the CPU it runs the
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

import numpy as np

from bitnet.gpu.arrays import device_of

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


def place(cls, arrays):
    """``(implementation, arrays)`` for a primitive's input arrays (``Function.apply``, when one of them
    is not a NumPy array): ``cls`` and the arrays as they are when none is on the GPU; else
    ``implementation(cls)`` and the arrays with 0-d host arrays (constants) as NumPy scalars. A host
    array of one or more dimensions beside a device array is a ``RuntimeError`` naming both."""
    devices = [device_of(a) for a in arrays]
    if "cuda" not in devices:
        return cls, arrays
    host = [i for i, (a, d) in enumerate(zip(arrays, devices)) if d == "cpu" and np.ndim(a) > 0]
    if host:
        i, j = host[0], devices.index("cuda")
        raise RuntimeError(
            f"{cls.__name__}: its inputs are on different devices: input {j} (shape {arrays[j].shape}) is on cuda, "
            f"input {i} (shape {np.shape(arrays[i])}) on cpu; move them to one device first, e.g. x.to('cuda') "
            "or model.to('cuda')")
    arrays = tuple(a if d == "cuda" else np.asarray(a)[()] for a, d in zip(arrays, devices))
    return implementation(cls), arrays
