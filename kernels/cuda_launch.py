"""The CUDA stream the GPU kernels are launched on: the default stream, or the stream a
``with on_stream(s):`` block names (a context variable, restored on exit, never a global), so that a
packed model can record all of its launches into a CUDA graph (``bitnet.packed.cuda_graph``).
Every kernel wrapper of ``cuda_float``, ``xnor_cuda`` and ``xnor_mma`` launches with
``kernel[grid, block, stream()]``."""
from __future__ import annotations

import contextlib
import contextvars

_stream = contextvars.ContextVar("bitnet_cuda_stream", default=0)


def stream():
    """The stream for the next launch: 0 (the default stream) unless inside ``on_stream``."""
    return _stream.get()


@contextlib.contextmanager
def on_stream(s):
    """Within the block, kernels launch on ``s`` (a ``numba.cuda`` stream)."""
    token = _stream.set(s)
    try:
        yield s
    finally:
        _stream.reset(token)
