"""Batches copied to the GPU one step ahead: ``DataLoader(..., device="cuda")`` and ``fit(device=)``.

``DevicePrefetcher(source, device)`` iterates any re-iterable ``source`` of ``(x, y)`` host batches
(a ``DataLoader``, a list, your own loader) and yields them as device arrays. A background thread
takes the next batch from ``source`` (so its gathering and transform run there too), copies it to the
device on a CUDA stream of its own (after the work already queued for the step: ``_mover``), waits
for that copy, and hands the batch over through a queue of
``depth`` batches: while the training step computes on batch i, batch i+1 is being prepared and
copied. Batches come out in ``source``'s order; an exception in ``source`` is raised in the consuming
thread, at the batch where it happened. Leaving the loop early (``break``) stops the thread.

On the CPU (``device="cpu"``) batches pass through unchanged, with no thread.
"""
from __future__ import annotations

import contextvars
import queue
import threading

from bitnet.backend import check_device

__all__ = ["DevicePrefetcher", "on_device"]

_END = object()


class _Failure:
    def __init__(self, error):
        self.error = error


class DevicePrefetcher:
    """Iterate ``source``'s ``(x, y)`` batches on ``device``, the next ``depth`` copied ahead (module docstring)."""

    def __init__(self, source, device: str, depth: int = 1):
        check_device(device, "DevicePrefetcher")
        if isinstance(depth, bool) or not isinstance(depth, int) or depth < 1:
            raise ValueError(f"DevicePrefetcher: depth must be an integer >= 1, got {depth!r}")
        self.source, self.device, self.depth = source, device, depth

    def __len__(self) -> int:
        return len(self.source)

    def __getattr__(self, name):  # batch_size, dataset ... of the wrapped loader
        if name == "source":
            raise AttributeError(name)
        return getattr(self.source, name)

    def __iter__(self):
        if self.device == "cpu":
            yield from self.source
            return
        from bitnet.gpu.arrays import xp
        module = xp()  # CudaUnavailableError here, in the caller's thread, when there is no GPU
        compute = None if module is _emulation() else module.cuda.get_current_stream()  # the step's stream
        handoff = queue.Queue(maxsize=self.depth)
        stop = threading.Event()
        # the thread runs in a copy of this context: bitnet.gpu.arrays.emulate() and the like carry over
        worker = threading.Thread(target=contextvars.copy_context().run, args=(self._work, handoff, stop, compute),
                                  name="bitnet-prefetch", daemon=True)
        worker.start()
        try:
            while True:
                item = handoff.get()
                if item is _END:
                    return
                if isinstance(item, _Failure):
                    raise item.error
                yield item
        finally:
            stop.set()
            while worker.is_alive():  # unblock a worker waiting on a full queue
                try:
                    handoff.get(timeout=0.05)
                except queue.Empty:
                    pass
            worker.join()

    def _work(self, handoff, stop, compute):
        def put(item):
            while not stop.is_set():
                try:
                    handoff.put(item, timeout=0.05)
                    return True
                except queue.Full:
                    continue
            return False
        try:
            move = _mover(compute)
            for batch in self.source:
                if stop.is_set():
                    return
                if not put(tuple(move(a) for a in batch)):
                    return
            put(_END)
        except BaseException as e:  # noqa: BLE001 - handed to the consuming thread
            put(_Failure(e))


def _emulation():
    from bitnet.gpu import emulated
    return emulated.xp


def _mover(compute):
    """A function copying one host array to the device and returning once the copy is complete: on
    CuPy through a non-blocking stream of this thread's own (the training step's stream ``compute``
    is not held up), on the emulation a plain copy.

    CuPy's memory pool keeps one arena per stream: a batch allocated on the copy stream goes back to
    that arena when the loop drops it, and the next copy may get the same memory while kernels
    queued on ``compute`` still read it (CuPy, unlike PyTorch's ``record_stream``, has no way to say
    that another stream uses a block). So each copy first waits, on the device, for the work queued
    on ``compute`` so far (an event; the host does not wait): every kernel that read a block freed
    before this copy was queued before it."""
    from bitnet.gpu.arrays import to_device, xp
    module = xp()
    if module is _emulation():
        return lambda a: to_device(a, "cuda")
    stream = module.cuda.Stream(non_blocking=True)

    def move(a):
        stream.wait_event(compute.record())
        with stream:
            out = to_device(a, "cuda")
        stream.synchronize()
        return out
    return move


def on_device(loader, device):
    """``loader`` yielding its batches on ``device``: itself when it does already (a ``DataLoader`` built
    with that device, or ``device`` None or "cpu"), else a ``DevicePrefetcher`` around it."""
    if device in (None, "cpu") or loader is None or getattr(loader, "device", None) == device:
        return loader
    return DevicePrefetcher(loader, device)
