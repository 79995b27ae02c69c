"""The float layers between binary layers of packed models, on NVIDIA GPUs (numba.cuda).

Importing this module imports ``numba.cuda``: only the CUDA backend does. All arrays are numba
device arrays, float32 and C-contiguous; every wrapper takes a caller-allocated ``out``, checks
shapes and dtypes (ValueError naming what it got and what it expected; TypeError for a host
array) and returns ``out``. Kernels compile lazily, once per argument types. Shapes are NCHW.

- ``sgemm_nt(a, b, out, bias=None)``: ``out[m, n] = sum_k a[m, k] * b[n, k] (+ bias[n])``, float32
  accumulation (fused multiply-adds on a GPU, so within K-term float32 rounding of NumPy).
- ``im2col_nchw``: ``out[(n*OH + oy)*OW + ox, (c*KH + i)*KW + j] = x[n, c, oy*SH - PH + i*DH,
  ox*SW - PW + j*DW]`` (0 outside the input); ``rows_to_nchw``: ``out[n, c, oy, ox] =
  rows[(n*OH + oy)*OW + ox, c]`` (``nchw_to_rows`` is its inverse); ``conv2d_nchw`` is the two around ``sgemm_nt`` with the weight
  ``w2d = weight.reshape(O, C*KH*KW)`` (``bitnet.ops.conv``'s cross-correlation, groups 1).
- ``channel_affine_nchw``: ``out = fl(fl(x * scale[c]) + shift[c])``: the product is rounded
  before the addition (no fused multiply-add), so the result is NumPy's float32 bit for bit.
- ``unary``: tanh, relu ``max(x, 0)``, hardtanh ``min(max(x, lo), hi)``, sign (-1 where x < 0,
  else +1: zero and NaN give +1), identity. ``add``: ``a + b``.
- Pooling as ``bitnet.kernels.pooling`` (floor or ceil mode, padding at most half the window): max
  over the window clipped to the input (padding never wins; a NaN in the window gives NaN, as
  PyTorch); average = window sum / D with PyTorch's divisor D (count_include_pad: the window clipped
  to the padded input, KH*KW in floor mode; else the input elements in the window), summed in
  float64 in the CPU kernel's order and multiplied by 1/D, so the results are the same bits.
  Global averages sum each map in float64 and divide by H*W.
"""
from __future__ import annotations

import math

import numba as nb
import numpy as np
from numba import config, cuda, float32, float64

from bitnet.kernels.cuda_launch import stream
from bitnet.kernels.im2col import conv_output_size
from bitnet.kernels.pooling import pool_output_size
from bitnet.ops.dims import pair

BLOCK_1D = 256      # threads per block of the element-wise kernels (grid-stride loops)
MAX_BLOCKS = 4096   # enough to fill any current GPU; grid-stride loops cover the rest
TM, TN = 16, 16     # GEMM thread block (TN along the output columns, TM along the rows)
RM, RN = 4, 4       # each GEMM thread computes RM x RN outputs
BM, BN, BK = TM * RM, TN * RN, 16  # GEMM tile: 64 rows x 64 columns, K walked 16 at a time
_A_TILE, _B_TILE, _ACC = (BK, BM + 1), (BK, BN + 1), (RM, RN)  # +1: fewer bank conflicts on stores

IDENTITY, RELU, TANH, HARDTANH, SIGN = range(5)
UNARY_OPS = {"identity": IDENTITY, "relu": RELU, "tanh": TANH, "hardtanh": HARDTANH, "sign": SIGN}

# mul_rn(a, b): a float32 product rounded on its own, which the compiler may not fuse with the next
# addition (NVVM contracts a * b + c into one FMA by default, rounding once: not the CPU's result).
# The binary kernels' epilogue (bitnet.kernels.xnor_cuda) uses it too.
if config.ENABLE_CUDASIM:  # no libdevice in the simulator; its float32 scalars round each operation
    def mul_rn(a, b):
        return a * b
else:
    from numba.cuda.libdevice import fmul_rn as mul_rn


# -- kernels (plain Python functions, kept for numba.cuda.compile_ptx; launched via cuda.jit) ----
# No builtin min/max and no cuda.jit(device=True) helpers: numba compiles those through a dispatcher
# that asks the current device for its compute capability, so compile_ptx fails without a GPU driver.
# Typed constants (float32(0.0), float64(0.0)): the simulator runs these functions as Python with
# NumPy 2 promotion, where ``0.0 + float32`` stays float32, while compiled code types ``0.0`` as float64.

