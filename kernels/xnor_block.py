"""The XNOR-popcount micro-kernel: a ROWS x (VECS * lanes) block of popcounts in vector registers.

For ``ROWS = 4`` output pixels i (their activation words broadcast) and a *filter panel* of
``P = VECS * lanes`` filters c (for each K-word, the P filters' words contiguous), it computes

    acc[i, c] = sum_{t < n_taps} sum_{u < tap_words} popcount(a[a_off + taps[t] + i * a_stride + u]
                                                              XOR panel[panel_off + (t * tap_words + u) * P + c])

keeping the ROWS * VECS accumulators in registers for the whole K loop (K-words = n_taps *
tap_words). Per K-word: VECS vector loads of the panel, ROWS broadcasts of activation words and
ROWS * VECS xor + popcount + add. The caller turns popcounts into dot products (``K - 2 * acc``,
see ``bitnet.kernels.bits``).

The tap table makes the same kernel serve three layouts: im2col rows (one tap at offset 0,
``tap_words`` = the row length, ``a_stride`` = the row length), a 1x1 convolution read in place,
and an *implicit* convolution (``taps[t]`` = the offset of kernel tap t in the channels-last input,
``a_stride`` = the words between horizontally adjacent output pixels: no im2col at all).

Numba does not expose vector types, so the block is written in LLVM IR (``llvm.ctpop.v<lanes>i64``
on ``<lanes x i64>`` vectors) through ``numba.extending.intrinsic``; explicit 512-bit vectors give
``vpopcntq zmm`` whatever LLVM's preferred vector width for the CPU (its default tuning for recent
Xeons is 256 bits). The IR is the same for every CPU; what differs is the width that fits the
hardware: ``lanes = 8`` (512-bit) where the target has AVX-512 VPOPCNTDQ, ``lanes = 4`` (256-bit)
otherwise, where LLVM lowers ctpop to a shuffle-based popcount (``preferred_lanes``).
"""
from __future__ import annotations

from llvmlite import ir
from numba import types
from numba.core import cgutils, config
from numba.core.errors import TypingError
from numba.extending import intrinsic

ROWS = 4  # weight rows per block
VECS = 4  # vectors of panel columns per block


def target_cpu_features() -> str:
    """The LLVM feature string Numba compiles for (``NUMBA_CPU_FEATURES`` or the host's)."""
    if config.CPU_FEATURES is not None:
        return config.CPU_FEATURES
    from numba.core.codegen import get_host_cpu_features
    return get_host_cpu_features()


def has_vector_popcount(features: str | None = None) -> bool:
    """True where the compile target has 512-bit vector popcount (AVX-512 F + VPOPCNTDQ)."""
    feats = set((target_cpu_features() if features is None else features).split(","))
    return "+avx512f" in feats and "+avx512vpopcntdq" in feats


def preferred_lanes(features: str | None = None) -> int:
    """uint64 lanes per vector for the micro-kernel on this target: 8 (zmm) or 4 (ymm)."""
    return 8 if has_vector_popcount(features) else 4


def _data_pointer(context, builder, arrtype, value):
    return cgutils.create_struct_proxy(arrtype)(context, builder, value=value).data


def literal_rows(rows) -> int:
    """The rows a block computes: the value of the compile-time constant ``rows`` (1 to ``ROWS``)."""
    value = getattr(rows, "literal_value", None)
    if not isinstance(rows, types.IntegerLiteral) or not 1 <= value <= ROWS:
        raise TypingError(f"rows must be a compile-time constant from 1 to {ROWS}, got the type {rows}")
    return value


def literal_lanes(lanes) -> int:
    """The vector width a kernel is specialised for: the value of the compile-time constant
    ``lanes`` (a Numba ``IntegerLiteral`` type) passed to ``xnor_block`` / ``xnor_epilogue``."""
    value = getattr(lanes, "literal_value", None)
    if not isinstance(lanes, types.IntegerLiteral) or value not in (2, 4, 8):
        raise TypingError(f"lanes must be the compile-time constant 2, 4 or 8 (a closure variable or global "
                          f"int of the calling kernel), got the type {lanes}")
    return value


