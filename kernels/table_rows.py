"""The inner loops of ``kernels.sign_tables`` in LLVM IR vectors (Numba intrinsics): building the
tables of four rows' signed sums, and summing eight table rows picked by sign nibbles.

The table of rows r0 .. r0+3 of G has 16 rows, T[b] = ((s0 G[r0] + s1 G[r0+1]) + s2 G[r0+2]) +
s3 G[r0+3] with s_r = -1 where bit r of b is set. T[b ^ 15] flips every sign, so it is -T[b]
exactly (rounding to nearest commutes with negation; only the sign of a zero can differ): only
the eight rows with s0 = +1 are stored, row j = T[2 j] (bit r - 1 of j holds s_r), half the memory
(8 groups of 128-column tables: 32 KB, the L1 cache), and a nibble b picks

    T[b] = row b / 2             for an even b,     -row (b ^ 15) / 2     for an odd b

(the negation: flipping the sign bits, one xor).

``build_table``: the eight rows of one table, columns o0 .. o0+width-1 of G, rows at or past
``rows`` reading as zero, into ``tables[t_off + j * stride:]``. As a tree that shares its partial
sums (x0 +- x1, then +- x2, then +- x3: 14 additions for the 8 rows, where each row alone takes 3).

``add_table_rows``: for output rows k0 <= k < k1 and a block of eight groups g0 .. g0+7 whose
tables are built (group q's at ``tables[q * 8 * stride:]``),

    flat[k * o_size + o0 + o]  (+)=  ((T0 + T1) + (T2 + T3)) + ((T4 + T5) + (T6 + T7)),
    Tq = group q's T[idx[g0 + q, k]] at column o,       o < width

with ``=`` for the first block of groups (``first``: the output starts at that sum, the same bits
as 0 + sum, and need not be zeroed) and ``+=`` after it.

Why IR: written as Numba loops over o, a store into ``flat`` (or ``tables``) may, for all LLVM
knows, overlap the rows it reads, so every k paid for a runtime overlap check of the eight rows
(about a hundred scalar instructions, with spills) before the vector body: about as much work as
the body itself. Here the loads and stores are explicit ``<lanes x float>`` operations (64-byte
vectors: 16 float32 or 8 float64; LLVM splits them into 32-byte halves where the target has no
AVX-512) and need no check: tables, G and the output are never the same memory (the caller's own
scratch array, its input, its output). The loop over k is inside, so a call covers a whole block
of output rows.
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
        i32 = ir.IntType(32)
        vec = ir.VectorType(context.get_data_type(dtype), lanes)
        bits = dtype.bitwidth
        int_t = ir.IntType(bits)
        int_vec = ir.VectorType(int_t, lanes)  # the same lanes as integers, for the sign flip
        broadcast = ir.Constant(ir.VectorType(i32, lanes), None)  # shuffle mask: lane 0 to every lane
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
            rows, signs = [], []  # group q's picked row (element offset), and its sign as a bit mask
            for q in range(GROUPS):
                at = builder.add(nibbles, builder.mul(const(q), idx_rows))
                nibble = builder.zext(builder.load(builder.gep(arr.data, [at])), i64)
                odd = builder.and_(nibble, const(1))
                row = builder.lshr(builder.xor(nibble, builder.mul(odd, const(15))), const(1))
                rows.append(builder.mul(builder.add(row, const(8 * q)), stride_))
                sign = builder.shl(builder.trunc(odd, int_t), ir.Constant(int_t, bits - 1))
                one = builder.insert_element(ir.Constant(int_vec, ir.Undefined), sign, ir.Constant(i32, 0))
                signs.append(builder.shuffle_vector(one, ir.Constant(int_vec, ir.Undefined), broadcast))
            dst = builder.add(builder.mul(k, o_size_), o0_)
            for v in range(n_vectors):
                o = const(v * lanes)
                t = [builder.bitcast(builder.xor(builder.load(builder.bitcast(
                    builder.gep(table_ptr, [builder.add(r, o)]), int_vec.as_pointer()), align=4), sign), vec)
                    for r, sign in zip(rows, signs)]
                total = builder.fadd(builder.fadd(builder.fadd(t[0], t[1]), builder.fadd(t[2], t[3])),
                                     builder.fadd(builder.fadd(t[4], t[5]), builder.fadd(t[6], t[7])))
                out = builder.bitcast(builder.gep(out_ptr, [builder.add(dst, o)]), vec.as_pointer())
                if not store_only:
                    total = builder.fadd(builder.load(out, align=4), total)
                builder.store(total, out, align=4)
        return context.get_dummy_value()

    return sig, codegen


@intrinsic
def build_table(typingctx, g, r0, rows, o0, tables, t_off, stride, width):
    """``build_table(g, r0, rows, o0, tables, t_off, stride, width)`` from njit code (module
    docstring): ``g`` a 2-D float array whose rows are contiguous (``g.strides[1]`` its item size),
    ``tables`` a 1-D C-contiguous array of its dtype, ``width`` a compile-time constant multiple of
    the vector lanes. Row r0 must exist; nothing is checked."""
    if not isinstance(width, types.IntegerLiteral):
        raise TypingError(f"width must be a compile-time constant, got the type {width}")
    if not (isinstance(g, types.Array) and g.ndim == 2 and g.dtype in (types.float32, types.float64)
            and tables.dtype == g.dtype):
        raise TypingError(f"g must be a 2-D float32 or float64 array and tables of its dtype, got {g}, {tables}")
    lanes = VECTOR_BYTES // (g.dtype.bitwidth // 8)
    n_vectors, rest = divmod(width.literal_value, lanes)
    if rest or not n_vectors:
        raise TypingError(f"width must be a positive multiple of {lanes} for {g.dtype}, got {width.literal_value}")
    sig = types.void(g, r0, rows, o0, tables, t_off, stride, width)

    def codegen(context, builder, signature, args):
        tys = signature.args
        i64, i8 = ir.IntType(64), ir.IntType(8)
        vec = ir.VectorType(context.get_data_type(g.dtype), lanes)
        arr = cgutils.create_struct_proxy(tys[0])(context, builder, value=args[0])
        row_bytes = cgutils.unpack_tuple(builder, arr.strides, 2)[0]
        base = builder.bitcast(arr.data, i8.as_pointer())
        table_ptr = cgutils.create_struct_proxy(tys[4])(context, builder, value=args[4]).data
        r0_, rows_, o0_, t_off_, stride_ = (context.cast(builder, args[j], tys[j], types.int64)
                                            for j in (1, 2, 3, 5, 6))

        def const(v):
            return ir.Constant(i64, v)

        item = g.dtype.bitwidth // 8
        zero = ir.Constant(vec, None)
        first_row = builder.gep(base, [builder.add(builder.mul(r0_, row_bytes), builder.mul(o0_, const(item)))])
        for v in range(n_vectors):
            x = []
            for r in range(4):  # a missing row reads as zero: load row r0 (which exists) and discard it
                present = builder.icmp_signed("<", builder.add(r0_, const(r)), rows_)
                at = builder.select(present, builder.mul(const(r), row_bytes), const(0))
                ptr = builder.gep(first_row, [builder.add(at, const(v * lanes * item))])
                value = builder.load(builder.bitcast(ptr, vec.as_pointer()), align=item)
                x.append(builder.select(present, value, zero))
            level = [x[0]]
            for r in (1, 2, 3):  # entry j of a level: bit r' - 1 of j set where x_r' is subtracted
                level = [op(p, x[r]) for op in (builder.fadd, builder.fsub) for p in level]
            for j, value in enumerate(level):  # row j = T[2 j]
                at = builder.add(t_off_, builder.add(builder.mul(const(j), stride_), const(v * lanes)))
                builder.store(value, builder.bitcast(builder.gep(table_ptr, [at]), vec.as_pointer()), align=item)
        return context.get_dummy_value()

    return sig, codegen
