"""A packed model's GPU forward recorded once per input shape as a CUDA graph and replayed: one
graph launch instead of ~50 kernel launches, each of which costs the host tens of microseconds
of Python and Numba argument handling (at batch 1 that host time, not GPU work, was the model's
whole latency).

``GraphCache.run(x, forward)``, for an input shape seen for the first time:

1. copies ``x`` into an input buffer of its own and runs ``forward`` once normally on the cache's
   stream (``bitnet.kernels.cuda_launch.on_stream``): kernels compile, every activation buffer is
   allocated, constants are uploaded;
2. runs ``forward`` again between ``cuStreamBeginCapture`` and ``cuStreamEndCapture`` (thread-local
   capture mode: a stray allocation or synchronization inside the forward pass is an error, not a
   silent mistake), which records the same launches on the same buffers into a graph, checks that
   it returns the same output buffer, and instantiates the graph;

and for every call: copies ``x`` into the input buffer and launches the graph, all on the cache's
stream, and returns the output buffer (overwritten by the next call of that shape: the caller
copies it). The stream is a blocking one, so work the caller queues on the default stream before
and after is ordered with it.

The driver calls go through ``ctypes`` to ``libcuda`` (``DriverGraphs``); any failure to record
leaves the graph out (``GraphError``) and the model runs its launches one by one.
"""
from __future__ import annotations

import ctypes
import ctypes.util

from bitnet.kernels.cuda_launch import on_stream

CAPTURE_MODE_THREAD_LOCAL = 1   # CUstreamCaptureMode


class GraphError(RuntimeError):
    """A forward pass could not be recorded as a CUDA graph (the model then runs without one)."""


class DriverGraphs:
    """The CUDA driver's stream-capture and graph calls, through ctypes (the same driver and
    context as Numba's)."""

    def __init__(self):
        name = ctypes.util.find_library("cuda") or "libcuda.so.1"
        try:
            self.lib = ctypes.CDLL(name)
        except OSError as e:
            raise GraphError(f"the CUDA driver library could not be loaded ({e})") from None
        vp, u64 = ctypes.c_void_p, ctypes.c_ulonglong
        pvp = ctypes.POINTER(vp)
        for fn, args in (("cuStreamBeginCapture_v2", [vp, ctypes.c_int]), ("cuStreamEndCapture", [vp, pvp]),
                         ("cuGraphInstantiateWithFlags", [pvp, vp, u64]), ("cuGraphLaunch", [vp, vp]),
                         ("cuGraphExecDestroy", [vp]), ("cuGraphDestroy", [vp])):
            try:
                f = getattr(self.lib, fn)
            except AttributeError:
                raise GraphError(f"this CUDA driver has no {fn} (CUDA 11.4 or newer is needed)") from None
            f.argtypes, f.restype = args, ctypes.c_int

    def _check(self, rc, what):
        if rc != 0:
            name = ctypes.c_char_p()
            self.lib.cuGetErrorName(rc, ctypes.byref(name))
            raise GraphError(f"{what} failed: {(name.value or b'?').decode()} (CUresult {rc})")

    def begin(self, stream):
        rc = self.lib.cuStreamBeginCapture_v2(_handle(stream), CAPTURE_MODE_THREAD_LOCAL)
        self._check(rc, "cuStreamBeginCapture")

    def end(self, stream):
        graph = ctypes.c_void_p()
        self._check(self.lib.cuStreamEndCapture(_handle(stream), ctypes.byref(graph)), "cuStreamEndCapture")
        return graph

    def instantiate(self, graph):
        exe = ctypes.c_void_p()
        self._check(self.lib.cuGraphInstantiateWithFlags(ctypes.byref(exe), graph, 0), "cuGraphInstantiate")
        return exe

    def launch(self, exe, stream):
        self._check(self.lib.cuGraphLaunch(exe, _handle(stream)), "cuGraphLaunch")

    def destroy(self, graph, exe):
        if exe is not None:
            self.lib.cuGraphExecDestroy(exe)
        if graph is not None:
            self.lib.cuGraphDestroy(graph)


def _handle(stream) -> int:
    """The raw CUstream of a numba stream (a ctypes pointer, or a cuda-bindings object)."""
    h = stream.handle
    h = getattr(h, "value", h)
    return int(h or 0)


def device_pointer(arr) -> int:
    """Where ``arr``'s data starts (in the simulator, whose arrays wrap NumPy arrays: in host memory)."""
    iface = getattr(arr, "__cuda_array_interface__", None) or arr.__array_interface__
    return int(iface["data"][0])


class GraphCache:
    """Recorded forward passes of one model, per input shape; see the module docstring."""

    def __init__(self, cuda, driver=None):
        self.cuda = cuda
        self.driver = DriverGraphs() if driver is None else driver
        self.stream = cuda.stream()
        self._graphs = {}     # (shape, dtype) -> (graph, exec, input buffer, output buffer)

    def run(self, x, forward):
        key = (tuple(x.shape), x.dtype.str)
        entry = self._graphs.get(key)
        if entry is None:
            entry = self._graphs[key] = self._record(x, forward)
        _, exe, inp, out = entry
        inp.copy_to_device(x, stream=self.stream)
        self.driver.launch(exe, self.stream)
        return out

    def _record(self, x, forward):
        inp = self.cuda.device_array(x.shape, x.dtype)
        inp.copy_to_device(x, stream=self.stream)
        with on_stream(self.stream):
            warm = forward(inp)
        self.stream.synchronize()
        self.driver.begin(self.stream)
        try:
            with on_stream(self.stream):
                out = forward(inp)
        except Exception as e:
            try:   # always end: a stream left capturing fails every later call on it
                self.driver.destroy(self.driver.end(self.stream), None)
            except GraphError:
                pass
            raise GraphError(f"the forward pass could not be recorded: {type(e).__name__}: {e}") from e
        graph = self.driver.end(self.stream)
        exe = None
        try:
            if device_pointer(out) != device_pointer(warm):
                raise GraphError("the recorded forward pass wrote its output to another buffer than the first run")
            exe = self.driver.instantiate(graph)
        except BaseException:
            self.driver.destroy(graph, exe)
            raise
        return graph, exe, inp, out

    def close(self):
        """Free every recorded graph (the buffers stay with the model)."""
        for graph, exe, _, _ in self._graphs.values():
            self.driver.destroy(graph, exe)
        self._graphs.clear()

    def __len__(self):
        return len(self._graphs)
