"""An atomic counter for bitnet's threads: ``fetch_add(counter, i, v)`` adds ``v`` to ``counter[i]``
(int64) and returns the value before, as one indivisible step (LLVM ``atomicrmw add``, a ``lock
xadd`` on x86), so that the threads running one kernel (``bitnet.kernels.threads.run``) hand out
work dynamically; ``claim(counter, chunk, n)`` takes the next ``chunk`` items of ``range(n)``:

    lo, hi = claim(counter, chunk, n)
    while lo < n:
        for i in range(lo, hi): ...
        lo, hi = claim(counter, chunk, n)

or, where each item is a sizeable piece of work (a channel, an image plane), the generator
``for i in claimed(counter, chunk, n):``. A thread slowed down by another process on a shared
machine then simply takes fewer items,
where a static split would leave the others waiting for it at the end.
"""
from __future__ import annotations

import numba as nb
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic


@intrinsic
def fetch_add(typingctx, counter, index, value):
    if not (isinstance(counter, types.Array) and counter.dtype == types.int64):
        return None
    sig = types.int64(counter, index, value)

    def codegen(context, builder, signature, args):
        arr, i, v = args
        data = cgutils.create_struct_proxy(signature.args[0])(context, builder, value=arr).data
        i = context.cast(builder, i, signature.args[1], types.int64)
        v = context.cast(builder, v, signature.args[2], types.int64)
        return builder.atomic_rmw("add", builder.gep(data, [i]), v, "seq_cst")

    return sig, codegen


@nb.njit(inline="always")
def claim(counter, chunk, n):
    """``(lo, hi)``: the next ``chunk`` items of ``range(n)`` for this thread; ``lo >= n`` when none
    are left."""
    lo = fetch_add(counter, 0, chunk)
    return lo, min(n, lo + chunk)


@nb.njit
def claimed(counter, chunk, n):
    """The items of ``range(n)`` this thread claims, ``chunk`` at a time (a generator; for loops
    whose items are sizeable pieces of work)."""
    lo = fetch_add(counter, 0, chunk)
    while lo < n:
        for i in range(lo, min(n, lo + chunk)):
            yield i
        lo = fetch_add(counter, 0, chunk)
