"""The rounding bounds of the weight gradients that ``bitnet.kernels.sign_tables`` computes, for tests.

Each element of R^T G (R: +-1, M rows) is a sum of the M terms +-G[m, o]. The table lookup computes
it with an error below (M/32 + 6) u sum_m |G[m, o]| (u = 2^-24 for float32; the kernel's
docstring), a float GEMM (any summation order) below M u sum_m |G[m, o]|. Two results of the same
sum, one from each, therefore differ by at most (M + M/32 + 6) u sum_m |G[m, o]|."""
from __future__ import annotations

import numpy as np


def unit(dtype) -> float:
    """The unit roundoff of a float dtype: 2^-24 for float32, 2^-53 for float64."""
    return float(np.finfo(dtype).eps) / 2


def tables_bound(rows: int, abs_sums, dtype=np.float32):
    """Largest error of the table lookup's sums of ``rows`` terms whose magnitudes add to ``abs_sums``."""
    return (rows / 32 + 6) * unit(dtype) * np.asarray(abs_sums, np.float64)


def tables_vs_gemm_bound(rows: int, abs_sums, dtype=np.float32):
    """Largest difference between the table lookup's and a float GEMM's result of the same sums."""
    return (rows + rows / 32 + 6) * unit(dtype) * np.asarray(abs_sums, np.float64)


def conv_weight_grad_bound(g, groups: int, kernel_elems: int, dtype=np.float32):
    """``tables_vs_gemm_bound`` for a convolution's weight gradient (O, C/G, KH, KW), with the output
    gradient ``g`` (N, O, OH, OW): every element of filter o sums N*OH*OW terms of magnitude at most
    |g[n, o, oy, ox]| (the +-1 input, or a 0 of the border). Shaped to broadcast against the gradient."""
    n, o, oh, ow = g.shape
    abs_sums = np.abs(np.asarray(g, np.float64)).sum(axis=(0, 2, 3))
    return tables_vs_gemm_bound(n * oh * ow, abs_sums, dtype)[:, None, None, None]


def dense_weight_grad_bound(g, dtype=np.float32):
    """``tables_vs_gemm_bound`` for a dense layer's weight gradient (O, K), with the output gradient
    ``g`` (N, O): every element of row o sums N terms of magnitude at most |g[n, o]|."""
    abs_sums = np.abs(np.asarray(g, np.float64)).sum(axis=0)
    return tables_vs_gemm_bound(g.shape[0], abs_sums, dtype)[:, None]


def conv_input_grad_bound(g, weight_shape, x_shape, stride, padding, dilation, groups, dtype=np.float32):
    """Largest difference between the input gradients (N, C, H, W) of a binary convolution by table
    lookup (``bitnet.ops.sign_backward``) and by float GEMM, for the output gradient ``g``: an input
    element sums, over the taps and filters that read it, terms of magnitude |g| (+-1 weights), A in
    all (the adjoint convolution of |g| with a weight of ones, in float64). Either path rounds each
    tap's sum over the O_g filters of a group (tables: (O_g/32 + 6) u, GEMM: O_g u, relative to its
    terms' magnitudes) and then adds at most KH*KW tap sums (KH*KW u each side)."""
    from bitnet import Tensor
    from bitnet import functional as F
    x = Tensor(np.zeros(x_shape), requires_grad=True)
    y = F.conv2d(x, Tensor(np.ones(weight_shape)), stride=stride, padding=padding, dilation=dilation, groups=groups)
    y.backward(np.abs(np.asarray(g, np.float64)))
    og, taps = weight_shape[0] // groups, weight_shape[2] * weight_shape[3]
    return (og + og / 32 + 6 + 2 * taps) * unit(dtype) * x.grad


def dense_input_grad_bound(g, dtype=np.float32):
    """``tables_vs_gemm_bound`` for a dense layer's input gradient (N, K) = g w with +-1 w, for the
    output gradient ``g`` (N, O): every element of row n sums O terms of magnitude at most |g[n, o]|."""
    abs_sums = np.abs(np.asarray(g, np.float64)).sum(axis=1)
    return tables_vs_gemm_bound(g.shape[1], abs_sums, dtype)[:, None]
