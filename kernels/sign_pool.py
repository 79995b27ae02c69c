"""Max pooling followed by sign, straight to packed bits (``bitnet.kernels.bits``: bit 1 = negative).

A float map ``y`` that is only ever read through ``sign(maxpool(act(scale * y + shift)))`` (a batch
norm folded to a per-channel ``scale`` / ``shift``, an activation ``act`` that keeps the sign and
never decreases, e.g. tanh or hardtanh, then max pooling, then a binary layer's sign) needs neither
the activation nor the pooled floats: because ``act`` and the affine map are monotone per value,

    sign(max_i act(z_i)) = -1   <=>   max_i z_i < 0   <=>   every z_i < 0,   z_i = scale * y_i + shift

over the window's values i (a NaN anywhere in the window makes the pooled value NaN, whose sign is
+1, and ``NaN < 0`` is false: the same bit). The kernels compute ``z`` with the float path's
operations (one multiply, one add in float32) and AND the comparisons over each window (clipped to
the input: padding is -inf in max pooling and never wins); a window of 1x1 is plain sign.

- ``pool_signs_nhwc(y, scale, shift, ...)``: ``y`` (N, H, W, C) channels-last -> (N, PH, PW, CW)
  words, channels packed per output pixel (CW = ceil(C / 64), the packed convolution's input);
- ``pool_signs_flat(y, ...)``: ``y`` (N, H, W, C) -> (N, ceil(C*PH*PW / 64)) words in the order of
  ``flatten`` on the NCHW map (bit ``(c * PH + ph) * PW + pw``), the packed dense layer's input.
"""
from __future__ import annotations

import numba as nb
import numpy as np

from bitnet.kernels.atomics import claimed
from bitnet.kernels.bitpack import _sign_word
from bitnet.kernels.bits import words_for
from bitnet.kernels.threads import parallel, prepared_parallel

_JIT = dict(boundscheck=False, nogil=True, cache=True)


@nb.njit(inline="always")
def _window(o, k, s, p, size):
    """The input range [lo, hi) of output position ``o`` along one axis, clipped to the input."""
    lo = o * s - p
    return max(lo, 0), min(lo + k, size)


@nb.njit(inline="always")
def _window_signs(y, n, y0, y1, x0, x1, scale, shift, t):
    """t[c] = -1 if every ``scale[c] * y[n, i, j, c] + shift[c]`` of the window is < 0, else +1
    (c < C; a select per value, vectorized across channels)."""
    C = y.shape[3]
    t[:C] = -1.0
    for i in range(y0, y1):
        for j in range(x0, x1):
            row = y[n, i, j]
            for c in range(C):
                t[c] = t[c] if row[c] * scale[c] + shift[c] < 0 else np.float32(1.0)


@nb.njit(**_JIT)
def _nhwc_rows(y, scale, shift, kh, kw, sh, sw, ph, pw, PH, PW, out, counter, chunk):
    """One thread's output rows (n, oy): per output pixel the channels' window signs, packed 64 at
    a time (padding channels +1)."""
    N, H, W, C = y.shape
    CW = out.shape[3]
    t = np.ones(CW * 64, np.float32)
    for r in claimed(counter, chunk, N * PH):
        n, oy = r // PH, r % PH
        y0, y1 = _window(oy, kh, sh, ph, H)
        for ox in range(PW):
            x0, x1 = _window(ox, kw, sw, pw, W)
            _window_signs(y, n, y0, y1, x0, x1, scale, shift, t)
            for wd in range(CW):
                out[n, oy, ox, wd] = _sign_word(t, wd * 64)


@nb.njit(**_JIT)
def _flat_images(y, scale, shift, kh, kw, sh, sw, ph, pw, PH, PW, out, counter, chunk):
    """One thread's images: each output pixel's window signs scattered to the flattened (c, oy, ox)
    positions, packed 64 at a time."""
    N, H, W, C = y.shape
    nw = out.shape[1]
    t = np.empty(nw * 64, np.float32)
    tc = np.empty(C, np.float32)
    for n in claimed(counter, chunk, N):
        t[:] = 1.0
        for oy in range(PH):
            y0, y1 = _window(oy, kh, sh, ph, H)
            for ox in range(PW):
                x0, x1 = _window(ox, kw, sw, pw, W)
                _window_signs(y, n, y0, y1, x0, x1, scale, shift, tc)
                for c in range(C):
                    t[(c * PH + oy) * PW + ox] = tc[c]
        for wd in range(nw):
            out[n, wd] = _sign_word(t, wd * 64)


