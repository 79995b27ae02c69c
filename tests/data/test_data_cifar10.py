"""CIFAR-10 reader on tiny files written in both official formats."""

import os
import pickle

import numpy as np
import pytest

from bitnet.data import CIFARFormatError, DatasetNotFoundError, UnsafePickleError, load_cifar10

TRAIN = [f"data_batch_{i}" for i in range(1, 6)]


def _records(n, seed):
    rng = np.random.default_rng(seed)
    # Each channel gets its own value range so a channel-order mix-up cannot go unnoticed.
    images = np.stack([rng.integers(c * 80, c * 80 + 60, (n, 32, 32)) for c in range(3)], axis=1).astype(np.uint8)
    labels = rng.integers(0, 10, n).astype(np.uint8)
    return images, labels


def write_bin(folder, names, counts, seed=0):
    folder.mkdir(parents=True, exist_ok=True)
    all_x, all_y = [], []
    for i, (name, n) in enumerate(zip(names, counts)):
        x, y = _records(n, seed + i)
        rec = np.concatenate([y[:, None], x.reshape(n, -1)], axis=1)  # label byte + R plane + G plane + B plane
        (folder / f"{name}.bin").write_bytes(rec.tobytes())
        all_x.append(x), all_y.append(y)
    return np.concatenate(all_x), np.concatenate(all_y)


def write_py(folder, names, counts, seed=0, protocol=2):
    folder.mkdir(parents=True, exist_ok=True)
    all_x, all_y = [], []
    for i, (name, n) in enumerate(zip(names, counts)):
        x, y = _records(n, seed + i)
        batch = {b"batch_label": b"fake batch", b"labels": [int(v) for v in y], b"data": x.reshape(n, 3072),
                 b"filenames": [b"img%d.png" % k for k in range(n)]}
        with open(folder / name, "wb") as f:
            pickle.dump(batch, f, protocol=protocol)
        all_x.append(x), all_y.append(y)
    return np.concatenate(all_x), np.concatenate(all_y)


def _check(got, want):
    x, y = got
    assert x.dtype == np.uint8 and x.shape[1:] == (3, 32, 32) and y.dtype == np.int64
    np.testing.assert_array_equal(x, want[0])
    np.testing.assert_array_equal(y, want[1])


def test_binary_train_and_test(tmp_path):
    folder = tmp_path / "cifar-10" / "cifar-10-batches-bin"
    want_train = write_bin(folder, TRAIN, [3, 1, 2, 4, 2])
    want_test = write_bin(folder, ["test_batch"], [5], seed=10)
    _check(load_cifar10("train", data_dir=tmp_path), want_train)
    _check(load_cifar10("test", data_dir=tmp_path), want_test)


def test_binary_channel_order(tmp_path):
    record = bytes([7]) + bytes([1]) * 1024 + bytes([2]) * 1024 + bytes([3]) * 1024
    folder = tmp_path / "cifar-10-batches-bin"
    folder.mkdir()
    (folder / "test_batch.bin").write_bytes(record)
    x, y = load_cifar10("test", data_dir=tmp_path)
    assert y.tolist() == [7]
    assert [int(x[0, c].min()) for c in range(3)] == [1, 2, 3] and [int(x[0, c].max()) for c in range(3)] == [1, 2, 3]


@pytest.mark.parametrize("protocol", [2, pickle.DEFAULT_PROTOCOL, 5])
def test_python_format(tmp_path, protocol):
    folder = tmp_path / "cifar-10-batches-py"
    want = write_py(folder, ["test_batch"], [6], protocol=protocol)
    _check(load_cifar10("test", data_dir=tmp_path), want)


def test_python_train_direct_folder(tmp_path):
    want = write_py(tmp_path / "batches", TRAIN, [1, 2, 3, 1, 2])
    _check(load_cifar10("train", data_dir=tmp_path / "batches", format="python"), want)


def test_binary_preferred_and_format_choice(tmp_path):
    want_bin = write_bin(tmp_path / "cifar-10" / "cifar-10-batches-bin", ["test_batch"], [2], seed=1)
    want_py = write_py(tmp_path / "cifar-10" / "cifar-10-batches-py", ["test_batch"], [3], seed=2)
    _check(load_cifar10("test", data_dir=tmp_path), want_bin)
    _check(load_cifar10("test", data_dir=tmp_path, format="python"), want_py)


class _Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned > /dev/null",))


def test_forbidden_global_refused(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    with open(folder / "test_batch", "wb") as f:
        pickle.dump({b"data": _Evil(), b"labels": [0]}, f, protocol=2)
    with pytest.raises(UnsafePickleError, match=r"test_batch.*refusing to load global (posix|nt|os)\.system"):
        load_cifar10("test", data_dir=tmp_path)


def test_forbidden_builtin_refused(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    (folder / "test_batch").write_bytes(b"cbuiltins\neval\n(S'1+1'\ntR.")
    with pytest.raises(UnsafePickleError, match="builtins.eval"):
        load_cifar10("test", data_dir=tmp_path)


def test_truncated_binary(tmp_path):
    folder = tmp_path / "cifar-10-batches-bin"
    write_bin(folder, ["test_batch"], [2])
    path = folder / "test_batch.bin"
    path.write_bytes(path.read_bytes()[:-1])
    with pytest.raises(CIFARFormatError, match=r"6145 bytes is not a whole number of 3073-byte records"):
        load_cifar10("test", data_dir=tmp_path)


def test_bad_label_in_binary(tmp_path):
    folder = tmp_path / "cifar-10-batches-bin"
    folder.mkdir()
    (folder / "test_batch.bin").write_bytes(bytes([12]) + bytes(3072))
    with pytest.raises(CIFARFormatError, match="out of range"):
        load_cifar10("test", data_dir=tmp_path)


def test_python_bad_structure(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    with open(folder / "test_batch", "wb") as f:
        pickle.dump({b"data": np.zeros((2, 100), np.uint8), b"labels": [0, 1]}, f)
    with pytest.raises(CIFARFormatError, match=r"\(N, 3072\)"):
        load_cifar10("test", data_dir=tmp_path)
    with open(folder / "test_batch", "wb") as f:
        pickle.dump({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0]}, f)
    with pytest.raises(CIFARFormatError, match="1 labels for 2 images"):
        load_cifar10("test", data_dir=tmp_path)


def test_missing_batches(tmp_path):
    write_bin(tmp_path / "cifar-10-batches-bin", TRAIN[:4], [1] * 4)  # data_batch_5 missing
    with pytest.raises(DatasetNotFoundError) as info:
        load_cifar10("train", data_dir=tmp_path)
    msg = str(info.value)
    assert "data_batch_5.bin" in msg and "BITNET_DATA" in msg and str(tmp_path) in msg
