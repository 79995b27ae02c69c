"""Where packed models run: the CPU (default) or an NVIDIA GPU through numba.cuda.

The choice is explicit, never a hidden global (docs/design.md, section 3): an argument
(``bitnet.pack(model, device="cuda")``, ``bitnet.load_packed(path, device="cuda")``) or a ``with``
block that sets the default for the calls inside it and restores the previous one on exit::

    with bitnet.device("cuda"):
        gpu_model = bitnet.pack(model)       # weights packed and copied to the GPU once

``numba.cuda`` is imported only when the CUDA backend is asked for, so ``import bitnet`` works on a
machine without CUDA; asking for it there raises ``CudaUnavailableError`` saying what is missing.
The CUDA target is NVIDIA's ``numba-cuda`` package where installed (``pip install "bitnet-bnn[cuda]"``),
else the one built into Numba (deprecated by Numba, still shipped with 0.68); both run the same
kernels. ``NUMBA_ENABLE_CUDASIM=1`` (set before Numba is imported) runs them in Numba's CUDA
simulator, without a GPU: that is how the tests run them.
"""
from __future__ import annotations

import contextlib
import contextvars

DEVICES = ("cpu", "cuda")

_default = contextvars.ContextVar("bitnet_device", default="cpu")


class CudaUnavailableError(RuntimeError):
    """The CUDA backend was asked for on a machine (or Python environment) that cannot run it."""


def current_device() -> str:
    """The device ``pack`` / ``load_packed`` use when they are not given one: "cpu" unless inside a
    ``with bitnet.device(...)`` block."""
    return _default.get()


def resolve_device(device: str | None) -> str:
    """``device`` checked ("cpu" or "cuda"), or the current default when None."""
    if device is None:
        return current_device()
    if device not in DEVICES:
        raise ValueError(f"device must be one of {DEVICES}, got {device!r}")
    return device


@contextlib.contextmanager
def device(name: str):
    """Within the block, packed models are built for ``name`` ("cpu" or "cuda") by default; the
    previous default comes back on exit, also after an exception. Asking for "cuda" checks at once
    that it can run."""
    name = resolve_device(name)
    if name == "cuda":
        cuda_module()
    token = _default.set(name)
    try:
        yield name
    finally:
        _default.reset(token)


def cuda_module():
    """``numba.cuda``, imported now, after checking that it can run kernels here (a GPU and its
    driver, or the simulator); else ``CudaUnavailableError`` with the reason and the fix."""
    try:
        from numba import cuda
    except ImportError as e:  # a Numba without a CUDA target and no numba-cuda package
        raise CudaUnavailableError(f"the CUDA backend needs numba.cuda, which failed to import ({e}); "
                                   'install it with pip install "bitnet-bnn[cuda]"') from None
    if not cuda.is_available():
        raise CudaUnavailableError(
            "the CUDA backend was requested but numba.cuda finds no usable NVIDIA GPU here "
            f"(numba.cuda.is_available() is False{_reason(cuda)}). Run on a machine with an NVIDIA GPU and its "
            'driver (pip install "bitnet-bnn[cuda]" for NVIDIA\'s numba-cuda), use device="cpu", or set '
            "NUMBA_ENABLE_CUDASIM=1 before Python starts to run the kernels in Numba's (slow) CUDA simulator")
    return cuda


def _reason(cuda) -> str:
    """The driver's own complaint, where it has one (its first line)."""
    try:
        cuda.get_current_device()
    except Exception as e:  # noqa: BLE001 - any driver error is the reason we report
        lines = [line.strip(" :") for line in str(e).splitlines() if line.strip(" :")]
        return f"; {type(e).__name__}: {' '.join(lines[:2])}" if lines else f"; {type(e).__name__}"
    return ""
