"""``GradientAverager``: every ``backward()`` ends with each parameter's gradient averaged over the ranks.

With N ranks, rank r computes g_p^(r), the gradient of its own loss (the mean over its B/N samples of
the global batch); the gradient of the global loss (the mean over all B samples) is their mean:

    g_p  <-  (1/N) sum_r g_p^(r)        (the sum by MPI_Allreduce, then divided by N)

after which every rank holds the same gradients, takes the same optimizer step and keeps the same
optimizer state (the parameters are broadcast from rank 0 first, ``broadcast_state``).

**Buckets.** The parameters are grouped, in reverse order of registration (the order their gradients
become final in backward: the last layer's first), into buckets of about ``bucket_bytes`` (1 MiB by
default; a larger parameter is a bucket of its own), each a flat buffer of its dtype: one allreduce per
bucket, not per tensor. Each bucket's buffer ends with one slot per parameter, 1 where this rank has a
gradient for it and 0 where not; after the sum that slot counts the ranks that had one. A parameter no
rank had a gradient for keeps ``grad = None`` (the optimizer skips it, as in one process); one that only
some ranks had gets the sum over those ranks divided by N (the others count as 0).

**Overlap.** A post-accumulate gradient hook on every parameter (``bitnet.tensor``) marks it ready the
moment its gradient is final; a bucket whose parameters are all ready starts its allreduce
(non-blocking) while backward goes on with the layers below, and every hook lets MPI progress the
started ones. Buckets start strictly in bucket order (MPI needs the same sequence of collectives on
every rank, whatever order the hooks fire in). When backward has finished (``queue_callback``), the
buckets not yet started are started, all are waited for, and the averages are written into
``p.grad``. So ``loss.backward()`` returns with averaged gradients and the training loop is unchanged.
With ``overlap=False`` all buckets start after backward (the same sums, later).

Accumulating over several ``backward()`` calls before a step averages after each of them, which gives
the average of the sum (averaging is linear); ``with averager.no_sync():`` skips the averaging of the
backward passes inside it (the next one outside averages everything accumulated).
"""
from __future__ import annotations

import contextlib
import time

import numpy as np

from bitnet.distributed.state import broadcast_state
from bitnet.tensor import Parameter, queue_callback
from bitnet.tensor import _state as _tensor_state  # the running backward pass's callback list


class _Bucket:
    def __init__(self, index, params, comm):
        self.index, self.params = index, params
        self.sizes = [p.data.size for p in params]
        self.offsets = np.concatenate([[0], np.cumsum(self.sizes)]).astype(int)
        self.total = int(self.offsets[-1])
        self.buffer = comm.empty(self.total + len(params), params[0].data.dtype)
        self.ready = 0
        self.request = None

    def pack(self):
        buf, n = self.buffer, self.total
        for i, p in enumerate(self.params):
            part = buf[self.offsets[i]:self.offsets[i + 1]]
            if p.grad is None:
                part[...] = 0
                buf[n + i] = 0
            else:
                part[...] = np.asarray(p.grad).reshape(-1)
                buf[n + i] = 1

    def unpack(self, size):
        buf, n = self.buffer, self.total
        for i, p in enumerate(self.params):
            if buf[n + i] == 0:  # no rank had a gradient for it
                p.grad = None
                continue
            part = buf[self.offsets[i]:self.offsets[i + 1]].reshape(p.data.shape)
            g = p.grad
            if isinstance(g, np.ndarray) and g.flags.writeable and g.dtype == part.dtype and g.shape == part.shape:
                np.divide(part, size, out=g)
            else:
                p.grad = part / size


