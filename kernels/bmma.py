"""The 1-bit tensor-core MMA (``mma.sync.aligned.m16n8k256.row.col.s32.b1.b1.s32.and.popc``, compute
capability 8.0 and newer) as a Numba intrinsic, its fragment layout, and an emulation of it for
Numba's CUDA simulator (which cannot run an MMA).

One MMA is a warp-wide instruction: the 32 lanes together hold a 16 x 256-bit tile of A (16 rows),
a 256-bit x 8 tile of B (8 columns, i.e. 8 filter rows of the packed weights) and a 16 x 8 int32
tile of C, and compute::

    D[r, c] = C[r, c] + popcount(A[r, :] AND B[:, c])          (r < 16, c < 8, over 256 bits)

Fragment layout (PTX ISA, "Matrix Fragments for mma.m16n8k256"; .b1 elements, 32 per .b32
register, low bit first). With ``g = lane >> 2`` (the group) and ``t = lane & 3`` (the thread in
the group), a 256-bit row chunk seen as eight 32-bit words ``w[0..7]``:

    A (row-major): a0 = row g,     w[t]      a1 = row g + 8, w[t]
                   a2 = row g,     w[4 + t]  a3 = row g + 8, w[4 + t]
    B (col-major): b0 = column g,  w[t]      b1 = column g,  w[4 + t]
    C, D:          c0 = (g, 2t)    c1 = (g, 2t + 1)    c2 = (g + 8, 2t)    c3 = (g + 8, 2t + 1)

so the four lanes of a group split each row's (and column's) 256 bits the same way, and lane
``(g, t)``'s A and B registers cover the same bits of K. ``a_slot``, ``b_slot`` and ``c_slot`` below
compute this table, ``a_home`` and ``b_home`` its inverse (where a word goes: the kernels of
``bitnet.kernels.xnor_mma`` store each stage in shared memory in fragment order with them, so that
a lane loads its four A registers, or two B registers, with one vector load); the emulation and
the NumPy model of the instruction in the tests read the table back.

The packed bit convention (bit 1 = -1) turns an AND count into the +-1 dot product::

    popc(a XOR b) = popc(a) + popc(b) - 2 popc(a AND b),     dot = K - 2 popc(a XOR b)

(an identity for any bits: padding bits cancel as they do in the XOR kernels). AND rather than
XOR: on sm_90 ``.xor.popc`` compiles to two emulated AND MMAs (measured on an H200: 1,665 against
10,270 TOPS).

``mma_and_popc`` is an intrinsic that emits the instruction as inline PTX into the kernel's own
code: NVVM keeps the accumulators in registers and schedules around it, which a linked device
function (a real call, no inlining across modules) would not allow. ``mma_and_popc_emulated``
computes the same D through shared memory, one lane's view at a time (``scratch`` is a
``(warps, 32, 6)`` uint32 shared array; every thread of the block must call it, as with
``syncthreads``); the kernels take either, with the same arguments.
"""
from __future__ import annotations

import numba as nb
from llvmlite import ir
from numba import cuda, int32, types, uint32
from numba.core.extending import intrinsic

M, N, K_BITS = 16, 8, 256          # the MMA's shape
K_WORDS32 = K_BITS // 32           # 32-bit words of one row chunk
MMA_PTX = "mma.sync.aligned.m16n8k256.row.col.s32.b1.b1.s32.and.popc"
MIN_COMPUTE_CAPABILITY = (8, 0)


@nb.njit(inline="always")
def a_slot(lane, reg):
    """A register ``reg`` (0..3) of ``lane``: (row 0..15 of the tile, 32-bit word 0..7 of the chunk)."""
    return (lane >> 2) + 8 * (reg & 1), (lane & 3) + 4 * (reg >> 1)


@nb.njit(inline="always")
def b_slot(lane, reg):
    """B register ``reg`` (0..1) of ``lane``: (column 0..7 of the tile, 32-bit word 0..7 of the chunk)."""
    return lane >> 2, (lane & 3) + 4 * reg


