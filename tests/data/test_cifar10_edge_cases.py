"""CIFAR-10 reader edge cases: malformed labels, empty batches, which format wins, and python batches
(pickles) that declare more than they hold: every one a ``CIFARFormatError`` before anything large is
allocated (the allocation cases also run under an address-space cap)."""

import codecs
import pickle
import struct

import numpy as np
import pytest
from memory_limit import run_limited

from bitnet.data import CIFARFormatError, DatasetNotFoundError, UnsafePickleError, load_cifar10, read_cifar_python
from bitnet.data.cifar10 import RestrictedUnpickler

try:  # numpy >= 2
    from numpy._core.multiarray import _reconstruct
except ImportError:  # numpy 1.x
    from numpy.core.multiarray import _reconstruct

TRAIN = [f"data_batch_{i}" for i in range(1, 6)]


def write_py_batch(folder, name="test_batch", protocol=pickle.DEFAULT_PROTOCOL, **batch):
    """A python-format batch holding exactly ``batch`` (keys as bytes, as in the official files)."""
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / name, "wb") as f:
        pickle.dump({k.encode(): v for k, v in batch.items()}, f, protocol=protocol)
    return folder / name


def write_raw(folder, raw: bytes, name="test_batch"):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_bytes(raw)
    return folder / name


def images(n, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, 3072)).astype(np.uint8)


class Reduce:
    """Pickles as ``func(*args)`` (then ``__setstate__(state)`` when a state is given): a crafted batch."""

    def __init__(self, func, args, state=None):
        self.func, self.args, self.state = func, args, state

    def __reduce__(self):
        return (self.func, self.args) if self.state is None else (self.func, self.args, self.state)


# -- labels ----------------------------------------------------------------------------------------

