"""Fused elementwise backward passes of activations (Numba, split across bitnet's threads).

NumPy evaluates ``g * (1 - y * y)`` in three passes with two temporaries; these kernels make one
pass. Inputs are C-contiguous arrays of the same shape, viewed flat.

    tanh:     y = tanh(x)       dx = g * (1 - y^2)
    sigmoid:  y = 1/(1+e^-x)    dx = g * y * (1 - y)
"""
from __future__ import annotations

import numba as nb

from bitnet.kernels.atomics import claim
from bitnet.kernels.threads import parallel

_JIT = dict(nogil=True, cache=True, boundscheck=False, fastmath=False)


@nb.njit(**_JIT)
def _tanh_backward(g, y, out, counter, chunk):
    n = g.size
    lo, hi = claim(counter, chunk, n)
    while lo < n:
        _tanh_run(g[lo:hi], y[lo:hi], out[lo:hi])
        lo, hi = claim(counter, chunk, n)


@nb.njit(**_JIT)
def _sigmoid_backward(g, y, out, counter, chunk):
    n = g.size
    lo, hi = claim(counter, chunk, n)
    while lo < n:
        _sigmoid_run(g[lo:hi], y[lo:hi], out[lo:hi])
        lo, hi = claim(counter, chunk, n)


# The loops of a claimed run are on 1-D views of it, which LLVM vectorizes; on offsets into the whole
# arrays it did not (bitnet.kernels.sign: 7x).

@nb.njit(inline="always")
def _tanh_run(g, y, out):
    for i in range(g.size):
        out[i] = g[i] * (1 - y[i] * y[i])


@nb.njit(inline="always")
def _sigmoid_run(g, y, out):
    for i in range(g.size):
        out[i] = g[i] * y[i] * (1 - y[i])


def tanh_backward(g, y, out):
    """out = g * (1 - y^2) for flat arrays."""
    parallel(_tanh_backward, g.size, g, y, out)


def sigmoid_backward(g, y, out):
    """out = g * y * (1 - y) for flat arrays."""
    parallel(_sigmoid_backward, g.size, g, y, out)
