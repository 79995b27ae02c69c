"""A convolution's forward and backward passes in chunks of images, each chunk's lowered matrix
kept in cache.

With the channels-last lowering of ``bitnet.ops.conv`` (rows R of shape (N*P, G*KG), P = OH*OW,
KG = KH*KW*Cg; the output gradient G as (N*P, O)), the backward pass of a convolution is

    dW^T[g] = R[:, k_g]^T @ G[:, o_g]           dR[:, k_g] = G[:, o_g] @ W^T[g]      dx = col2im(dR)
    db = sum of G over its rows

Every sum over rows splits over images: with the images cut into chunks c of ``per`` images,
dW^T = sum_c R_c^T @ G_c, db = sum_c colsum(G_c), and dR, dx are computed per image anyway. So each
chunk runs on one thread, start to end (lower its images: from x, or from a binary layer's packed
sign bits; G to channels-last; both GEMMs on single-threaded BLAS; col2im; back to NCHW), and its
lowered matrix (about ``CHUNK_BYTES``) stays in cache from the im2col to the GEMMs, where the whole
batch's (151 MB for resnet18-binary's first stage at batch 64) went out to memory and back several
times. dR is written over R once the chunk's dW is taken. One such layer's backward inside a
training step: 164.5 -> 126.3 ms on one thread, 88.9 -> 66.1 ms on two (docs/performance.md).

A binary convolution whose lowered matrix holds only +-1 (``BitsLowering.tables``) runs its
backward by table lookup instead (``bitnet.ops.sign_backward``), on these chunks (``run_chunks``),
even when its batch is one chunk (then every kernel of the chunk splits across bitnet's threads).

The forward pass likewise: y[g] = R_c[:, k_g] @ W[g]^T per chunk, then NCHW with the bias; its rows
are not kept (the whole batch's would be 151 MB for a stage-one layer of a float ResNet-18, 1.2 GB
over its 16 convolutions), and the backward lowers each chunk again from the saved input.

Exactness: y and dx are the same sums in the same order as the whole-batch form (each element of dR is
one row of G times one column of W^T, whatever the chunk). dW and db are summed per chunk, then
the chunks' sums are added in chunk order: a fixed order that depends on the shapes only, so
results are the same bits at every thread count that chunks the layer (``images_per_chunk``: all
counts up to the number of chunks); they may differ from the whole-batch GEMM's in the last bits (float
sums in another order).

Memory: each thread that runs chunks gets one set of chunk-sized arrays, all made on the calling
thread before the chunks start (from its ``bitnet.ops.workspace``, so ``workspace.clear`` and
``workspace.limit`` govern them as every other array of the step).
"""
from __future__ import annotations

import itertools

import numpy as np

from bitnet.kernels import im2col as K
from bitnet.kernels import sign_tables as ST
from bitnet.kernels.threads import num_threads, run, single_threaded_blas
from bitnet.ops import workspace as W

CHUNK_BYTES = 8 << 20  # the lowered matrix of one chunk: well inside the last-level cache
MIN_CHUNKS = 4         # a batch whose lowered matrix is below MIN_CHUNKS * CHUNK_BYTES runs as a whole


