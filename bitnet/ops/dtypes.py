"""The input dtypes of bitnet's float operations: one policy, checked in one place.

A *float op* is a ``Function`` whose class sets ``float_inputs`` to the name it reports in errors
(``Conv2d.float_inputs = "conv2d"``): convolution, matmul (so ``Dense`` / ``F.linear``), max and
average pooling, batch norm, tanh, sigmoid, exp, log, log-softmax / softmax, cross-entropy and
dropout. ``Function.apply`` passes every input array of such an op through ``float_operand``:

- float32 and float64 arrays go through untouched (the same array: no copy; the check reads the
  dtype's type code only, so the fast paths cost nothing more);
- integer and bool arrays (uint8 images, int64 from ``Tensor([1, 2])``) are computed in float32,
  bitnet's training dtype: ``nn.AvgPool2d(2)(Tensor(ints))`` averages exactly as on the same values
  in float32 and returns float32 (integers beyond 2**24 round to the nearest float32, as they would
  in ``x.astype(np.float32)``). This is what the quantizers (``QConv2d``, ``QDense``, ...) did
  already; integer tensors never require gradients, so no gradient is lost by the conversion;
- every other dtype (float16, longdouble, complex, object, strings, ...) is a ``TypeError`` that says
  what was received, what is supported, and to convert with ``x.astype(np.float32)``: the kernels
  are compiled for float32 and float64 only, and silently computing float16 in another precision
  would hide the cost and change the results.

Operations that are exact on integers keep NumPy's rules: arithmetic (``+ - * / **``; ``/`` of
integers gives float64 as in NumPy), ``relu``, ``hardtanh`` / ``clip``, ``where``, reductions
(sum, mean, max, ...), comparisons and shape operations.
"""
from __future__ import annotations

import numpy as np

SUPPORTED = "float32 or float64"
_FAST = "fd"  # dtype.char of float32 and float64 (any byte order)


def float_operand(a, op: str, index: int = 0):
    """``a`` itself when it is float32 / float64; a float32 copy of an integer or bool array; else a
    ``TypeError`` naming ``op`` (module docstring). ``a`` is a NumPy array, a NumPy scalar or a
    device array (anything with ``.dtype`` and ``.astype``); ``index`` is its position among the op's
    inputs, for the message."""
    dtype = a.dtype
    if dtype.char in _FAST:
        return a
    if dtype.kind in "biu":
        return a.astype(np.float32)
    where = f"operand {index}" if index else "the input"
    raise TypeError(
        f"{op}: {where} has dtype {dtype} (shape {tuple(a.shape)}), but {op} computes in {SUPPORTED} only "
        f"(integer and bool inputs are converted to float32); convert it first, e.g. x.astype(np.float32)")


def float_operands(arrays: tuple, op: str) -> tuple:
    """``arrays`` (a tuple) with ``float_operand`` applied to each; the same tuple when every array is
    float32 / float64 already."""
    for a in arrays:
        if a.dtype.char not in _FAST:
            return tuple(float_operand(a, op, i) for i, a in enumerate(arrays))
    return arrays
