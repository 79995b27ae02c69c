"""IDX reader and MNIST loader on small, deliberately broken files."""

import gzip
import hashlib
import struct

import numpy as np
import pytest

from bitnet.data import ChecksumError, IDXFormatError, load_mnist, read_idx, verify_checksum

CODES = {np.uint8: 0x08, np.int8: 0x09, np.int16: 0x0B, np.int32: 0x0C, np.float32: 0x0D, np.float64: 0x0E}


def idx_bytes(arr: np.ndarray) -> bytes:
    arr = np.asarray(arr)
    header = bytes([0, 0, CODES[arr.dtype.type], arr.ndim]) + struct.pack(f">{arr.ndim}I", *arr.shape)
    return header + arr.astype(arr.dtype.newbyteorder(">")).tobytes()


def write(path, data: bytes, gz: bool):
    path.write_bytes(gzip.compress(data) if gz else data)
    return path


def fake_split(folder, n_images=5, n_labels=5, gz=True, seed=0):
    """Write a tiny 'train' split into folder; return (images, labels, {name: sha256})."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (n_images, 28, 28), dtype=np.uint8)
    labels = rng.integers(0, 10, n_labels, dtype=np.uint8)
    suffix = ".gz" if gz else ""
    folder.mkdir(parents=True, exist_ok=True)
    p1 = write(folder / f"train-images-idx3-ubyte{suffix}", idx_bytes(images), gz)
    p2 = write(folder / f"train-labels-idx1-ubyte{suffix}", idx_bytes(labels), gz)
    sums = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in (p1, p2)}
    return images, labels, sums


@pytest.mark.parametrize("dtype", list(CODES))
@pytest.mark.parametrize("gz", [True, False])
def test_read_idx_roundtrip_all_types(tmp_path, dtype, gz):
    arr = (np.arange(24).reshape(2, 3, 4) - 5).astype(dtype)
    out = read_idx(write(tmp_path / "x.idx", idx_bytes(arr), gz))
    assert out.dtype == np.dtype(dtype) and out.dtype.isnative
    np.testing.assert_array_equal(out, arr)


def test_gzip_detected_by_magic_not_name(tmp_path):
    arr = np.arange(10, dtype=np.uint8)
    np.testing.assert_array_equal(read_idx(write(tmp_path / "labels.raw", idx_bytes(arr), gz=True)), arr)
    np.testing.assert_array_equal(read_idx(write(tmp_path / "labels.gz", idx_bytes(arr), gz=False)), arr)


@pytest.mark.parametrize("gz", [True, False])
def test_bad_magic(tmp_path, gz):
    data = bytearray(idx_bytes(np.zeros((2, 28, 28), np.uint8)))
    data[0] = 0x12
    with pytest.raises(IDXFormatError, match=r"x\.idx.*magic.*12 00 08 03.*expected.*corrupt"):
        read_idx(write(tmp_path / "x.idx", bytes(data), gz))
    data[0], data[2] = 0, 0x07  # unknown type code
    with pytest.raises(IDXFormatError, match="magic"):
        read_idx(write(tmp_path / "y.idx", bytes(data), gz))


@pytest.mark.parametrize("gz", [True, False])
def test_truncated(tmp_path, gz):
    data = idx_bytes(np.zeros((3, 28, 28), np.uint8))
    with pytest.raises(IDXFormatError, match=r"truncated.*expected 2368 bytes.*download it again"):
        read_idx(write(tmp_path / "x.idx", data[:-10], gz))
    with pytest.raises(IDXFormatError, match="header"):
        read_idx(write(tmp_path / "h.idx", data[:9], gz))


@pytest.mark.parametrize("gz", [True, False])
def test_trailing_bytes(tmp_path, gz):
    data = idx_bytes(np.zeros((3, 28, 28), np.uint8)) + b"\x00" * 7
    with pytest.raises(IDXFormatError, match="7 trailing bytes"):
        read_idx(write(tmp_path / "x.idx", data, gz))


def test_truncated_gzip_stream(tmp_path):
    blob = gzip.compress(idx_bytes(np.arange(3000, dtype=np.int32)))
    (tmp_path / "x.gz").write_bytes(blob[: len(blob) // 2])
    with pytest.raises(IDXFormatError, match="x.gz"):
        read_idx(tmp_path / "x.gz")


def test_huge_header_dims_do_not_allocate(tmp_path):
    data = bytes([0, 0, 0x08, 3]) + struct.pack(">3I", 2**31, 2**31, 2**31)
    with pytest.raises(IDXFormatError, match="expected at most 268435456 bytes"):
        read_idx(write(tmp_path / "x.gz", data, gz=True))
    data = bytes([0, 0, 0x08, 3]) + struct.pack(">3I", 1000, 28, 28)
    with pytest.raises(IDXFormatError, match="truncated"):
        read_idx(write(tmp_path / "y.gz", data, gz=True))


def test_verify_checksum(tmp_path):
    p = tmp_path / "f.bin"
    p.write_bytes(b"hello")
    good = hashlib.sha256(b"hello").hexdigest()
    assert verify_checksum(p, good) == good
    with pytest.raises(ChecksumError) as info:
        verify_checksum(p, "0" * 64)
    assert "0" * 64 in str(info.value) and good in str(info.value) and "f.bin" in str(info.value)


def test_load_fake_split_with_own_checksums(tmp_path):
    images, labels, sums = fake_split(tmp_path / "mnist")
    x, y = load_mnist("train", data_dir=tmp_path, checksums=sums)
    np.testing.assert_array_equal(x, images)
    np.testing.assert_array_equal(y, labels)
    assert x.dtype == np.uint8 and y.dtype == np.int64


def test_wrong_checksum_rejected(tmp_path):
    _, _, sums = fake_split(tmp_path / "mnist")
    sums["train-labels-idx1-ubyte.gz"] = "f" * 64
    with pytest.raises(ChecksumError, match="train-labels-idx1-ubyte.gz"):
        load_mnist("train", data_dir=tmp_path, checksums=sums)
    load_mnist("train", data_dir=tmp_path, checksums=sums, verify=False)  # opt-out works


def test_canonical_checksums_reject_fake_files(tmp_path):
    fake_split(tmp_path / "mnist")
    with pytest.raises(ChecksumError, match="expected 440fcabf"):
        load_mnist("train", data_dir=tmp_path)


def test_canonical_count_enforced_for_raw_files(tmp_path):
    fake_split(tmp_path / "mnist", gz=False)
    with pytest.raises(ChecksumError, match="expected ba891046"):  # raw canonical names are checksummed too
        load_mnist("train", data_dir=tmp_path)
    with pytest.raises(IDXFormatError, match="5 samples, expected 60000"):
        load_mnist("train", data_dir=tmp_path, verify=False)
    # a header declaring more than the canonical 60,000 images is refused before any data is read
    write(tmp_path / "mnist" / "train-images-idx3-ubyte", bytes([0, 0, 8, 3]) + struct.pack(">3I", 60001, 28, 28),
          gz=False)
    with pytest.raises(IDXFormatError, match="47040784 bytes of data; expected at most 47040000 bytes"):
        load_mnist("train", data_dir=tmp_path, verify=False)


def test_raw_files_accepted_without_checksum(tmp_path):
    images, labels, _ = fake_split(tmp_path / "mnist", gz=False)
    x, y = load_mnist("train", data_dir=tmp_path, checksums={})  # raw files: verify=True skips the digest
    np.testing.assert_array_equal(x, images)
    np.testing.assert_array_equal(y, labels)


def test_mismatched_counts(tmp_path):
    fake_split(tmp_path / "mnist", n_images=5, n_labels=4)
    with pytest.raises(IDXFormatError, match="5 images.*4 labels"):
        load_mnist("train", data_dir=tmp_path, verify=False, checksums={})


def test_label_out_of_range(tmp_path):
    folder = tmp_path / "mnist"
    fake_split(folder)
    write(folder / "train-labels-idx1-ubyte.gz", idx_bytes(np.array([0, 1, 2, 3, 10], np.uint8)), True)
    with pytest.raises(IDXFormatError, match="label 10 out of range"):
        load_mnist("train", data_dir=tmp_path, verify=False, checksums={})


def test_swapped_files_rejected(tmp_path):
    folder = tmp_path / "mnist"
    fake_split(folder)
    img, lbl = folder / "train-images-idx3-ubyte.gz", folder / "train-labels-idx1-ubyte.gz"
    tmp = folder / "t"
    img.rename(tmp), lbl.rename(img), tmp.rename(lbl)
    with pytest.raises(IDXFormatError, match="images of shape"):
        load_mnist("train", data_dir=tmp_path, verify=False, checksums={})


def test_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="split"):
        load_mnist("validation", data_dir=tmp_path)
