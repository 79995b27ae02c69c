"""A binary convolution's backward pass by table lookup, chunk by chunk: no float GEMM.

For a convolution of +-1 values whose lowered input R (M, K) holds only +-1 (a border of +1 or -1,
or none), with the +-1 weight W (O, K) per group and the output gradient G (M, O), both products of
the backward pass have a +-1 factor:

    dW^T = R^T G      (K, O): R's sign nibbles from the input's packed bits (``sign_tables.lower_signs``)
    dR^T = W^T G^T    (K, M): W's sign nibbles (``sign_tables.row_signs`` of W as (O, K)), G^T = g as (O, N*P)
    dx   = col2im(dR^T)       (``kernels.im2col.col2im``: the column layout, straight to NCHW)

each computed by ``sign_tables.signs_t_matmul`` (tables of the 16 signed sums of every four rows
of the float factor: about 4x fewer operations than a float GEMM, 2.1-2.8x its speed). In the
column layout the rows of W^T run over (c, i, j), the order ``col2im`` reads, so neither dR nor dx
goes through channels-last (the rows layout's dR, col2im_rows and NHWC -> NCHW transpose are gone).

Chunks of images as in ``bitnet.ops.conv_chunks`` (the same ``images_per_chunk``; a batch that
does not chunk is one chunk whose kernels split across bitnet's threads): dW and db are summed per
chunk, then in chunk order, so the bits are the same at every thread count.

Rounding: the same sums as the float path's, in another order (``kernels.sign_tables``): dW within
(M/32 + 6) u sum_m |G[m, o]|, each dR^T element within (O/32 + 6) u sum_o |G[m, o]|, then col2im's
sums of at most KH*KW of them. The bias's gradient is the float path's (the same NumPy sums).
"""
from __future__ import annotations

import numpy as np

from bitnet.kernels import im2col as K
from bitnet.kernels import sign_tables as ST
from bitnet.ops import conv_chunks


def backward(g, w, x_shape, geom, groups, out_hw, lowering, per, want):
    """(gx, gw, gb) of a binary convolution (module docstring); arguments as for
    ``conv_chunks.backward``, ``lowering`` a ``conv_chunks.BitsLowering`` whose ``tables`` is set and
    ``w`` the +-1 weight (O, Cg, KH, KW)."""
    g = np.ascontiguousarray(g)
    n_img, n_out, oh, ow = g.shape
    p, (kh, kw) = oh * ow, geom[:2]
    og, kg = n_out // groups, w.shape[1] * kh * kw
    want_gx, want_gw, want_gb = want
    gx, gw_parts, gb_parts = conv_chunks.gradient_arrays(g, w, x_shape, groups, per, want)
    w_signs = []
    if want_gx:  # per group: W's rows (O_g, Cg*KH*KW) in (c, i, j) order, as sign nibbles
        for gi in range(groups):
            rows = np.ascontiguousarray(w[gi * og:(gi + 1) * og].reshape(og, kg))
            w_signs.append(np.empty((ST.groups_of(og), kg), np.uint8))
            ST.row_signs(rows, w_signs[-1])
    shapes = {"gr": ((per * p, n_out), g.dtype)}
    if want_gw:
        shapes["idx"] = ((ST.groups_of(per * p), groups * kg), np.uint8)
    if want_gx:  # flat: a chunk of m images takes the contiguous front (O, m*P) / (G*KG, m*P)
        shapes["gt"] = ((n_out * per * p,), g.dtype)
        shapes["cols"] = ((groups * kg * per * p,), g.dtype)
    zeros_p = np.zeros(p, g.dtype)

    def chunk(c, s, e, arrays):
        m = e - s
        if want_gw or want_gb:
            gr = arrays["gr"][:m * p]  # G of these images as (m*P, O)
            K.transpose_inner(g[s:e].reshape(m, n_out, p), zeros_p, gr.reshape(m, p, n_out))
            if want_gb:
                np.sum(gr, axis=0, out=gb_parts[c])
            if want_gw:
                idx = lowering.signs(s, e, arrays)
                for gi in range(groups):
                    o, k = slice(gi * og, (gi + 1) * og), slice(gi * kg, (gi + 1) * kg)
                    ST.signs_t_matmul(idx[:, k], m * p, gr[:, o], gw_parts[c, gi])
        if want_gx:
            gt = arrays["gt"][:n_out * m * p].reshape(n_out, m * p)  # G^T: (O, m*P)
            K.swap_leading_axes(g[s:e].reshape(m, n_out, p), np.zeros(m, g.dtype), gt.reshape(n_out, m, p))
            cols = arrays["cols"][:groups * kg * m * p].reshape(groups * kg, m * p)
            for gi in range(groups):
                ST.signs_t_matmul(w_signs[gi], og, gt[gi * og:(gi + 1) * og], cols[gi * kg:(gi + 1) * kg])
            K.col2im(cols, *geom, oh, ow, gx[s:e])

    conv_chunks.run_chunks(n_img, per, shapes, chunk)
    return (gx,) + conv_chunks.sum_chunks(gw_parts, gb_parts, w, groups)