class PoolSigns:
    """``pool_signs_nhwc`` / ``pool_signs_flat`` prepared for one input shape: sizes, the affine
    vectors and the kernel's arguments worked out once; ``call(y)`` allocates the words and runs.
    ``scale`` / ``shift`` are read at each call, not copied (when given as float32)."""

    def __init__(self, y_shape, scale=None, shift=None, kernel=(1, 1), stride=(1, 1), padding=(0, 0),
                 out_size=None, flat=False):
        n, h, w, c = self.y_shape = tuple(int(v) for v in y_shape)
        (kh, kw), (sh, sw), (ph, pw) = kernel, stride, padding
        PH, PW = out_size if out_size is not None else ((h + 2 * ph - kh) // sh + 1, (w + 2 * pw - kw) // sw + 1)
        if PH < 1 or PW < 1:
            raise ValueError(f"pool_signs: a {kh}x{kw} window does not fit a {h}x{w} map with padding {padding}")
        one = np.ones(c, np.float32)
        g = one if scale is None else np.ascontiguousarray(scale, np.float32)
        b = 0 * one if shift is None else np.ascontiguousarray(shift, np.float32)
        if g.shape != (c,) or b.shape != (c,):
            raise ValueError(f"pool_signs: scale and shift must have shape ({c},), got {g.shape} and {b.shape}")
        self.args = (g, b, kh, kw, sh, sw, ph, pw, PH, PW)
        if flat:
            self.kernel, self.items, self.cost = _flat_images, n, c * PH * PW * kh * kw
            self.out_shape = (n, words_for(c * PH * PW))
        else:
            self.kernel, self.items, self.cost = _nhwc_rows, n * PH, PW * kh * kw * c
            self.out_shape = (n, PH, PW, words_for(c))

    def __call__(self, y):
        if y.shape != self.y_shape:
            raise ValueError(f"pool_signs: prepared for maps of shape {self.y_shape} (N, H, W, C), got {y.shape}")
        y = np.ascontiguousarray(y, np.float32)
        out = np.empty(self.out_shape, np.uint64)
        parallel(self.kernel, self.items, y, *self.args, out, cost=self.cost)
        return out


    def bind(self):
        """``call(y)`` whose output words are made once here and reused by every call: the result is
        valid until the next call (``bitnet.packed.plan`` copies what it hands out), one call at a
        time. ``call.nbytes``: the bytes it holds."""
        out = np.empty(self.out_shape, np.uint64)
        run, args, shape = prepared_parallel(self.kernel, self.items, self.cost), self.args, self.y_shape

        def call(y):
            if y.shape != shape:
                raise ValueError(f"pool_signs: prepared for maps of shape {shape} (N, H, W, C), got {y.shape}")
            run(np.ascontiguousarray(y, np.float32), *args, out)
            return out
        call.nbytes = out.nbytes
        return call


def pool_signs_nhwc(y, scale=None, shift=None, kernel=(1, 1), stride=(1, 1), padding=(0, 0), out_size=None):
    """Packed signs of ``maxpool(scale * y + shift)`` for channels-last ``y`` (N, H, W, C) float32
    (module docstring): (N, PH, PW, words_for(C)) uint64. ``out_size`` (PH, PW): the pooling's
    output size (``kernels.pooling.pool_output_size``; default: windows that tile the input)."""
    return PoolSigns(y.shape, scale, shift, kernel, stride, padding, out_size)(y)


def pool_signs_flat(y, scale=None, shift=None, kernel=(1, 1), stride=(1, 1), padding=(0, 0), out_size=None):
    """Packed signs of ``flatten(maxpool(scale * y + shift))`` in NCHW flatten order for channels-last
    ``y`` (N, H, W, C) float32 (module docstring): (N, words_for(C * PH * PW)) uint64."""
    return PoolSigns(y.shape, scale, shift, kernel, stride, padding, out_size, flat=True)(y)