def test_ragged_labels_are_a_format_error(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    write_py_batch(folder, data=images(3), labels=[[1], [2, 3], [3]])
    with pytest.raises(CIFARFormatError, match=r"test_batch: b'labels' must be a flat list of 3 integers .* found a list"):
        load_cifar10("test", data_dir=tmp_path)


def test_nested_labels_report_their_shape(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    write_py_batch(folder, data=images(3), labels=[[1], [2], [3]])
    with pytest.raises(CIFARFormatError, match=r"flat list of 3 integers \(one per image\), found an array of shape \(3, 1\)"):
        load_cifar10("test", data_dir=tmp_path)
    write_py_batch(folder, data=images(3), labels=[1, 2])  # flat but short: the count message
    with pytest.raises(CIFARFormatError, match="2 labels for 3 images; expected one each"):
        load_cifar10("test", data_dir=tmp_path)


def test_labels_as_a_numpy_array_are_read(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    x = images(4)
    write_py_batch(folder, data=x, labels=np.array([3, 1, 4, 1], np.int32))
    got_x, got_y = load_cifar10("test", data_dir=tmp_path)
    assert type(got_x) is np.ndarray and type(got_y) is np.ndarray and got_y.dtype == np.int64
    np.testing.assert_array_equal(got_x, x.reshape(4, 3, 32, 32))
    assert got_y.tolist() == [3, 1, 4, 1]


# -- empty batches ---------------------------------------------------------------------------------

def test_empty_binary_batch_is_refused(tmp_path):
    write_raw(tmp_path / "cifar-10-batches-bin", b"", "test_batch.bin")
    with pytest.raises(CIFARFormatError, match=r"test_batch\.bin: the file is empty \(0 bytes\), no records; .* damaged"):
        load_cifar10("test", data_dir=tmp_path)


def test_empty_python_batch_is_refused(tmp_path):
    write_py_batch(tmp_path / "cifar-10-batches-py", data=np.zeros((0, 3072), np.uint8), labels=[])
    with pytest.raises(CIFARFormatError, match=r"test_batch: b'data' holds 0 images, no records; .* damaged"):
        load_cifar10("test", data_dir=tmp_path)


# -- which format ------------------------------------------------------------------------------------

def _bin_batch(folder, label):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "test_batch.bin").write_bytes(bytes([label]) + bytes(3072))


def test_binary_preferred_across_locations(tmp_path):
    """Python batches in ROOT/cifar-10/ (searched first) and binary ones in ROOT/: the binary ones win."""
    write_py_batch(tmp_path / "cifar-10" / "cifar-10-batches-py", data=images(1), labels=[7])
    _bin_batch(tmp_path / "cifar-10-batches-bin", 3)
    assert load_cifar10("test", data_dir=tmp_path)[1].tolist() == [3]
    assert load_cifar10("test", data_dir=tmp_path, format="python")[1].tolist() == [7]
    assert load_cifar10("test", data_dir=tmp_path, format="bin")[1].tolist() == [3]


def test_binary_preferred_when_the_files_sit_directly_in_the_root(tmp_path):
    write_py_batch(tmp_path / "cifar-10", data=images(1), labels=[7])  # ROOT/cifar-10/test_batch
    _bin_batch(tmp_path, 5)  # ROOT/test_batch.bin
    assert load_cifar10("test", data_dir=tmp_path)[1].tolist() == [5]


def test_incomplete_binary_set_falls_back_to_python(tmp_path):
    for i, name in enumerate(TRAIN):
        write_py_batch(tmp_path / "cifar-10" / "cifar-10-batches-py", name, data=images(1, i), labels=[i])
    folder = tmp_path / "cifar-10-batches-bin"
    for name in TRAIN[:4]:  # data_batch_5.bin missing
        folder.mkdir(exist_ok=True)
        (folder / f"{name}.bin").write_bytes(bytes(3073))
    assert load_cifar10("train", data_dir=tmp_path)[1].tolist() == [0, 1, 2, 3, 4]
    with pytest.raises(DatasetNotFoundError, match="data_batch_5.bin"):
        load_cifar10("train", data_dir=tmp_path, format="bin")


# -- python batches as Python 2 wrote them ---------------------------------------------------------

def _py2_batch(data: np.ndarray, labels) -> bytes:
    """A batch as Python 2's cPickle wrote the official files (protocol 2, byte-string keys, the array
    data as one byte string, the dtype rebuilt from ('u1', 0, 1) and its state), written opcode by opcode."""
    def s(b):
        return b"U" + bytes([len(b)]) + b if len(b) < 256 else b"T" + struct.pack("<i", len(b)) + b

    def i(v):
        return b"J" + struct.pack("<i", v)

    dtype = (b"cnumpy\ndtype\n" + s(b"u1") + i(0) + i(1) + b"\x87R"
             + b"(" + i(3) + s(b"|") + b"NNN" + i(-1) + i(-1) + i(0) + b"tb")
    array = (b"cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\n" + i(0) + b"\x85" + s(b"b") + b"\x87R"
             + b"(" + i(1) + i(data.shape[0]) + i(data.shape[1]) + b"\x86" + dtype + b"\x89" + s(data.tobytes())
             + b"tb")
    label_list = b"](" + b"".join(i(int(v)) for v in labels) + b"e"
    return (b"\x80\x02}(" + s(b"batch_label") + s(b"testing batch 1 of 1") + s(b"labels") + label_list
            + s(b"data") + array + b"u.")


def test_python2_batch(tmp_path):
    x = images(3, seed=4)
    write_raw(tmp_path / "cifar-10-batches-py", _py2_batch(x, [9, 0, 5]))
    got_x, got_y = load_cifar10("test", data_dir=tmp_path)
    np.testing.assert_array_equal(got_x, x.reshape(3, 3, 32, 32))
    assert got_y.tolist() == [9, 0, 5] and got_x.flags.writeable


@pytest.mark.parametrize("protocol", range(pickle.HIGHEST_PROTOCOL + 1))
def test_arrays_of_every_protocol_come_back(tmp_path, protocol):
    """The checked stand-ins rebuild what NumPy pickles: C and Fortran order, 0-d, other dtypes."""
    arrays = [np.arange(24, dtype=np.uint8).reshape(2, 3, 4), np.asfortranarray(np.arange(12.0).reshape(3, 4)),
              np.array(5, np.int32), np.array([True, False]), np.arange(10, dtype=np.int16)[::3]]
    path = tmp_path / "p"
    path.write_bytes(pickle.dumps(arrays, protocol=protocol))
    with open(path, "rb") as f:
        got = RestrictedUnpickler(f, encoding="bytes").load()
    for a, b in zip(arrays, got):
        assert isinstance(b, np.ndarray) and b.shape == a.shape and b.dtype == a.dtype
        np.testing.assert_array_equal(a, b)


# -- pickles that declare more than they hold ------------------------------------------------------

CRAFTED = {
    # the tester's file: NumPy asked to allocate 16 TiB before any data is read
    "reconstruct 2**44": (Reduce(_reconstruct, (np.ndarray, (2**44,), b"b")),
                          r"_reconstruct asks for shape \(17592186044416,\) before any data is read"),
    "reconstruct 2**31": (Reduce(_reconstruct, (np.ndarray, (2**31,), b"b")), "refusing to allocate"),
    "ndarray called": (Reduce(np.ndarray, ((2**31,),)), "not callable"),
    "state larger than data": (
        Reduce(_reconstruct, (np.ndarray, (0,), b"b"), (1, (2**31, 3072), np.dtype(np.uint8), False, b"abc")),
        r"declares shape \(2147483648, 3072\) of uint8 \(6597069766656 bytes\) but holds 3 bytes"),
    "state overflowing": (
        Reduce(_reconstruct, (np.ndarray, (0,), b"b"), (1, (2**62, 2**62), np.dtype(np.uint8), False, b"x")),
        r"declares shape .* but holds 1 bytes"),
    "object array": (
        Reduce(_reconstruct, (np.ndarray, (0,), b"b"), (1, (2**28,), np.dtype(object), False, [1, 2])),
        r"dtype dtype\('O'\); a CIFAR-10 batch holds only numeric arrays"),
    "codec other than latin1": (Reduce(codecs.encode, ("x" * 100, "utf-32")), "only latin1 text is allowed"),
}

RAW_CRAFTED = {
    "BINBYTES8 declaring 2**40": (b"\x80\x04\x8e" + struct.pack("<Q", 2**40) + b"abc.",
                                  r"not a well-formed pickle \(expected 1099511627776 bytes in a bytes8, but only"),
    "BINBYTES declaring 2**31": (b"\x80\x03B" + struct.pack("<I", 2**31) + b"abc.", "bytes4, but only"),
    "BYTEARRAY8 declaring 2**40": (b"\x80\x05\x96" + struct.pack("<Q", 2**40) + b"abc.", "bytearray8, but only"),
    "memo index 2**32-1": (b"\x80\x02Nr" + struct.pack("<I", 2**32 - 1) + b".",
                           "memo index 4294967295 at byte 3 after only 2 opcodes"),
    "text memo index": (b"\x80\x02Np99999999999\n.", "memo index 99999999999"),
    "no STOP": (b"\x80\x02}", "not a well-formed pickle"),
}


def _crafted_bytes(name):
    if name in RAW_CRAFTED:
        return RAW_CRAFTED[name][0]
    obj = CRAFTED[name][0]
    return pickle.dumps({b"data": obj, b"labels": [0]}, protocol=2)


@pytest.mark.parametrize("name", list(CRAFTED) + list(RAW_CRAFTED))
def test_crafted_pickle_refused(tmp_path, name):
    message = (CRAFTED.get(name) or RAW_CRAFTED[name])[1]
    path = write_raw(tmp_path / "cifar-10-batches-py", _crafted_bytes(name))
    with pytest.raises(CIFARFormatError, match=message) as info:
        read_cifar_python(path)
    assert str(path) in str(info.value)


def test_crafted_pickles_under_a_memory_limit(tmp_path):
    """Each crafted file, read in 64 MB of headroom: a clear refusal each, never a MemoryError."""
    names = [n for n in list(CRAFTED) + list(RAW_CRAFTED) if n not in ("no STOP", "codec other than latin1")]
    paths = []
    for k, name in enumerate(names):
        paths.append(str(write_raw(tmp_path / f"c{k}", _crafted_bytes(name))))
    res = run_limited(
        "from bitnet.data import CIFARFormatError, read_cifar_python",
        f"for p in {paths!r}:\n"
        "    try:\n"
        "        read_cifar_python(p)\n"
        "        print('accepted:', p)\n"
        "    except CIFARFormatError as e:\n"
        "        print('refused:', p)\n")
    assert res.returncode == 0, res.stderr[-2000:]
    assert res.stdout.count("refused:") == len(paths), res.stdout + res.stderr[-2000:]


def test_forbidden_global_still_unsafe(tmp_path):
    """The stand-ins do not widen the allowed set: anything else is still an UnsafePickleError."""
    path = write_raw(tmp_path / "cifar-10-batches-py", pickle.dumps({b"data": Reduce(eval, ("1",))}, protocol=2))
    with pytest.raises(UnsafePickleError, match=r"refusing to load global (__builtin__|builtins)\.eval"):
        read_cifar_python(path)