def _sgemm_nt_kernel(a, b, bias, has_bias, out):
    """Block (TN, TM) computes out[BM*bx : +BM, BN*by : +BN]; thread (tx, ty) the RM x RN outputs
    at rows ty + TM*i and columns tx + TN*j (neighbouring threads write neighbouring columns). Both
    operands are staged K-major in shared memory, zero beyond the matrix edges."""
    m_dim, k_dim = a.shape
    n_dim = b.shape[0]
    a_s = cuda.shared.array(_A_TILE, float32)  # a_s[kk, r] = a[m0 + r, k0 + kk]
    b_s = cuda.shared.array(_B_TILE, float32)  # b_s[kk, c] = b[n0 + c, k0 + kk]
    acc = cuda.local.array(_ACC, float32)
    a_r = cuda.local.array(RM, float32)
    b_r = cuda.local.array(RN, float32)
    tx, ty = cuda.threadIdx.x, cuda.threadIdx.y
    tid = ty * TN + tx
    m0, n0 = cuda.blockIdx.x * BM, cuda.blockIdx.y * BN
    zero = float32(0.0)
    for i in range(RM):
        for j in range(RN):
            acc[i, j] = zero
    for k0 in range(0, k_dim, BK):
        for t in range(tid, BM * BK, TM * TN):  # consecutive threads read consecutive k
            r, kk = t // BK, t % BK
            inside = m0 + r < m_dim and k0 + kk < k_dim
            a_s[kk, r] = a[m0 + r, k0 + kk] if inside else zero
        for t in range(tid, BN * BK, TM * TN):
            c, kk = t // BK, t % BK
            inside = n0 + c < n_dim and k0 + kk < k_dim
            b_s[kk, c] = b[n0 + c, k0 + kk] if inside else zero
        cuda.syncthreads()
        for kk in range(BK):
            for i in range(RM):
                a_r[i] = a_s[kk, ty + TM * i]
            for j in range(RN):
                b_r[j] = b_s[kk, tx + TN * j]
            for i in range(RM):
                for j in range(RN):
                    acc[i, j] += a_r[i] * b_r[j]
        cuda.syncthreads()
    for i in range(RM):
        row = m0 + ty + TM * i
        if row < m_dim:
            for j in range(RN):
                col = n0 + tx + TN * j
                if col < n_dim:
                    v = acc[i, j]
                    if has_bias:
                        v += bias[col]
                    out[row, col] = v


def _im2col_kernel(x, kh, kw, sh, sw, ph, pw, dh, dw, oh, ow, out):
    """One thread per element of out (N*OH*OW, C*KH*KW); consecutive threads write consecutive columns."""
    height, width = x.shape[2], x.shape[3]
    ck = out.shape[1]
    start, step = cuda.grid(1), cuda.gridsize(1)
    for idx in range(start, out.shape[0] * ck, step):
        r, col = idx // ck, idx % ck
        ox, rest = r % ow, r // ow
        oy, n = rest % oh, rest // oh
        j, rest = col % kw, col // kw
        i, c = rest % kh, rest // kh
        iy, ix = oy * sh - ph + i * dh, ox * sw - pw + j * dw
        v = float32(0.0)
        if 0 <= iy < height and 0 <= ix < width:
            v = x[n, c, iy, ix]
        out[r, col] = v