@nb.njit(inline="always")
def c_slot(lane, reg):
    """C / D register ``reg`` (0..3) of ``lane``: (row 0..15, column 0..7) of the 16 x 8 tile."""
    return (lane >> 2) + 8 * (reg >> 1), 2 * (lane & 3) + (reg & 1)


@nb.njit(inline="always")
def a_home(row, word):
    """Where A's element block (row 0..15, 32-bit word 0..7 of the chunk) lives: (lane, register),
    the inverse of ``a_slot``."""
    return (row & 7) * 4 + (word & 3), (row >> 3) + 2 * (word >> 2)


@nb.njit(inline="always")
def b_home(col, word):
    """Where B's (column 0..7, 32-bit word 0..7) lives: (lane, register), the inverse of ``b_slot``."""
    return col * 4 + (word & 3), word >> 2


@intrinsic
def mma_and_popc(typingctx, scratch, warp, lane, c0, c1, c2, c3, a0, a1, a2, a3, b0, b1):
    """``(d0, d1, d2, d3) = mma_and_popc(scratch, warp, lane, c0..c3, a0..a3, b0, b1)``: one
    m16n8k256 AND-popcount MMA of the warp (``scratch``, ``warp`` and ``lane`` are unused: they
    keep the call the same as the emulation's)."""
    ret = types.UniTuple(int32, 4)
    sig = ret(scratch, warp, lane, int32, int32, int32, int32, uint32, uint32, uint32, uint32, uint32, uint32)

    def codegen(context, builder, signature, args):
        i32 = ir.IntType(32)
        c, a, b = args[3:7], args[7:11], args[11:13]
        fnty = ir.FunctionType(ir.LiteralStructType([i32] * 4), [i32] * 10)
        # $0..$3 = d, $4..$7 = a, $8..$9 = b, and c in the same registers as d (the constraints "0".."3"
        # tie them: accumulate in place, no copies); no side effects: NVVM may schedule it freely
        asm = ir.InlineAsm(fnty, MMA_PTX + " {$0,$1,$2,$3}, {$4,$5,$6,$7}, {$8,$9}, {$0,$1,$2,$3};",
                           "=r,=r,=r,=r," + ",".join(["r"] * 6) + ",0,1,2,3")
        d = builder.call(asm, list(a) + list(b) + list(c))
        return context.make_tuple(builder, ret, [builder.extract_value(d, i) for i in range(4)])
    return sig, codegen


@cuda.jit(device=True)
def mma_and_popc_emulated(scratch, warp, lane, c0, c1, c2, c3, a0, a1, a2, a3, b0, b1):
    """The same D as ``mma_and_popc``, from each lane's fragments written to ``scratch[warp, lane]``
    and read back through the layout table: lane L's D[r, c] sums, over the four lanes of row r's
    group and of column c's group, popc of the A and B registers that cover the same bits."""
    scratch[warp, lane, 0] = a0
    scratch[warp, lane, 1] = a1
    scratch[warp, lane, 2] = a2
    scratch[warp, lane, 3] = a3
    scratch[warp, lane, 4] = b0
    scratch[warp, lane, 5] = b1
    cuda.syncthreads()
    d0, d1, d2, d3 = c0, c1, c2, c3
    for reg in range(4):
        r, c = c_slot(lane, reg)
        s = int32(0)
        for j in range(4):       # the lanes (r % 8, j) and (c, j) of the A and B groups
            la, lb = 4 * (r % 8) + j, 4 * c + j
            s += cuda.popc(scratch[warp, la, r // 8] & scratch[warp, lb, 4])       # words j: a0 / a1 with b0
            s += cuda.popc(scratch[warp, la, 2 + r // 8] & scratch[warp, lb, 5])   # words 4 + j: a2 / a3 with b1
        if reg == 0:
            d0 += s
        elif reg == 1:
            d1 += s
        elif reg == 2:
            d2 += s
        else:
            d3 += s
    cuda.syncthreads()
    return d0, d1, d2, d3
