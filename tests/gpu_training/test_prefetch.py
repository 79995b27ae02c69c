"""Batches moved to "cuda" one step ahead (bitnet.data.DevicePrefetcher, DataLoader(device=)), on the
NumPy emulation of the GPU arrays."""
from __future__ import annotations

import sys
import threading

import numpy as np
import pytest

import bitnet
from bitnet.data import DataLoader, DevicePrefetcher
from bitnet.gpu.arrays import emulate, is_device_array, to_host


def _data(n=10):
    x = np.arange(n * 4, dtype=np.float32).reshape(n, 1, 2, 2)
    return x, np.arange(n) % 3


def test_dataloader_on_cuda_yields_the_host_batches_as_device_arrays_in_order():
    x, y = _data()
    host = DataLoader((x, y), batch_size=3, shuffle=True, rng=5)
    with emulate():
        dev = DataLoader((x, y), batch_size=3, shuffle=True, rng=5, device="cuda")
        assert len(dev) == len(host) == 4
        for epoch in range(2):  # a new permutation each epoch, the same as the host loader's
            got = list(dev)
            want = list(host)
            assert len(got) == len(want)
            for (gx, gy), (hx, hy) in zip(got, want):
                assert is_device_array(gx) and is_device_array(gy)
                assert gx.dtype == np.float32 and gy.dtype == np.int64
                np.testing.assert_array_equal(to_host(gx), hx)
                np.testing.assert_array_equal(to_host(gy), hy)


def test_an_error_in_the_source_reaches_the_loop_at_its_batch():
    def batches():
        yield _data(2)
        raise OSError("disk gone")

    class Source:
        def __iter__(self):
            return batches()

        def __len__(self):
            return 2

    with emulate():
        it = iter(DevicePrefetcher(Source(), "cuda", depth=2))
        first = next(it)
        assert is_device_array(first[0])
        with pytest.raises(OSError, match="disk gone"):
            next(it)


def test_leaving_the_loop_early_stops_the_copying_thread():
    x, y = _data(40)
    before = threading.active_count()
    with emulate():
        loader = DataLoader((x, y), batch_size=2, device="cuda")
        for i, _ in enumerate(loader):
            if i == 1:
                break
    assert threading.active_count() == before


def test_cpu_passes_batches_through_and_bad_arguments_are_refused():
    x, y = _data()
    loader = DataLoader((x, y), batch_size=4)
    same = list(DevicePrefetcher(loader, "cpu"))
    assert all(type(a) is np.ndarray for b in same for a in b) and len(same) == 3
    assert DevicePrefetcher(loader, "cpu").batch_size == 4  # the wrapped loader's attributes show through
    with pytest.raises(ValueError, match="device must be 'cpu' or 'cuda', got 'gpu'"):
        DevicePrefetcher(loader, "gpu")
    with pytest.raises(ValueError, match="depth must be an integer >= 1, got 0"):
        DevicePrefetcher(loader, "cuda", depth=0)
    with pytest.raises(ValueError, match="device must be None, 'cpu' or 'cuda', got 'tpu'"):
        DataLoader((x, y), batch_size=4, device="tpu")


def test_cuda_batches_without_a_gpu_say_what_is_missing(monkeypatch):
    monkeypatch.delenv("NUMBA_ENABLE_CUDASIM", raising=False)
    monkeypatch.setitem(sys.modules, "cupy", None)
    loader = DataLoader(_data(), batch_size=4, device="cuda")
    with pytest.raises(bitnet.CudaUnavailableError, match="needs CuPy"):
        next(iter(loader))


def test_the_next_batch_is_prepared_while_the_loop_holds_the_current_one():
    asked = [threading.Event() for _ in range(3)]

    class Source:
        def __len__(self):
            return 3

        def __iter__(self):
            for i in range(3):
                asked[i].set()  # the prefetcher asks for batch i
                yield _data(2)

    with emulate():
        it = iter(DevicePrefetcher(Source(), "cuda", depth=1))
        next(it)  # batch 0 in the loop's hands, its step not finished
        # batch 1 is gathered and copied without waiting for the loop to ask for it
        assert asked[1].wait(timeout=30), "the prefetcher did not start on batch 1 while batch 0 was in use"
        assert len(list(it)) == 2


class _FakeCuda:
    """Stands in for cupy.cuda (streams and events), logging the calls in order: what the prefetcher asks
    of the device when it copies a batch. The copies themselves are the emulation's."""

    def __init__(self, log):
        self.log = log
        self.compute = _FakeStream("compute", log)

    def get_current_stream(self):
        return self.compute

    def Stream(self, non_blocking=False):  # noqa: N802 - cupy.cuda.Stream
        self.log.append(("new stream", non_blocking))
        return _FakeStream("copy", self.log)


class _FakeStream:
    def __init__(self, name, log):
        self.name, self.log, self.events = name, log, 0

    def record(self):
        self.events += 1
        event = f"{self.name} event {self.events}"
        self.log.append((self.name, "record", event))
        return event

    def wait_event(self, event):
        self.log.append((self.name, "wait", event))

    def __enter__(self):
        self.log.append((self.name, "enter"))

    def __exit__(self, *exc):
        self.log.append((self.name, "exit"))

    def synchronize(self):
        self.log.append((self.name, "synchronize"))


def test_each_copy_waits_on_the_device_for_the_steps_queued_work(monkeypatch):
    """CuPy's pool hands the copy stream memory that earlier batches held, which kernels queued on the
    training step's stream may still read: every copy is ordered after that work (an event), on its
    own non-blocking stream, and handed over only once complete."""
    import bitnet.data.prefetch as prefetch
    from bitnet.gpu import emulated
    log = []
    fake = emulated._Namespace(np, asarray=emulated.asarray, ndarray=emulated.EmulatedArray,
                               cuda=_FakeCuda(log), __name__="fake cupy")
    monkeypatch.setattr("bitnet.gpu.arrays.xp", lambda: fake)
    monkeypatch.setattr(prefetch, "_emulation", lambda: emulated.xp)  # the stand-in is "CuPy", not the emulation
    batches = list(DevicePrefetcher([_data(2), _data(3)], "cuda"))
    assert [b[0].shape for b in batches] == [(2, 1, 2, 2), (3, 1, 2, 2)]
    assert log[0] == ("new stream", True)
    expect = []  # x then y of batch 0, then of batch 1: each after an event of its own
    for n in range(1, 5):
        expect += [("compute", "record", f"compute event {n}"), ("copy", "wait", f"compute event {n}"),
                   ("copy", "enter"), ("copy", "exit"), ("copy", "synchronize")]
    assert log[1:] == expect, log