class GradientAverager:
    """Average the gradients of ``model``'s parameters (a Module, or a list of Parameters) over the
    ranks of ``comm`` at the end of every ``backward()`` (module docstring). ``broadcast``: give every
    rank rank 0's parameters and buffers first. ``close()`` (or a ``with`` block) removes the hooks.

    ``seconds``: time spent so far ``{"pack": copying gradients into buckets and starting their
    allreduce, "wait": waiting for the allreduces after backward, "unpack": writing the averages}``;
    ``steps``: backward passes averaged."""

    def __init__(self, model, comm, bucket_bytes: int = 1 << 20, overlap: bool = True, broadcast: bool = True):
        from bitnet.nn.module import Module
        params = list(model.parameters()) if isinstance(model, Module) else list(model)
        params = [p for p in params if p.requires_grad]
        for i, p in enumerate(params):
            if not isinstance(p, Parameter):
                raise TypeError(f"GradientAverager: parameter {i} is a {type(p).__name__}, expected a "
                                "bitnet Parameter (pass model or list(model.parameters()))")
        if int(bucket_bytes) < 1:
            raise ValueError(f"GradientAverager: bucket_bytes must be >= 1, got {bucket_bytes!r}")
        self.comm, self.overlap = comm, bool(overlap)
        self.params = params
        self.buckets = self._make_buckets(params[::-1], int(bucket_bytes))
        self._bucket_of = {id(p): b for b in self.buckets for p in b.params}
        self.seconds = {"pack": 0.0, "wait": 0.0, "unpack": 0.0}
        self.steps = 0
        self._active, self._pass = False, None
        self._next = 0
        self._sync = True
        self._handles = []
        if broadcast:
            broadcast_state(model, comm)
        if comm.size > 1:
            self._handles = [p.register_post_accumulate_grad_hook(self._on_grad) for p in params]

    def _make_buckets(self, params, cap):
        groups, current, size = [], [], 0
        for p in params:
            nbytes = p.data.nbytes
            if current and (size + nbytes > cap or p.data.dtype != current[0].data.dtype):
                groups.append(current)
                current, size = [], 0
            current.append(p)
            size += nbytes
        if current:
            groups.append(current)
        return [_Bucket(i, g, self.comm) for i, g in enumerate(groups)]

    @property
    def gradient_bytes(self) -> int:
        """Bytes reduced per step (the gradients and the per-parameter flags)."""
        return int(sum(b.buffer.nbytes for b in self.buckets))

    @contextlib.contextmanager
    def no_sync(self):
        """Backward passes inside the block accumulate local gradients without averaging them."""
        previous, self._sync = self._sync, False
        try:
            yield
        finally:
            self._sync = previous

    # -- one backward pass -------------------------------------------------------------------------
    def _on_grad(self, param):
        if not self._sync:
            return
        if not self._active or self._pass is not _tensor_state.callbacks:  # a new backward pass (the
            self._active, self._next = True, 0                           # last one may have raised)
            self._pass = _tensor_state.callbacks
            for b in self.buckets:
                b.ready, b.request = 0, None
            queue_callback(self._finish)
        bucket = self._bucket_of[id(param)]
        bucket.ready += 1
        if self.overlap:
            self._start_ready()
            for b in self.buckets[:self._next]:
                b.request.test()  # lets MPI progress the reductions already started

    def _start(self, bucket):
        t = time.perf_counter()
        bucket.pack()
        bucket.request = self.comm.iallreduce(
            bucket.buffer, what=f"the gradient allreduce (bucket {bucket.index + 1} of {len(self.buckets)})")
        self.seconds["pack"] += time.perf_counter() - t

    def _start_ready(self):
        while self._next < len(self.buckets) and self.buckets[self._next].ready == len(self.buckets[self._next].params):
            self._start(self.buckets[self._next])
            self._next += 1

    def _finish(self):
        try:
            while self._next < len(self.buckets):
                self._start(self.buckets[self._next])
                self._next += 1
            t = time.perf_counter()
            for b in self.buckets:
                b.request.wait()
            t2 = time.perf_counter()
            for b in self.buckets:
                b.unpack(self.comm.size)
            self.seconds["wait"] += t2 - t
            self.seconds["unpack"] += time.perf_counter() - t2
            self.steps += 1
        finally:
            self._active = False

    def close(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __repr__(self):
        return (f"GradientAverager({len(self.params)} parameters in {len(self.buckets)} buckets, "
                f"{self.gradient_bytes} bytes, {self.comm.size} ranks)")