def images_per_chunk(n_img: int, row_bytes: int, threads: int | None = None) -> int | None:
    """Images per chunk (about ``CHUNK_BYTES`` of lowered matrix, at least one image; ``row_bytes`` per
    image) for a batch of ``n_img``, or None for the whole-batch form, whose GEMMs split across all
    threads: when the batch's lowered matrix is below ``MIN_CHUNKS * CHUNK_BYTES`` (it stays in the
    last-level cache as a whole: LeNet's second convolution at batch 64, 26 MB), or when the batch
    gives fewer chunks than ``threads`` (default: bitnet's) to share. The chunk size depends on the
    shapes only, so the chunks, and the bits of the results, are the same at every thread count up
    to the number of chunks."""
    threads = num_threads() if threads is None else max(1, int(threads))
    if n_img * row_bytes < MIN_CHUNKS * CHUNK_BYTES:
        return None
    per = max(1, CHUNK_BYTES // max(1, row_bytes))
    return per if -(-n_img // per) >= threads else None


class _Scratch:
    """One set of arrays per worker, made on the calling thread before the workers start (its
    workspace; module docstring); each worker ``take``s its own set once. ``shapes``: name ->
    (shape, dtype)."""

    def __init__(self, n_sets, shapes):
        self.sets = [{k: W.empty(shape, dtype) for k, (shape, dtype) in shapes.items()} for _ in range(n_sets)]
        self.claim = itertools.count()

    def take(self):
        return self.sets[next(self.claim)]


def run_chunks(n_img, per, shapes, body):
    """``body(c, s, e, arrays)`` for every chunk c of images s..e-1, on bitnet's threads, BLAS
    single-threaded in each (each chunk's GEMMs on the thread that runs it); ``arrays``: the running
    thread's set of ``shapes`` (``_Scratch``). A single chunk (the table-lookup backward of a batch
    that does not chunk) runs on this thread, its parallel kernels split across bitnet's threads."""
    chunks = -(-n_img // per)
    if chunks <= 1:  # one chunk, or none (an empty batch)
        if chunks:
            with single_threaded_blas():
                body(0, 0, n_img, _Scratch(1, shapes).take())
        return
    workers = min(chunks, num_threads())
    scratch = _Scratch(workers, shapes)
    claim = itertools.count()

    def worker():
        arrays = scratch.take()
        while (c := next(claim)) < chunks:
            body(c, c * per, min(n_img, (c + 1) * per), arrays)

    with single_threaded_blas():
        run(worker, workers)


def backward(g, w, x_shape, geom, groups, out_hw, lowering, per, want):
    """(gx, gw, gb) of a convolution in the channels-last lowering, chunk by chunk (module docstring).

    ``g``: output gradient (N, O, OH, OW); ``w``: weight (O, Cg, KH, KW); ``geom``: (KH, KW, SH, SW,
    PH, PW, DH, DW); ``lowering``: a ``FloatLowering`` or ``BitsLowering`` of the input; ``per``:
    images per chunk; ``want``: (gx, gw, gb) wanted, each bool. What is not wanted is None."""
    g = np.ascontiguousarray(g)
    n_img, n_out, oh, ow = g.shape
    p, (kh, kw) = oh * ow, geom[:2]
    channels, height, width = x_shape[1:]
    og, kg = n_out // groups, w.shape[1] * kh * kw
    want_gx, want_gw, want_gb = want
    gx, gw_parts, gb_parts = gradient_arrays(g, w, x_shape, groups, per, want)
    # W^T per group, (KG, Og) with rows in the lowering's (i, j, c) order, contiguous
    wt = K.weights_to_rows(w, W.empty((kg, n_out), w.dtype)) if want_gx else None
    zeros_p, zeros_c = np.zeros(p, g.dtype), np.zeros(channels, g.dtype)
    shapes = dict(lowering.scratch(per), gr=((per * p, n_out), g.dtype))
    if want_gx:
        shapes["gxh"] = ((per, height, width, channels), g.dtype)

    def chunk(c, s, e, arrays):
        m = e - s
        gr = arrays["gr"][:m * p]  # G of these images as (m*P, O)
        K.transpose_inner(g[s:e].reshape(m, n_out, p), zeros_p, gr.reshape(m, p, n_out))
        if want_gb:
            np.sum(gr, axis=0, out=gb_parts[c])
        rows = lowering.rows(s, e, arrays)
        for gi in range(groups):
            o, k = slice(gi * og, (gi + 1) * og), slice(gi * kg, (gi + 1) * kg)
            if want_gw:
                np.matmul(rows[:, k].T, gr[:, o], out=gw_parts[c, gi])
        if want_gx:  # dR over R: every group's dW above has read it
            for gi in range(groups):
                o, k = slice(gi * og, (gi + 1) * og), slice(gi * kg, (gi + 1) * kg)
                np.matmul(gr[:, o], wt[:, o].T, out=rows[:, k])
            gxh = arrays["gxh"][:m]
            K.col2im_rows(rows, groups, *geom, oh, ow, gxh)
            K.transpose_inner(gxh.reshape(m, height * width, channels), zeros_c,
                              gx[s:e].reshape(m, channels, height * width))

    run_chunks(n_img, per, shapes, chunk)
    return (gx,) + sum_chunks(gw_parts, gb_parts, w, groups)


def gradient_arrays(g, w, x_shape, groups, per, want):
    """(gx, gw_parts, gb_parts) for a chunked backward: the input's gradient (N, C, H, W), the
    weight's per chunk (chunks, G, KG, Og) and the bias's per chunk (chunks, O), each None where
    ``want`` (gx, gw, gb) does not ask for it (``sum_chunks`` adds the parts)."""
    n_img, n_out = g.shape[:2]
    chunks = -(-n_img // per)
    want_gx, want_gw, want_gb = want
    gw_parts = W.empty((chunks, groups, w[0].size, n_out // groups), g.dtype) if want_gw else None
    gb_parts = W.empty((chunks, n_out), g.dtype) if want_gb else None
    gx = W.empty(x_shape, g.dtype) if want_gx else None
    return gx, gw_parts, gb_parts


def sum_chunks(gw_parts, gb_parts, w, groups):
    """(gw, gb) from the chunks' parts, added in chunk order: gw_parts (chunks, G, KG, Og) in the
    rows layout's (i, j, c) order, back to the weight's shape; gb_parts (chunks, O). None for a
    part that is None."""
    gw = gb = None
    if gw_parts is not None:
        total = gw_parts.sum(axis=0)  # (G, KG, Og), the chunks added in chunk order
        gw = W.empty(w.shape, gw_parts.dtype)
        og = w.shape[0] // groups
        for gi in range(groups):
            K.weights_from_rows(total[gi], gw[gi * og:(gi + 1) * og])
    if gb_parts is not None:
        gb = gb_parts.sum(axis=0)
    return gw, gb


def forward(x, w, bias, geom, groups, out_hw, per, out):
    """out (N, O, OH, OW) = conv(x, w) + bias in the channels-last lowering, chunk by chunk (module
    docstring); ``bias`` is a length-O array (zeros for none)."""
    n_img, n_out = x.shape[0], w.shape[0]
    p = out_hw[0] * out_hw[1]
    og, kg = n_out // groups, w[0].size
    wm = K.weights_by_tap(w, W.empty((n_out, kg), w.dtype))
    lowering = FloatLowering(x, geom, groups, out_hw)

    def chunk(c, s, e, arrays):
        m = e - s
        rows = lowering.rows(s, e, arrays)
        y = arrays["y"][:m * p]
        for gi in range(groups):
            o, k = slice(gi * og, (gi + 1) * og), slice(gi * kg, (gi + 1) * kg)
            np.matmul(rows[:, k], wm[o].T, out=y[:, o])
        K.transpose_inner(y.reshape(m, p, n_out), bias, out[s:e].reshape(m, n_out, p))

    run_chunks(n_img, per, dict(lowering.scratch(per), y=((per * p, n_out), out.dtype)), chunk)
    return out


class FloatLowering:
    """The rows lowering of a float convolution's input x (N, C, H, W), chunk by chunk: channels-last,
    then ``im2col_rows`` with zero padding (a binary layer's border lowers from its bits:
    ``BitsLowering``)."""

    def __init__(self, x, geom, groups, out_hw):
        self.x = np.ascontiguousarray(x)
        self.geom, self.groups, self.out_hw = geom, groups, out_hw
        n_img, channels, height, width = self.x.shape
        self.zeros_hw = np.zeros(height * width, self.x.dtype)
        self.width = channels * geom[0] * geom[1]

    def scratch(self, per):
        """The arrays ``rows`` needs for up to ``per`` images: name -> (shape, dtype)."""
        _, channels, height, width = self.x.shape
        p = self.out_hw[0] * self.out_hw[1]
        return {"xh": ((per, height * width, channels), self.x.dtype), "rows": ((per * p, self.width), self.x.dtype)}

    def rows(self, s, e, arrays):
        """The lowered rows of images s..e-1, ((e-s)*P, G*KG), in ``arrays`` (of ``scratch``)."""
        m, (_, channels, height, width) = e - s, self.x.shape
        xh = arrays["xh"][:m]
        K.transpose_inner(self.x[s:e].reshape(m, channels, height * width), self.zeros_hw, xh)
        rows = arrays["rows"][:m * self.out_hw[0] * self.out_hw[1]]
        K.im2col_rows(xh.reshape(m, height, width, channels), self.groups, *self.geom, *self.out_hw, rows)
        return rows


class BitsLowering:
    """The rows lowering of a +-1 map from its packed sign bits (``bits``: (N, H, W, G, CWg) uint64 of
    ``bitnet.kernels.bitpack.pack_nchw``, ``channels`` the true C), in rows of ``dtype``, the border
    reading as ``pad_value`` (``kernels.im2col.im2col_rows_bits``)."""

    def __init__(self, bits, channels, dtype, geom, out_hw, pad_value):
        self.bits, self.channels, self.dtype = bits, channels, dtype
        self.geom, self.out_hw, self.pad_value = geom, out_hw, pad_value
        self.width = channels * geom[0] * geom[1]
        # every entry +-1 (no 0 at a border): the backward by table lookup (bitnet.ops.sign_backward)
        self.tables = pad_value in (1.0, -1.0) or not any(geom[4:6])

    def scratch(self, per):
        return {"rows": ((per * self.out_hw[0] * self.out_hw[1], self.width), self.dtype)}

    def signs(self, s, e, arrays):
        """The sign nibbles of images s..e-1's rows (``kernels.sign_tables.lower_signs``), in
        ``arrays["idx"]`` (at least (ceil((e-s)*OH*OW / 4), G*KG) uint8)."""
        idx = arrays["idx"][:ST.groups_of((e - s) * self.out_hw[0] * self.out_hw[1])]
        ST.lower_signs(self.bits[s:e], self.channels, *self.geom, *self.out_hw, self.pad_value, idx)
        return idx

    def rows(self, s, e, arrays):
        rows = arrays["rows"][:(e - s) * self.out_hw[0] * self.out_hw[1]]
        K.im2col_rows_bits(self.bits[s:e], self.channels, *self.geom, *self.out_hw, rows, self.pad_value)
        return rows

    def whole(self):
        """The whole batch's rows (the whole-batch backward keeps them as ``Conv2d.lowered``)."""
        n_img = self.bits.shape[0]
        return self.rows(0, n_img, {k: W.empty(*v) for k, v in self.scratch(n_img).items()})
