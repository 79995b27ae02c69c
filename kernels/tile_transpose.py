"""A square tile transposed in vector registers (LLVM IR through a Numba intrinsic), for the layout
moves NCHW <-> NHWC (``kernels.im2col.transpose_inner``).

``transpose_tile(a, a_at, a_row, bias, b_at, out, o_at, o_row, lanes)`` with L = ``lanes``, every
offset and row length in bytes from the start of its array's data (so any array whose rows are
contiguous will do, whatever its other strides), x[at] the element at byte ``at`` of x:

    out[o_at + c * o_row + r * item] = a[a_at + r * a_row + c * item] + bias[b_at + c * item],    r, c < L

It loads the L rows as ``<L x float>`` vectors, adds the bias vector, and transposes them in
log2(L) stages: stage k swaps bit k of the row index with bit k of the column index, each pair of
rows r, r | 2^k (bit k of r clear) becoming two shuffles of the two vectors,

    new[r][c]       = old[r][c]               if bit k of c is clear, else old[r | 2^k][c ^ 2^k]
    new[r | 2^k][c] = old[r][c | 2^k]         if bit k of c is clear, else old[r | 2^k][c]

so L log2(L) shuffles for L * L values, then stores the L columns as vectors. A loop of scalar
moves, even tile by tile, reads or writes one of the two arrays with a stride of a whole row per
element (resnet18-binary's (64, 1024, 64) float32 transpose: 5.1 ms, where copying the same 16 MB
takes 0.6 ms on the same core).
"""
from __future__ import annotations

from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.core.errors import TypingError
from numba.extending import intrinsic


def _shuffles(lanes: int, bit: int):
    """The two shuffle masks of one stage (indices into the concatenation of rows r and r | 2^bit)."""
    step = 1 << bit
    low = [c if not c & step else lanes + (c ^ step) for c in range(lanes)]
    high = [c | step if not c & step else lanes + c for c in range(lanes)]
    return low, high


@intrinsic
def transpose_tile(typingctx, a, a_at, a_row, bias, b_at, out, o_at, o_row, lanes):
    """See the module docstring. ``a``, ``bias``, ``out``: arrays of one float dtype; ``lanes``: the
    compile-time constant 4, 8 or 16. Nothing is checked: the caller guarantees the L x L tile
    inside both arrays, and L contiguous elements at every row start and at ``b_at``."""
    if not isinstance(lanes, types.IntegerLiteral) or lanes.literal_value not in (4, 8, 16):
        raise TypingError(f"lanes must be the compile-time constant 4, 8 or 16, got the type {lanes}")
    if a.dtype not in (types.float32, types.float64) or out.dtype != a.dtype or bias.dtype != a.dtype:
        raise TypingError(f"a, bias and out must be float32 or float64 arrays of one dtype, got {a}, {bias}, {out}")
    n = lanes.literal_value
    sig = types.void(a, a_at, a_row, bias, b_at, out, o_at, o_row, lanes)

    def codegen(context, builder, signature, args):
        tys = signature.args
        i8, i32, i64 = ir.IntType(8), ir.IntType(32), ir.IntType(64)
        item = a.dtype.bitwidth // 8
        vec = ir.VectorType(context.get_data_type(a.dtype), n)
        a_ptr, b_ptr, o_ptr = (
            builder.bitcast(cgutils.create_struct_proxy(tys[j])(context, builder, value=args[j]).data, i8.as_pointer())
            for j in (0, 3, 5))
        a_at_, a_row_, b_at_, o_at_, o_row_ = (context.cast(builder, args[j], tys[j], types.int64)
                                               for j in (1, 2, 4, 6, 7))

        def vector_at(ptr, at, row, r):
            offset = builder.add(at, builder.mul(ir.Constant(i64, r), row))
            return builder.bitcast(builder.gep(ptr, [offset]), vec.as_pointer())

        b = builder.load(vector_at(b_ptr, b_at_, b_at_, 0), align=item)
        rows = [builder.fadd(builder.load(vector_at(a_ptr, a_at_, a_row_, r), align=item), b) for r in range(n)]
        bit = 0
        while (1 << bit) < n:
            low, high = (ir.Constant(ir.VectorType(i32, n), [ir.Constant(i32, v) for v in m])
                         for m in _shuffles(n, bit))
            step = 1 << bit
            for r in range(n):
                if not r & step:
                    x, y = rows[r], rows[r | step]
                    rows[r], rows[r | step] = builder.shuffle_vector(x, y, low), builder.shuffle_vector(x, y, high)
            bit += 1
        for c in range(n):
            builder.store(rows[c], vector_at(o_ptr, o_at_, o_row_, c), align=item)
        return context.get_dummy_value()

    return sig, codegen