def _rows_to_nchw_kernel(rows, out):
    """out[n, c, oy, ox] = rows[(n*OH + oy)*OW + ox, c]; one thread per output element."""
    channels, oh, ow = out.shape[1], out.shape[2], out.shape[3]
    p = oh * ow
    start, step = cuda.grid(1), cuda.gridsize(1)
    for idx in range(start, out.shape[0] * channels * p, step):
        pix, rest = idx % p, idx // p
        c, n = rest % channels, rest // channels
        out[n, c, pix // ow, pix % ow] = rows[n * p + pix, c]


def _nchw_to_rows_kernel(x, out):
    """out[(n*H + y)*W + x, c] = x[n, c, y, x] (channels-last rows); one thread per output element,
    neighbouring threads write neighbouring channels."""
    channels, h, w = x.shape[1], x.shape[2], x.shape[3]
    start, step = cuda.grid(1), cuda.gridsize(1)
    for idx in range(start, x.shape[0] * channels * h * w, step):
        row, c = idx // channels, idx % channels
        n, pix = row // (h * w), row % (h * w)
        out[row, c] = x[n, c, pix // w, pix % w]


def _channel_affine_kernel(x, scale, shift, channels, hw, out):
    """Flat views: out[i] = fl(fl(x[i] * scale[c]) + shift[c]) with c = (i // (H*W)) % C."""
    start, step = cuda.grid(1), cuda.gridsize(1)
    for i in range(start, x.shape[0], step):
        c = (i // hw) % channels
        out[i] = mul_rn(x[i], scale[c]) + shift[c]


def _unary_kernel(x, op, lo, hi, out):
    """Flat views: out[i] = f(x[i]) for the op code (IDENTITY, RELU, TANH, HARDTANH, SIGN)."""
    zero, one = float32(0.0), float32(1.0)
    start, step = cuda.grid(1), cuda.gridsize(1)
    for i in range(start, x.shape[0], step):
        v = x[i]
        if op == RELU:
            v = v if v > zero else zero
        elif op == TANH:
            v = math.tanh(v)
        elif op == HARDTANH:
            v = lo if v < lo else (hi if v > hi else v)
        elif op == SIGN:
            v = -one if v < zero else one  # NaN is not below 0: +1, as bit = (x < 0)
        out[i] = v


def _add_kernel(a, b, out):
    """Flat views: out[i] = a[i] + b[i]."""
    start, step = cuda.grid(1), cuda.gridsize(1)
    for i in range(start, a.shape[0], step):
        out[i] = a[i] + b[i]


@nb.njit(inline="always")  # inlined into both pooling kernels (no device function: see above)
def _pool_window(idx, channels, height, width, oh, ow, kh, kw, sh, sw, ph, pw):
    """Output element ``idx`` of (N, C, OH, OW) as (n, c, oy, ox), its window's rows [y0, y1) and
    columns [x0, x1) clipped to the input, and the number of its positions inside the padded input
    (the average's divisor with count_include_pad)."""
    ox, rest = idx % ow, idx // ow
    oy, rest = rest % oh, rest // oh
    c, n = rest % channels, rest // channels
    y0, x0 = oy * sh - ph, ox * sw - pw
    y1, x1 = y0 + kh, x0 + kw
    py1, px1 = y1 if y1 < height + ph else height + ph, x1 if x1 < width + pw else width + pw
    padded = (py1 - y0) * (px1 - x0)
    y0, x0 = y0 if y0 > 0 else 0, x0 if x0 > 0 else 0
    y1, x1 = y1 if y1 < height else height, x1 if x1 < width else width
    return n, c, oy, ox, y0, y1, x0, x1, padded


def _maxpool_kernel(x, kh, kw, sh, sw, ph, pw, out):
    """One thread per output: the maximum of the window clipped to the input, NaN if it holds one
    (``v != v``), as on the CPU."""
    channels, height, width = x.shape[1], x.shape[2], x.shape[3]
    oh, ow = out.shape[2], out.shape[3]
    start, step = cuda.grid(1), cuda.gridsize(1)
    for idx in range(start, out.shape[0] * channels * oh * ow, step):
        n, c, oy, ox, y0, y1, x0, x1, _ = _pool_window(idx, channels, height, width, oh, ow, kh, kw, sh, sw, ph, pw)
        best = x[n, c, y0, x0]
        for iy in range(y0, y1):
            for ix in range(x0, x1):
                v = x[n, c, iy, ix]
                if v > best or v != v:
                    best = v
        out[n, c, oy, ox] = best


def _avgpool_kernel(x, kh, kw, sh, sw, ph, pw, count_include_pad, out):
    """One thread per output: float64 sum of the clipped window in scan order, times 1/D."""
    channels, height, width = x.shape[1], x.shape[2], x.shape[3]
    oh, ow = out.shape[2], out.shape[3]
    start, step = cuda.grid(1), cuda.gridsize(1)
    for idx in range(start, out.shape[0] * channels * oh * ow, step):
        n, c, oy, ox, y0, y1, x0, x1, padded = _pool_window(idx, channels, height, width, oh, ow, kh, kw, sh, sw,
                                                            ph, pw)
        scale = float64(1.0) / (padded if count_include_pad else (y1 - y0) * (x1 - x0))
        acc = float64(0.0)
        for iy in range(y0, y1):
            for ix in range(x0, x1):
                acc += x[n, c, iy, ix]
        out[n, c, oy, ox] = acc * scale


def _global_avgpool_kernel(x, channels_last, out):
    """out[n, c] = (float64 sum over the H*W positions p of map c) / (H*W), p in row-major order; ``x``
    is (N, C, H*W), or (N, H*W, C) when ``channels_last`` (then neighbouring threads read neighbouring
    channels). One thread per (n, c)."""
    channels = out.shape[1]
    hw = x.shape[1] if channels_last else x.shape[2]
    start, step = cuda.grid(1), cuda.gridsize(1)
    for idx in range(start, x.shape[0] * channels, step):
        n, c = idx // channels, idx % channels
        acc = float64(0.0)
        for p in range(hw):
            acc += x[n, p, c] if channels_last else x[n, c, p]
        out[n, c] = acc / hw


_F1, _F2, _F4, _I = "float32[::1]", "float32[:, ::1]", "float32[:, :, :, ::1]", "int64"
# (name, Python function, the argument types the wrappers launch it with) for numba.cuda.compile_ptx
KERNELS = (
    ("sgemm_nt", _sgemm_nt_kernel, f"void({_F2}, {_F2}, {_F1}, boolean, {_F2})"),
    ("im2col", _im2col_kernel, f"void({_F4}, {', '.join([_I] * 10)}, {_F2})"),
    ("rows_to_nchw", _rows_to_nchw_kernel, f"void({_F2}, {_F4})"),
    ("nchw_to_rows", _nchw_to_rows_kernel, f"void({_F4}, {_F2})"),
    ("channel_affine", _channel_affine_kernel, f"void({_F1}, {_F1}, {_F1}, {_I}, {_I}, {_F1})"),
    ("unary", _unary_kernel, f"void({_F1}, {_I}, float32, float32, {_F1})"),
    ("add", _add_kernel, f"void({_F1}, {_F1}, {_F1})"),
    ("maxpool", _maxpool_kernel, f"void({_F4}, {', '.join([_I] * 6)}, {_F4})"),
    ("avgpool", _avgpool_kernel, f"void({_F4}, {', '.join([_I] * 6)}, boolean, {_F4})"),
    ("global_avgpool", _global_avgpool_kernel, f"void(float32[:, :, ::1], boolean, {_F2})"),
)
_JIT = {name: cuda.jit(fn) for name, fn, _ in KERNELS}


# -- launch wrappers ------------------------------------------------------------------------------

def _check(arr, what, shape=None, ndim=None):
    """``arr`` must be a float32 C-contiguous device array, of ``shape`` / ``ndim`` dimensions if given."""
    if not hasattr(arr, "copy_to_host"):  # numba device arrays, the simulator's included
        raise TypeError(f"{what}: expected a float32 CUDA device array, got {type(arr).__name__}; "
                        "copy it with numba.cuda.to_device")
    if shape is not None:
        want = f" of shape {tuple(shape)}"
    else:
        want = f" with {ndim} dimensions" if ndim is not None else ""
    if (arr.dtype != np.float32 or not arr.is_c_contiguous()
            or (shape is not None and tuple(arr.shape) != tuple(shape))
            or (ndim is not None and arr.ndim != ndim)):
        layout = "C-contiguous" if arr.is_c_contiguous() else "not C-contiguous"
        raise ValueError(f"{what}: expected a C-contiguous float32 array{want}, got {arr.dtype} "
                         f"{tuple(arr.shape)} ({layout})")


def _blocks(total: int) -> int:
    return max(1, min(-(-total // BLOCK_1D), MAX_BLOCKS))


def _flat(arr):
    return arr.reshape(arr.size)


def _pool_geometry(x, kernel_size, stride, padding, name, ceil_mode=False):
    """As ``bitnet.ops.pool``: stride None = the window; floor or ceil mode; padding at most half the window."""
    kh, kw = pair(kernel_size, "kernel_size")
    sh, sw = (kh, kw) if stride is None else pair(stride, "stride")
    ph, pw = pair(padding, "padding")
    if min(kh, kw, sh, sw) < 1 or min(ph, pw) < 0:
        raise ValueError(f"{name}: need kernel_size >= 1, stride >= 1, padding >= 0; got "
                         f"{(kh, kw)}, {(sh, sw)}, {(ph, pw)}")
    if ph > kh // 2 or pw > kw // 2:
        raise ValueError(f"{name}: padding {(ph, pw)} must be at most half the kernel size {(kh, kw)}")
    _check(x, f"{name} x", ndim=4)
    oh = pool_output_size(x.shape[2], kh, sh, ph, ceil_mode)
    ow = pool_output_size(x.shape[3], kw, sw, pw, ceil_mode)
    return (kh, kw, sh, sw, ph, pw), (x.shape[0], x.shape[1], oh, ow)


def _conv_geometry(x_shape, kernel_size, stride, padding, dilation, name):
    (kh, kw), (sh, sw) = pair(kernel_size, "kernel_size"), pair(stride, "stride")
    (ph, pw), (dh, dw) = pair(padding, "padding"), pair(dilation, "dilation")
    if min(kh, kw, sh, sw, dh, dw) < 1 or min(ph, pw) < 0:
        raise ValueError(f"{name}: need kernel_size, stride, dilation >= 1 and padding >= 0; got "
                         f"{(kh, kw)}, {(sh, sw)}, {(dh, dw)}, {(ph, pw)}")
    oh = conv_output_size(x_shape[2], kh, sh, ph, dh)
    ow = conv_output_size(x_shape[3], kw, sw, pw, dw)
    return (kh, kw, sh, sw, ph, pw, dh, dw), oh, ow


def sgemm_nt(a, b, out, bias=None):
    """``out[m, n] = sum_k a[m, k] * b[n, k] (+ bias[n])`` for a (M, K), b (N, K), out (M, N)."""
    _check(a, "sgemm_nt a (M, K)", ndim=2)
    _check(b, "sgemm_nt b (N, K)", ndim=2)
    (m, k), n = a.shape, b.shape[0]
    if b.shape[1] != k:
        raise ValueError(f"sgemm_nt: a {tuple(a.shape)} and b {tuple(b.shape)} need the same K (axis 1)")
    _check(out, "sgemm_nt out (M, N)", shape=(m, n))
    if bias is not None:
        _check(bias, "sgemm_nt bias (N,)", shape=(n,))
    if m == 0 or n == 0:
        return out
    grid = (max(1, -(-m // BM)), max(1, -(-n // BN)))
    _JIT["sgemm_nt"][grid, (TN, TM), stream()](a, b, out[0] if bias is None else bias, bias is not None, out)
    return out


def im2col_nchw(x, kernel_size, stride, padding, dilation, out):
    """x (N, C, H, W) -> out (N*OH*OW, C*KH*KW): ``out[(n*OH + oy)*OW + ox, (c*KH + i)*KW + j] =
    x[n, c, oy*SH - PH + i*DH, ox*SW - PW + j*DW]``, 0 where that lies in the padding."""
    _check(x, "im2col_nchw x (N, C, H, W)", ndim=4)
    geom, oh, ow = _conv_geometry(x.shape, kernel_size, stride, padding, dilation, "im2col_nchw")
    n, c = x.shape[:2]
    _check(out, "im2col_nchw out (N*OH*OW, C*KH*KW)", shape=(n * oh * ow, c * geom[0] * geom[1]))
    _JIT["im2col"][_blocks(out.size), BLOCK_1D, stream()](x, *geom, oh, ow, out)
    return out


def rows_to_nchw(rows, n, oh, ow, out):
    """rows (N*OH*OW, C) -> out (N, C, OH, OW): ``out[n, c, oy, ox] = rows[(n*OH + oy)*OW + ox, c]``."""
    _check(rows, "rows_to_nchw rows (N*OH*OW, C)", ndim=2)
    if rows.shape[0] != n * oh * ow:
        raise ValueError(f"rows_to_nchw: rows has {rows.shape[0]} rows, expected N*OH*OW = {n * oh * ow}")
    _check(out, "rows_to_nchw out (N, C, OH, OW)", shape=(n, rows.shape[1], oh, ow))
    _JIT["rows_to_nchw"][_blocks(out.size), BLOCK_1D, stream()](rows, out)
    return out


def nchw_to_rows(x, out):
    """x (N, C, H, W) -> out (N*H*W, C): ``out[(n*H + y)*W + x, c] = x[n, c, y, x]`` (channels-last)."""
    _check(x, "nchw_to_rows x (N, C, H, W)", ndim=4)
    n, c, h, w = x.shape
    _check(out, "nchw_to_rows out (N*H*W, C)", shape=(n * h * w, c))
    _JIT["nchw_to_rows"][_blocks(out.size), BLOCK_1D, stream()](x, out)
    return out


def conv2d_workspace_size(x_shape, out_channels, kernel_size, stride, padding, dilation) -> int:
    """float32 elements of the ``workspace`` that ``conv2d_nchw`` needs: the im2col matrix
    (N*OH*OW, C*KH*KW) followed by the GEMM result (N*OH*OW, O)."""
    (kh, kw, *_), oh, ow = _conv_geometry(x_shape, kernel_size, stride, padding, dilation, "conv2d_nchw")
    rows = x_shape[0] * oh * ow
    return rows * (x_shape[1] * kh * kw + out_channels)


def conv2d_nchw(x, w2d, bias, kernel_size, stride, padding, dilation, out, workspace=None, groups=1):
    """``out[n, o, oy, ox] = bias[o] + sum_{c,i,j} w[o, c, i, j] * x[n, c, oy*SH - PH + i*DH, ox*SW -
    PW + j*DW]`` (zero padding) with ``w2d = w.reshape(O, C*KH*KW)``: im2col, sgemm_nt, rows_to_nchw.
    ``workspace``: None (allocated here) or a flat float32 device array of at least
    ``conv2d_workspace_size(...)`` elements. Only groups=1."""
    if groups != 1:
        raise ValueError(f"conv2d_nchw supports groups=1 only, got groups={groups}")
    _check(x, "conv2d_nchw x (N, C, H, W)", ndim=4)
    n, c = x.shape[:2]
    (kh, kw, *_), oh, ow = _conv_geometry(x.shape, kernel_size, stride, padding, dilation, "conv2d_nchw")
    _check(w2d, "conv2d_nchw w2d (O, C*KH*KW)", ndim=2)
    o = w2d.shape[0]
    if w2d.shape[1] != c * kh * kw:
        raise ValueError(f"conv2d_nchw: w2d must be (O, C*KH*KW) = (O, {c * kh * kw}) for {c} input "
                         f"channels and a {kh}x{kw} kernel, got {tuple(w2d.shape)}")
    if bias is not None:
        _check(bias, "conv2d_nchw bias (O,)", shape=(o,))
    _check(out, "conv2d_nchw out (N, O, OH, OW)", shape=(n, o, oh, ow))
    p, ck = n * oh * ow, c * kh * kw
    need = p * (ck + o)
    if workspace is None:
        workspace = cuda.device_array(need, np.float32)
    _check(workspace, "conv2d_nchw workspace", ndim=1)
    if workspace.size < need:
        raise ValueError(f"conv2d_nchw: workspace has {workspace.size} elements, needs at least {need}")
    cols = workspace[:p * ck].reshape(p, ck)
    rows = workspace[p * ck:need].reshape(p, o)
    im2col_nchw(x, kernel_size, stride, padding, dilation, cols)
    sgemm_nt(cols, w2d, rows, bias)
    return rows_to_nchw(rows, n, oh, ow, out)


def channel_affine_nchw(x, scale, shift, out):
    """``out[n, c, h, w] = x[n, c, h, w] * scale[c] + shift[c]`` (product rounded, then the sum;
    batch norm in eval mode with scale = gamma / sqrt(var + eps), shift = beta - mean * scale)."""
    _check(x, "channel_affine_nchw x (N, C, H, W)", ndim=4)
    c = x.shape[1]
    _check(scale, "channel_affine_nchw scale (C,)", shape=(c,))
    _check(shift, "channel_affine_nchw shift (C,)", shape=(c,))
    _check(out, "channel_affine_nchw out", shape=x.shape)
    _JIT["channel_affine"][_blocks(x.size), BLOCK_1D, stream()](_flat(x), scale, shift, c, x.shape[2] * x.shape[3],
                                                       _flat(out))
    return out


def unary(x, op, out, **params):
    """``out = f(x)`` elementwise on any shape: "identity", "relu" max(x, 0), "tanh",
    "hardtanh" min(max(x, min_val), max_val) (params min_val=-1, max_val=1), "sign" (-1 where
    x < 0, else +1: zero and NaN give +1)."""
    if op not in UNARY_OPS:
        raise ValueError(f"unary: op must be one of {sorted(UNARY_OPS)}, got {op!r}")
    allowed = {"min_val", "max_val"} if op == "hardtanh" else set()
    if set(params) - allowed:
        raise ValueError(f"unary: op {op!r} takes parameters {sorted(allowed)}, got {sorted(params)}")
    lo, hi = float(params.get("min_val", -1.0)), float(params.get("max_val", 1.0))
    if lo > hi:
        raise ValueError(f"unary: hardtanh needs min_val <= max_val, got {lo} > {hi}")
    _check(x, "unary x")
    _check(out, "unary out", shape=x.shape)
    _JIT["unary"][_blocks(x.size), BLOCK_1D, stream()](_flat(x), UNARY_OPS[op], np.float32(lo), np.float32(hi),
                                              _flat(out))
    return out


def add(a, b, out):
    """``out = a + b`` elementwise, all three of the same shape."""
    _check(a, "add a")
    _check(b, "add b", shape=a.shape)
    _check(out, "add out", shape=a.shape)
    _JIT["add"][_blocks(a.size), BLOCK_1D, stream()](_flat(a), _flat(b), _flat(out))
    return out


def maxpool2d_nchw(x, kernel_size, stride, padding, out, ceil_mode=False):
    """``out[n, c, oy, ox] = max_{i<KH, j<KW} x[n, c, oy*SH - PH + i, ox*SW - PW + j]`` over the
    positions inside the input (padding is -inf; NaN propagates); floor mode unless ``ceil_mode``;
    stride None = the window."""
    geom, shape = _pool_geometry(x, kernel_size, stride, padding, "maxpool2d_nchw", ceil_mode)
    _check(out, "maxpool2d_nchw out (N, C, OH, OW)", shape=shape)
    _JIT["maxpool"][_blocks(out.size), BLOCK_1D, stream()](x, *geom, out)
    return out


def avgpool2d_nchw(x, kernel_size, stride, padding, out, ceil_mode=False, count_include_pad=True):
    """``out[n, c, oy, ox] = (1 / D) * sum_{i<KH, j<KW} x[n, c, oy*SH - PH + i, ox*SW - PW + j]`` with
    padding counted as zeros; D = KH*KW (count_include_pad, floor mode) or as in the module docstring;
    floor mode unless ``ceil_mode``; stride None = the window."""
    geom, shape = _pool_geometry(x, kernel_size, stride, padding, "avgpool2d_nchw", ceil_mode)
    _check(out, "avgpool2d_nchw out (N, C, OH, OW)", shape=shape)
    _JIT["avgpool"][_blocks(out.size), BLOCK_1D, stream()](x, *geom, bool(count_include_pad), out)
    return out


def global_avgpool_nchw(x, out):
    """x (N, C, H, W) -> out (N, C): ``out[n, c] = mean_{h, w} x[n, c, h, w]``."""
    _check(x, "global_avgpool_nchw x (N, C, H, W)", ndim=4)
    _check(out, "global_avgpool_nchw out (N, C)", shape=x.shape[:2])
    n, c, h, w = x.shape
    _JIT["global_avgpool"][_blocks(out.size), BLOCK_1D, stream()](x.reshape(n, c, h * w), False, out)
    return out


def global_avgpool_nhwc(x, out):
    """x (N, H, W, C) -> out (N, C): ``out[n, c] = mean_{h, w} x[n, h, w, c]``."""
    _check(x, "global_avgpool_nhwc x (N, H, W, C)", ndim=4)
    _check(out, "global_avgpool_nhwc out (N, C)", shape=(x.shape[0], x.shape[3]))
    n, h, w, c = x.shape
    _JIT["global_avgpool"][_blocks(out.size), BLOCK_1D, stream()](x.reshape(n, h * w, c), True, out)
    return out
