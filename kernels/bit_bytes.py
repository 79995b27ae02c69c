"""A 64-bit word's bits spread over 64 bytes in one vector operation (LLVM IR through a Numba
intrinsic), for ``kernels.sign_tables.lower_signs``:

    or_bit_bytes(dst, at, word, r):    dst[at + b] |= ((word >> b) & 1) << r,    b < 64

The word becomes a ``<64 x i1>`` vector, widened to ``<64 x i8>`` (with AVX-512BW: kmov + vpmovm2b;
elsewhere LLVM's shuffle / compare sequence), shifted by r and OR-ed into the 64 bytes with one
load and one store, where a loop takes a shift, a mask and an OR per bit.
"""
from __future__ import annotations

from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.core.errors import TypingError
from numba.extending import intrinsic


@intrinsic
def or_bit_bytes(typingctx, dst, at, word, r):
    """See the module docstring: ``dst`` a uint8 array whose 64 bytes from element ``at`` are
    contiguous (the caller guarantees them), ``word`` a uint64, ``r`` the shift (0 to 7)."""
    if not (isinstance(dst, types.Array) and dst.dtype == types.uint8):
        raise TypingError(f"dst must be a uint8 array, got {dst}")
    sig = types.void(dst, at, word, r)

    def codegen(context, builder, signature, args):
        tys = signature.args
        i1, i8 = ir.IntType(1), ir.IntType(8)
        bytes_t = ir.VectorType(i8, 64)
        base = cgutils.create_struct_proxy(tys[0])(context, builder, value=args[0]).data
        at_ = context.cast(builder, args[1], tys[1], types.int64)
        word = builder.bitcast(context.cast(builder, args[2], tys[2], types.uint64), ir.VectorType(i1, 64))
        shift = builder.trunc(context.cast(builder, args[3], tys[3], types.int64), i8)
        splat = builder.insert_element(ir.Constant(bytes_t, ir.Undefined), shift, ir.Constant(ir.IntType(32), 0))
        splat = builder.shuffle_vector(splat, ir.Constant(bytes_t, ir.Undefined),
                                       ir.Constant(ir.VectorType(ir.IntType(32), 64), None))
        bits = builder.shl(builder.zext(word, bytes_t), splat)
        ptr = builder.bitcast(builder.gep(base, [at_]), bytes_t.as_pointer())
        builder.store(builder.or_(builder.load(ptr, align=1), bits), ptr, align=1)
        return context.get_dummy_value()

    return sig, codegen
