"""A convolution's forward and backward passes in chunks of images, each chunk's lowered matrix
kept in cache.

With the channels-last lowering of ``bitnet.ops.conv`` (rows R of shape (N*P, G*KG), P = OH*OW,
KG = KH*KW*Cg; the output gradient G as (N*P, O)), the backward pass of a convolution is

    dW^T[g] = R[:, k_g]^T @ G[:, o_g]           dR[:, k_g] = G[:, o_g] @ W^T[g]      dx = col2im(dR)
    db = sum of G over its rows

Every sum over rows splits over images: with the images cut into chunks c of ``per`` images,
dW^T = sum_c R_c^T @ G_c, db = sum_c colsum(G_c), and dR, dx are computed per image anyway. So each
chunk runs on one thread, start to end (transpose its part of x and G to channels-last, im2col,
both GEMMs on single-threaded BLAS, col2im, transpose back), and its lowered matrix (about
``CHUNK_BYTES``) stays in cache from the im2col to the GEMMs, where the whole batch's (151 MB for
resnet18-binary's first stage at batch 64) went out to memory and back several times. dR is
written over R once the chunk's dW is taken. Measured on that stage (batch 64, 64 channels, 32x32,
3x3): 163 -> 84 ms on one thread and 85 -> 56 ms on two (docs/benchmarks.md).

The forward pass likewise: y[g] = R_c[:, k_g] @ W[g]^T per chunk, then NCHW with the bias; its rows
are not kept (the whole batch's would be 151 MB for a stage-one layer of a float ResNet-18, 1.2 GB
over its 16 convolutions), and the backward lowers each chunk again from the saved input.

Exactness: y and dx are the same sums in the same order as the whole-batch form (each element of dR is
one row of G times one column of W^T, whatever the chunk). dW and db are summed per chunk, then
the chunks' sums are added in chunk order: a fixed order that depends on the shapes only, not on
the threads, so results are the same at any thread count (they may differ from the whole-batch
GEMM's in the last bits: float sums in another order).
"""
from __future__ import annotations

import itertools

import numpy as np

from bitnet.kernels import im2col as K
from bitnet.kernels.threads import num_threads, run, single_threaded_blas
from bitnet.ops import workspace as W

CHUNK_BYTES = 8 << 20  # the lowered matrix of one chunk: well inside the last-level cache
MIN_CHUNKS = 4         # fewer chunks than this: the whole-batch GEMMs (split across threads) instead


