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


def check_device(device, what: str = "", none: bool = False):
    """``device`` itself when it is "cpu" or "cuda" (or None, where ``none`` allows it), else a
    ``ValueError`` saying, after ``what`` (the caller's name), what was received and what is allowed."""
    if device in DEVICES or (none and device is None):
        return device
    allowed = ("None, " if none else "") + "'cpu' or 'cuda'"
    raise ValueError(f"{what + ': ' if what else ''}device must be {allowed}, got {device!r}")


@contextlib.contextmanager
def device(name: str):
    """Within the block, packed models are built for ``name`` ("cpu" or "cuda") by default, and so
    are the tensors of ``bitnet.tensor`` and the factories (``zeros``, ``randn`` ...); the previous
    default comes back on exit, also after an exception. Asking for "cuda" checks at once that
    numba.cuda can run (not inside ``bitnet.gpu.arrays.emulate()``)."""
    name = resolve_device(name)
    if name == "cuda" and not _emulating():
        cuda_module()
    token = _default.set(name)
    try:
        yield name
    finally:
        _default.reset(token)


def _emulating() -> bool:
    """Inside ``bitnet.gpu.arrays.emulate()``: "cuda" tensors are emulated, numba.cuda is not needed."""
    from bitnet.gpu import arrays
    return arrays._override.get() is not None


def cuda_module():
    """``numba.cuda``, imported now, after checking that it can run kernels here (a GPU and its
    driver, or the simulator); else ``CudaUnavailableError`` with the reason and the fix."""
    try:
        from numba import cuda
    except ImportError as e:  # a Numba without a CUDA target and no numba-cuda package
        raise CudaUnavailableError(f"the CUDA backend needs numba.cuda, which failed to import ({e}); "
                                   'install it with pip install "bitnet-bnn[cuda]"') from None
    problem = incompatible_numba_cuda()
    if problem:
        raise CudaUnavailableError(problem)
    if not cuda.is_available():
        raise CudaUnavailableError(
            "the CUDA backend was requested but numba.cuda finds no usable NVIDIA GPU here "
            f"(numba.cuda.is_available() is False{_reason(cuda)}). Run on a machine with an NVIDIA GPU and its "
            'driver (pip install "bitnet-bnn[cuda]" for NVIDIA\'s numba-cuda), use device="cpu", or set '
            "NUMBA_ENABLE_CUDASIM=1 before Python starts to run the kernels in Numba's (slow) CUDA simulator")
    return cuda


# numba-cuda releases that call np.row_stack, which NumPy 2.5 removed: their first kernel compile
# fails with AttributeError (numba_cuda/numba/cuda/np/arrayobj.py). The newest at the time of writing.
ROW_STACK_NUMBA_CUDA = (0, 30, 4)


def _version(text):
    parts = []
    for p in text.split(".")[:3]:
        digits = "".join(c for c in p if c.isdigit())
        parts.append(int(digits) if digits else 0)
    return tuple(parts + [0] * (3 - len(parts)))


def incompatible_numba_cuda(numpy_module=None, numba_cuda_version=None) -> str:
    """Why the installed numba-cuda cannot compile kernels with the installed NumPy ("" if it can):
    numba-cuda up to ``ROW_STACK_NUMBA_CUDA`` with a NumPy without ``row_stack`` (2.5 and later)."""
    import numpy
    np_mod = numpy if numpy_module is None else numpy_module
    if hasattr(np_mod, "row_stack"):
        return ""
    if numba_cuda_version is None:
        from importlib.metadata import PackageNotFoundError, version
        try:
            numba_cuda_version = version("numba-cuda")
        except PackageNotFoundError:
            return ""  # Numba's own CUDA target
    if _version(numba_cuda_version) > ROW_STACK_NUMBA_CUDA:
        return ""
    return (f"numba-cuda {numba_cuda_version} cannot compile kernels with NumPy {np_mod.__version__} (it calls "
            "np.row_stack, which NumPy 2.5 removed); install a NumPy before 2.5 with pip install 'numpy<2.5' "
            "(pip install 'bitnet-bnn[cuda]' does), or a numba-cuda release newer than "
            + ".".join(map(str, ROW_STACK_NUMBA_CUDA)))


def _reason(cuda) -> str:
    """The driver's own complaint, where it has one (its first line)."""
    try:
        cuda.get_current_device()
    except Exception as e:  # noqa: BLE001 - any driver error is the reason we report
        lines = [line.strip(" :") for line in str(e).splitlines() if line.strip(" :")]
        return f"; {type(e).__name__}: {' '.join(lines[:2])}" if lines else f"; {type(e).__name__}"
    return ""
