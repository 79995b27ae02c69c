"""The inner loop of ``kernels.sign_tables``: sums of eight table rows picked by sign nibbles, in
LLVM IR vectors (a Numba intrinsic).

For output rows k0 <= k < k1 and a block of eight groups g0 .. g0+7 whose tables (16 rows of
``stride`` elements each, group q's at ``tables[q * 16 * stride:]``) are built,

    flat[k * o_size + o0 + o]  (+)=  ((T0 + T1) + (T2 + T3)) + ((T4 + T5) + (T6 + T7)),
    Tq = tables[(16 q + idx[g0 + q, k]) * stride + o],       o < width

with ``=`` for the first block of groups (``first``: the output starts at that sum, the same bits
as 0 + sum, and need not be zeroed) and ``+=`` after it.

Why IR: written as a Numba loop over o, the store into ``flat`` may, for all LLVM knows, overlap
the table rows it reads, so every k paid for a runtime overlap check of the eight rows (about a
hundred scalar instructions, with spills) before the vector body: about as much work as the body
itself. Here the loads and stores are explicit ``<lanes x float>`` operations (64-byte vectors: 16
float32 or 8 float64; LLVM splits them into 32-byte halves where the target has no AVX-512) and
need no check: the tables and the output are never the same memory (the caller's own scratch
array and its output). The loop over k is inside, so a call covers a whole block of output rows.
"""
from __future__ import annotations

from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.core.errors import TypingError
from numba.extending import intrinsic

GROUPS = 8         # groups (table sets) a call sums
VECTOR_BYTES = 64  # bytes per vector


@intrinsic
def add_table_rows(typingctx, idx, g0, k0, k1, tables, stride, flat, o_size, o0, width, first):
    """``add_table_rows(idx, g0, k0, k1, tables, stride, flat, o_size, o0, width, first)`` from njit
    code (module docstring): ``idx`` a 2-D uint8 array (any strides), ``tables`` and ``flat`` 1-D
    C-contiguous arrays of one float dtype, ``width`` a compile-time constant multiple of the
    vector lanes (16 for float32, 8 for float64), ``first`` the compile-time constant True or
    False. Nothing is checked: the caller guarantees the groups, rows and columns exist."""
    if not isinstance(width, types.IntegerLiteral):
        raise TypingError(f"width must be a compile-time constant, got the type {width}")
    if not isinstance(first, types.BooleanLiteral):
        raise TypingError(f"first must be the compile-time constant True or False, got the type {first}")
    if not (isinstance(idx, types.Array) and idx.ndim == 2 and idx.dtype == types.uint8):
        raise TypingError(f"idx must be a 2-D uint8 array, got {idx}")
    dtype = tables.dtype
    if dtype not in (types.float32, types.float64) or flat.dtype != dtype:
        raise TypingError(f"tables and flat must be float32 or float64 arrays of one dtype, got {tables}, {flat}")
    lanes = VECTOR_BYTES // (dtype.bitwidth // 8)
    n_vectors, rest = divmod(width.literal_value, lanes)
    if rest or not n_vectors:
        raise TypingError(f"width must be a positive multiple of {lanes} for {dtype}, got {width.literal_value}")
    store_only = first.literal_value
    sig = types.void(idx, g0, k0, k1, tables, stride, flat, o_size, o0, width, first)

    def codegen(context, builder, signature, args):
        tys = signature.args
        i64 = ir.IntType(64)
        vec = ir.VectorType(context.get_data_type(dtype), lanes)
        arr = cgutils.create_struct_proxy(tys[0])(context, builder, value=args[0])
        idx_rows, idx_cols = cgutils.unpack_tuple(builder, arr.strides, 2)  # bytes = elements (uint8)
        table_ptr, out_ptr = (cgutils.create_struct_proxy(tys[j])(context, builder, value=args[j]).data
                              for j in (4, 6))
        g0_, k0_, k1_, stride_, o_size_, o0_ = (context.cast(builder, args[j], tys[j], types.int64)
                                                for j in (1, 2, 3, 5, 7, 8))

        def const(v):
            return ir.Constant(i64, v)

        with cgutils.for_range_slice(builder, k0_, k1_, const(1)) as (k, _):
            nibbles = builder.add(builder.mul(g0_, idx_rows), builder.mul(k, idx_cols))  # &idx[g0, k]
            rows = []  # element offset of group q's picked table row
            for q in range(GROUPS):
                at = builder.add(nibbles, builder.mul(const(q), idx_rows))
                nibble = builder.zext(builder.load(builder.gep(arr.data, [at])), i64)
                rows.append(builder.mul(builder.add(nibble, const(16 * q)), stride_))
            dst = builder.add(builder.mul(k, o_size_), o0_)
            for v in range(n_vectors):
                o = const(v * lanes)
                t = [builder.load(builder.bitcast(builder.gep(table_ptr, [builder.add(r, o)]), vec.as_pointer()),
                                  align=4) for r in rows]
                total = builder.fadd(builder.fadd(builder.fadd(t[0], t[1]), builder.fadd(t[2], t[3])),
                                     builder.fadd(builder.fadd(t[4], t[5]), builder.fadd(t[6], t[7])))
                out = builder.bitcast(builder.gep(out_ptr, [builder.add(dst, o)]), vec.as_pointer())
                if not store_only:
                    total = builder.fadd(builder.load(out, align=4), total)
                builder.store(total, out, align=4)
        return context.get_dummy_value()

    return sig, codegen
