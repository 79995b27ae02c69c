"""The epilogue of a micro-kernel block, as explicit vector code: popcounts -> outputs.

A block (``bitnet.kernels.xnor_block``) leaves ``acc[i * P + c]`` = popcount(x_i XOR w_c) for
``ROWS`` pixels i and a *filter panel* of ``P = VECS * lanes`` filters c (filters in vector lanes).
For the first ``nrows`` rows this writes, per pixel row i and filter c (all float32 math in the
order shown, so it rounds as the float path does):

    dot        = K - 2 * acc[i, c]  (- corr[i, c]            if flags & CORR)
    DOTS:        out_i[i, c] = dot                                           (int32)
    AFFINE:      v = scale[c] * float32(dot) + shift[c]  (+ res[i, c]   if flags & RESIDUAL)
                 out_f[i, c] = v                                             (float32)
                 bits[i]     = sum_c (v < 0) << c      (P bits, little end)  (if flags & BITS)

Rows are ``out_stride`` elements apart in ``out_i`` / ``out_f`` / ``res`` (channels-last maps:
a pixel's filters are contiguous), ``bits_stride`` bytes apart in ``bits`` (the next binary
layer's packed input, viewed as bytes). ``corr`` is read at ``corr_rows[i] + c``.

Numba's own loops over such small 2-D tiles are not vectorized (the constant trip counts get
unrolled before the vectorizer sees them), so this is written in LLVM IR through
``numba.extending.intrinsic``, like the micro-kernel: lane-parallel int64 -> float conversion,
multiply, add, compare-to-mask, and full-vector stores.
"""
from __future__ import annotations

from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

from bitnet.kernels.xnor_block import ROWS, VECS, _data_pointer, literal_lanes

CORR, AFFINE, RESIDUAL, BITS = 1, 2, 4, 8


@intrinsic
def xnor_epilogue(typingctx, acc, nrows, K, flags, corr, corr_rows, scale, shift, col,
                  res, out_i, out_f, out_off, out_stride, bits, bits_off, bits_stride, lanes):
    """The epilogue for ``lanes``-wide vectors, a Numba intrinsic::

        xnor_epilogue(acc, nrows, K, flags, corr, corr_rows, scale, shift, col,
                      res, out_i, out_f, out_off, out_stride, bits, bits_off, bits_stride, lanes)

    ``acc`` int64, ``corr`` int32, ``corr_rows`` int64 (ROWS offsets), ``scale``/``shift`` float32
    read at ``col + c``, ``res``/``out_f`` float32 and ``out_i`` int32 at
    ``out_off + i * out_stride + c``, ``bits`` uint8 at ``bits_off + i * bits_stride``; ``lanes``
    a compile-time constant (2, 4 or 8), as for ``xnor_block``. Arrays a flag does not use may be
    empty. No bounds are checked.
    """
    n_lanes = literal_lanes(lanes)
    width = n_lanes * VECS
    sig = types.void(acc, nrows, K, flags, corr, corr_rows, scale, shift, col,
                     res, out_i, out_f, out_off, out_stride, bits, bits_off, bits_stride, lanes)

    def codegen(context, builder, signature, args):
        tys = signature.args
        i32, i64, f32 = ir.IntType(32), ir.IntType(64), ir.FloatType()
        v64, v32, vf = ir.VectorType(i64, n_lanes), ir.VectorType(i32, n_lanes), ir.VectorType(f32, n_lanes)
        ints = {j: context.cast(builder, args[j], tys[j], types.int64) for j in (1, 2, 3, 8, 12, 13, 15, 16)}
        ptr = {j: _data_pointer(context, builder, tys[j], args[j]) for j in (0, 4, 5, 6, 7, 9, 10, 11, 14)}
        nrows, K, flags, col = ints[1], ints[2], ints[3], ints[8]
        out_off, out_stride, bits_off, bits_stride = ints[12], ints[13], ints[15], ints[16]

        def c64(v):
            return ir.Constant(i64, v)

        def flag(bit):
            return builder.icmp_unsigned("!=", builder.and_(flags, c64(bit)), c64(0))

        def vload(base, index, vt):
            p = builder.bitcast(builder.gep(base, [index]), vt.as_pointer())
            return builder.load(p, align=4)

        def vstore(value, base, index):
            builder.store(value, builder.bitcast(builder.gep(base, [index]), value.type.as_pointer()), align=4)

        def splat(value, vt):
            v = builder.insert_element(ir.Constant(vt, ir.Undefined), value, ir.Constant(i32, 0))
            zeros = ir.Constant(ir.VectorType(i32, n_lanes), None)
            return builder.shuffle_vector(v, ir.Constant(vt, ir.Undefined), zeros)

        use_corr, affine, use_res, emit = flag(CORR), flag(AFFINE), flag(RESIDUAL), flag(BITS)
        k_vec = splat(K, v64)
        one = splat(c64(1), v64)
        zero_f = ir.Constant(vf, None)
        mask_t = ir.IntType(width)
        for i in range(ROWS):
            with builder.if_then(builder.icmp_signed(">", nrows, c64(i))):
                row = builder.add(out_off, builder.mul(c64(i), out_stride))
                mask = cgutils.alloca_once_value(builder, ir.Constant(mask_t, 0))
                for j in range(VECS):
                    c0 = c64(j * n_lanes)
                    a = vload(ptr[0], c64(i * width + j * n_lanes), v64)
                    dot = builder.trunc(builder.sub(k_vec, builder.shl(a, one)), v32)
                    slot = cgutils.alloca_once_value(builder, dot)
                    with builder.if_then(use_corr):
                        crow = builder.load(builder.gep(ptr[5], [c64(i)]))
                        cv = vload(ptr[4], builder.add(crow, c0), v32)
                        builder.store(builder.sub(builder.load(slot), cv), slot)
                    dot = builder.load(slot)
                    at = builder.add(row, c0)
                    with builder.if_else(affine) as (then, otherwise):
                        with then:
                            fc = builder.add(col, c0)
                            v = builder.fadd(builder.fmul(vload(ptr[6], fc, vf), builder.sitofp(dot, vf)),
                                             vload(ptr[7], fc, vf))
                            vslot = cgutils.alloca_once_value(builder, v)
                            with builder.if_then(use_res):
                                builder.store(builder.fadd(builder.load(vslot), vload(ptr[9], at, vf)), vslot)
                            v = builder.load(vslot)
                            vstore(v, ptr[11], at)
                            neg = builder.bitcast(builder.fcmp_ordered("<", v, zero_f), ir.IntType(n_lanes))
                            part = builder.shl(builder.zext(neg, mask_t), ir.Constant(mask_t, j * n_lanes))
                            builder.store(builder.or_(builder.load(mask), part), mask)
                        with otherwise:
                            vstore(dot, ptr[10], at)
                with builder.if_then(emit):
                    where = builder.add(bits_off, builder.mul(c64(i), bits_stride))
                    p = builder.bitcast(builder.gep(ptr[14], [where]), mask_t.as_pointer())
                    builder.store(builder.load(mask), p, align=1)
        return context.get_dummy_value()

    return sig, codegen