def images_per_chunk(n_img: int, row_bytes: int) -> int | None:
    """Images per chunk for a batch of ``n_img`` whose lowered matrix takes ``row_bytes`` per image,
    or None when the batch would make fewer than ``MIN_CHUNKS`` chunks (the whole-batch form then;
    its lowered matrix is small enough to stay in cache)."""
    per = max(1, CHUNK_BYTES // max(1, row_bytes))
    return per if -(-n_img // per) >= MIN_CHUNKS else None


def backward(g, w, x_shape, geom, groups, out_hw, rows_of, per, want):
    """(gx, gw, gb) of a convolution in the channels-last lowering, chunk by chunk (module docstring).

    ``g``: output gradient (N, O, OH, OW); ``w``: weight (O, Cg, KH, KW); ``geom``: (KH, KW, SH, SW,
    PH, PW, DH, DW); ``rows_of(s, e)``: the lowered rows of images s..e-1, (m*P, G*KG), a fresh
    array that the chunk overwrites with dR; ``per``: images per chunk; ``want``: (gx, gw, gb) wanted, each
    bool. What is not wanted is None."""
    g = np.ascontiguousarray(g)
    n_img, n_out, oh, ow = g.shape
    p, (kh, kw) = oh * ow, geom[:2]
    channels, height, width = x_shape[1:]
    og, kg = n_out // groups, w.shape[1] * kh * kw
    want_gx, want_gw, want_gb = want
    chunks = -(-n_img // per)
    gw_parts = W.empty((chunks, groups, kg, og), g.dtype) if want_gw else None
    gb_parts = W.empty((chunks, n_out), g.dtype) if want_gb else None
    gx = W.empty(x_shape, g.dtype) if want_gx else None
    # W^T per group, (KG, Og) with rows in the lowering's (i, j, c) order, contiguous
    wt = K.weights_to_rows(w, W.empty((kg, n_out), w.dtype)) if want_gx else None
    zeros_p, zeros_c = np.zeros(p, g.dtype), np.zeros(channels, g.dtype)
    claim = itertools.count()

    def worker():
        while (c := next(claim)) < chunks:
            s, e = c * per, min(n_img, (c + 1) * per)
            m = e - s
            rows = rows_of(s, e)
            gr = W.empty((m, p, n_out), g.dtype)  # G of these images as (m*P, O)
            K.transpose_inner(g[s:e].reshape(m, n_out, p), zeros_p, gr)
            gr = gr.reshape(m * p, n_out)
            if want_gb:
                np.sum(gr, axis=0, out=gb_parts[c])
            for gi in range(groups):
                o, k = slice(gi * og, (gi + 1) * og), slice(gi * kg, (gi + 1) * kg)
                if want_gw:
                    np.matmul(rows[:, k].T, gr[:, o], out=gw_parts[c, gi])
            if want_gx:  # dR over R: every group's dW above has read it
                for gi in range(groups):
                    o, k = slice(gi * og, (gi + 1) * og), slice(gi * kg, (gi + 1) * kg)
                    np.matmul(gr[:, o], wt[:, o].T, out=rows[:, k])
                gxh = W.empty((m, height, width, channels), g.dtype)
                K.col2im_rows(rows, groups, *geom, oh, ow, gxh)
                K.transpose_inner(gxh.reshape(m, height * width, channels), zeros_c,
                                  gx[s:e].reshape(m, channels, height * width))

    with single_threaded_blas():  # each chunk's GEMMs on the thread that runs the chunk
        run(worker, min(chunks, num_threads()))
    gw = gb = None
    if want_gw:
        total = gw_parts.sum(axis=0)  # (G, KG, Og), the chunks added in chunk order
        gw = W.empty(w.shape, g.dtype)
        for gi in range(groups):
            K.weights_from_rows(total[gi], gw[gi * og:(gi + 1) * og])
    if want_gb:
        gb = gb_parts.sum(axis=0)
    return gx, gw, gb


def forward(x, w, bias, geom, groups, out_hw, per, out):
    """out (N, O, OH, OW) = conv(x, w) + bias in the channels-last lowering, chunk by chunk (module
    docstring); ``bias`` is a length-O array (zeros for none)."""
    n_img, n_out = x.shape[0], w.shape[0]
    p = out_hw[0] * out_hw[1]
    og, kg = n_out // groups, w[0].size
    wm = weights_by_tap(w)
    rows_of = lowered_rows(x, geom, groups, out_hw, 0.0)
    chunks = -(-n_img // per)
    claim = itertools.count()

    def worker():
        while (c := next(claim)) < chunks:
            s, e = c * per, min(n_img, (c + 1) * per)
            m = e - s
            rows = rows_of(s, e)
            y = W.empty((m * p, n_out), out.dtype)
            for gi in range(groups):
                o, k = slice(gi * og, (gi + 1) * og), slice(gi * kg, (gi + 1) * kg)
                np.matmul(rows[:, k], wm[o].T, out=y[:, o])
            K.transpose_inner(y.reshape(m, p, n_out), bias, out[s:e].reshape(m, n_out, p))

    with single_threaded_blas():
        run(worker, min(chunks, num_threads()))
    return out


def weights_by_tap(w):
    """w (O, Cg, KH, KW) as the (O, KH*KW*Cg) matrix of the rows lowering (columns in its (i, j, c)
    order): one transpose per output channel, split across threads."""
    n_out, cg, kh, kw = w.shape
    wm = W.empty((n_out, kh * kw, cg), w.dtype)
    K.transpose_inner(np.ascontiguousarray(w).reshape(n_out, cg, kh * kw), np.zeros(kh * kw, w.dtype), wm)
    return wm.reshape(n_out, -1)


def lowered_rows(x, geom, groups, out_hw, pad_value):
    """``rows_of`` for ``backward`` that lowers the images of x (N, C, H, W) chunk by chunk:
    channels-last, then ``im2col_rows`` with the border reading as ``pad_value``."""
    x = np.ascontiguousarray(x)
    n_img, channels, height, width = x.shape
    oh, ow = out_hw
    kg = channels // groups * geom[0] * geom[1]
    zeros_hw = np.zeros(height * width, x.dtype)

    def rows_of(s, e):
        m = e - s
        xh = W.empty((m, height * width, channels), x.dtype)
        K.transpose_inner(x[s:e].reshape(m, channels, height * width), zeros_hw, xh)
        rows = W.empty((m * oh * ow, groups * kg), x.dtype)
        K.im2col_rows(xh.reshape(m, height, width, channels), groups, *geom, oh, ow, rows, pad_value)
        return rows
    return rows_of


def lowered_bits(bits, channels, dtype, geom, out_hw, pad_value):
    """``rows_of`` for ``backward`` that lowers a +-1 map from its packed sign bits (``bits``:
    (N, H, W, G, CWg) uint64 of ``bitnet.kernels.bitpack.pack_nchw``, ``channels`` the true C) into
    rows of ``dtype``, the border reading as ``pad_value`` (``kernels.im2col.im2col_rows_bits``)."""
    oh, ow = out_hw
    width = channels * geom[0] * geom[1]

    def rows_of(s, e):
        rows = W.empty(((e - s) * oh * ow, width), dtype)
        K.im2col_rows_bits(bits[s:e], channels, *geom, oh, ow, rows, pad_value)
        return rows
    return rows_of
