"""An atomic counter for Numba's CPU threads: ``fetch_add(counter, i, v)`` adds ``v`` to
``counter[i]`` (int64) and returns the value before, as one indivisible step (LLVM ``atomicrmw
add``, a ``lock xadd`` on x86), so that threads inside a ``prange`` can hand out work dynamically:

    counter = np.zeros(1, np.int64)
    for t in prange(n_threads):
        while (task := fetch_add(counter, 0, 1)) < n_tasks: ...

A thread slowed down by another process on a shared machine then simply takes fewer tasks,
where a static split would leave the others waiting for it at the end.
"""
from __future__ import annotations

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