@intrinsic
def xnor_block(typingctx, a, a_off, a_stride, taps, n_taps, tap_words, panel, panel_off, acc, acc_off, lanes, rows):
    """The micro-kernel for ``lanes``-wide vectors, a Numba intrinsic callable from njit code::

        xnor_block(a, a_off, a_stride, taps, n_taps, tap_words, panel, panel_off, acc, acc_off, lanes, rows)

    ``a``, ``panel``: 1-D C-contiguous uint64 arrays, ``taps``: 1-D int64 (see the module
    docstring); ``acc``: 1-D int64 array receiving ``acc[acc_off + i * P + c]``; ``lanes``: a
    compile-time constant (2, 4 or 8: the caller's closure variable or global), so each width is
    its own specialisation and the calling kernel's cache entry is keyed by it; ``rows``: the rows
    i computed, a compile-time constant from 1 to ``ROWS`` (``ROWS`` for full blocks; 1 for a lone
    row, e.g. a dense layer at batch 1, which would otherwise pay for ``ROWS``). No bounds are
    checked: the caller guarantees ``rows`` readable rows and a full panel.
    """
    n_lanes = literal_lanes(lanes)
    n_rows = literal_rows(rows)
    width = n_lanes * VECS
    sig = types.void(a, a_off, a_stride, taps, n_taps, tap_words, panel, panel_off, acc, acc_off, lanes, rows)

    def codegen(context, builder, signature, args):
        tys = signature.args
        i64, i32 = ir.IntType(64), ir.IntType(32)
        vec = ir.VectorType(i64, n_lanes)
        ap, tp, pp, cp = (_data_pointer(context, builder, tys[j], args[j]) for j in (0, 3, 6, 8))
        a_off, a_stride, n_taps, tap_words, p_off, acc_off = (
            context.cast(builder, args[j], tys[j], types.int64) for j in (1, 2, 4, 5, 7, 9))
        ctpop = cgutils.get_or_insert_function(builder.module, ir.FunctionType(vec, [vec]),
                                               f"llvm.ctpop.v{n_lanes}i64")
        accs = [cgutils.alloca_once_value(builder, ir.Constant(vec, None)) for _ in range(n_rows * VECS)]
        rows = [builder.add(a_off, builder.mul(ir.Constant(i64, i), a_stride)) for i in range(n_rows)]
        splat = ir.Constant(ir.VectorType(i32, n_lanes), None)
        with cgutils.for_range(builder, n_taps) as taps_loop:
            t = taps_loop.index
            toff = builder.load(builder.gep(tp, [t]))
            k0 = builder.mul(t, tap_words)
            with cgutils.for_range(builder, tap_words) as loop:
                u = loop.index
                k = builder.add(k0, u)
                base = builder.add(p_off, builder.mul(k, ir.Constant(i64, width)))
                cols = [builder.load(builder.bitcast(
                    builder.gep(pp, [builder.add(base, ir.Constant(i64, j * n_lanes))]), vec.as_pointer()), align=8)
                    for j in range(VECS)]
                at = builder.add(toff, u)
                for i in range(n_rows):
                    word = builder.load(builder.gep(ap, [builder.add(rows[i], at)]))
                    w = builder.insert_element(ir.Constant(vec, ir.Undefined), word, ir.Constant(i32, 0))
                    w = builder.shuffle_vector(w, ir.Constant(vec, ir.Undefined), splat)
                    for j in range(VECS):
                        slot = accs[i * VECS + j]
                        count = builder.call(ctpop, [builder.xor(w, cols[j])])
                        builder.store(builder.add(builder.load(slot), count), slot)
        for i in range(n_rows):
            for j in range(VECS):
                dst = builder.gep(cp, [builder.add(acc_off, ir.Constant(i64, i * width + j * n_lanes))])
                builder.store(builder.load(accs[i * VECS + j]), builder.bitcast(dst, vec.as_pointer()), align=8)
        return context.get_dummy_value()

    return sig, codegen

