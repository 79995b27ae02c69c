"""Hostile inputs for bitnet predict and the dataset readers: every one a clear ``DataFormatError`` (or
``ChecksumError``), refused from its header before anything large is allocated or inflated. Bombs
are built in memory at small compressed sizes; the memory tests run under an address-space cap."""
from __future__ import annotations

import gzip
import io
import struct
import time
import zlib

import numpy as np
import pytest
from memory_limit import run_limited

from bitnet.data import ChecksumError, IDXFormatError, load_mnist, read_idx
from bitnet.data import png as png_module
from bitnet.data.errors import DataFormatError
from bitnet.data.images import MAX_INPUT_BYTES, read_input


def chunk(ctype: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + ctype + body + struct.pack(">I", zlib.crc32(ctype + body))


def png(width, height, idat: bytes, color=0, depth=8, interlace=0, ihdr=None) -> bytes:
    ihdr = struct.pack(">IIBBBBB", width, height, depth, color, 0, 0, interlace) if ihdr is None else ihdr
    return png_module.SIGNATURE + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def zeros_deflated(n: int) -> bytes:
    """zlib stream of ``n`` zero bytes, compressed piece by piece (about n / 1000 bytes)."""
    z, out, block = zlib.compressobj(9), [], bytes(1 << 20)
    for start in range(0, n, len(block)):
        out.append(z.compress(block[:min(len(block), n - start)]))
    return b"".join(out) + z.flush()


@pytest.fixture(params=["without Pillow", "with Pillow"])
def decoder(request, monkeypatch):
    """Each test once as on a machine without Pillow and once with it (where installed)."""
    if request.param == "with Pillow":
        pytest.importorskip("PIL")
    else:
        monkeypatch.setattr(png_module, "_USE_PILLOW", False)
    return request.param


# -- .npy ------------------------------------------------------------------------------------------

def test_npz_saved_as_npy(tmp_path):
    np.savez(tmp_path / "x.npz", a=np.zeros((2, 28, 28), np.uint8))
    (tmp_path / "x.npy").write_bytes((tmp_path / "x.npz").read_bytes())
    with pytest.raises(DataFormatError, match=r"x\.npy: a \.npz archive \(np\.savez\) or another zip file; expected one array written by np\.save"):
        read_input(tmp_path / "x.npy")


def test_npy_declaring_2_40_elements_is_refused_before_allocating(tmp_path):
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": "|u1", "fortran_order": False, "shape": (1024, 1024, 1024, 1024)})
    (tmp_path / "big.npy").write_bytes(buf.getvalue() + bytes(100))
    with pytest.raises(DataFormatError, match=rf"1099511627776 bytes of uint8\); expected at most {MAX_INPUT_BYTES}"):
        read_input(tmp_path / "big.npy")
    buf = io.BytesIO()  # under the cap but more than the file holds: truncated, still nothing allocated
    np.lib.format.write_array_header_1_0(buf, {"descr": "<f4", "fortran_order": False, "shape": (1000, 28, 28)})
    (tmp_path / "short.npy").write_bytes(buf.getvalue() + bytes(100))
    with pytest.raises(DataFormatError, match="100 bytes of data .* needs 3136000; the file is truncated"):
        read_input(tmp_path / "short.npy")


def test_npy_expected_shape_checked_from_the_header(tmp_path):
    np.save(tmp_path / "x.npy", np.zeros((2, 3, 32, 32), np.uint8))
    with pytest.raises(DataFormatError, match=r"images of shape \(3, 32, 32\) .* the model expects \(1, 28, 28\)"):
        read_input(tmp_path / "x.npy", expected=(1, 28, 28))
    np.save(tmp_path / "f.npy", np.asfortranarray(np.arange(12, dtype=">f4").reshape(3, 4)))
    got = read_input(tmp_path / "f.npy", expected=(1, 3, 4))
    assert got.dtype == np.float32 and got.dtype.isnative and np.array_equal(got[0], np.arange(12).reshape(3, 4))


# -- PNG -------------------------------------------------------------------------------------------

def test_png_ihdr_not_13_bytes(tmp_path, decoder):
    (tmp_path / "x.png").write_bytes(png(1, 1, zlib.compress(b"\0\0"), ihdr=struct.pack(">IIBBBB", 1, 1, 8, 0, 0, 0)))
    with pytest.raises(DataFormatError, match=r"x\.png: PNG IHDR chunk of 12 bytes; expected one of 13 bytes"):
        read_input(tmp_path / "x.png")


def test_png_damaged_chunk_and_truncation(tmp_path, decoder):
    good = png(2, 1, zlib.compress(b"\0\1\2"))
    bad = bytearray(good)
    bad[-20] ^= 1  # inside the IDAT chunk
    (tmp_path / "crc.png").write_bytes(bytes(bad))
    with pytest.raises(DataFormatError, match="CRC mismatch"):
        read_input(tmp_path / "crc.png")
    (tmp_path / "cut.png").write_bytes(good[:-12])
    with pytest.raises(DataFormatError, match="no IEND chunk"):
        read_input(tmp_path / "cut.png")


def test_png_decompression_bomb_stops_at_the_declared_size(tmp_path, decoder):
    """A 28x28 grey PNG whose data inflate to 100 MB: refused after 812 bytes were produced."""
    (tmp_path / "bomb.png").write_bytes(png(28, 28, zeros_deflated(100 << 20)))
    with pytest.raises(DataFormatError, match="inflates to more than the 812 bytes its header declares"):
        read_input(tmp_path / "bomb.png")


def test_png_bomb_under_a_memory_limit(tmp_path):
    """The hand-written decoder on a 250 kB file inflating to 256 MB, in 64 MB of headroom."""
    path = tmp_path / "bomb.png"
    path.write_bytes(png(1000, 1000, zeros_deflated(1 << 28)))
    res = run_limited(
        "from bitnet.data import png\npng._USE_PILLOW = False\nfrom bitnet.data.images import read_input",
        f"try:\n    read_input({str(path)!r})\nexcept ValueError as e:\n    print('refused:', e)")
    assert res.returncode == 0 and "refused:" in res.stdout and "1001000 bytes" in res.stdout, res.stderr[-2000:]


def test_png_declared_size_checked_before_inflating(tmp_path, decoder):
    (tmp_path / "huge.png").write_bytes(png(4097, 4096, zeros_deflated(1000)))
    with pytest.raises(DataFormatError, match=r"4097x4096 pixels; expected at most 16777216 pixels"):
        read_input(tmp_path / "huge.png")
    # 16 M pixels declared, the file small: with the model's shape known it is refused at once
    (tmp_path / "big.png").write_bytes(png(4096, 4096, zeros_deflated(4096 * 4097)))
    start = time.perf_counter()
    with pytest.raises(DataFormatError, match=r"a 4096x4096 grey PNG, .*\(1, 4096, 4096\) .*expects \(1, 28, 28\)"):
        read_input(tmp_path / "big.png", expected=(1, 28, 28))
    assert time.perf_counter() - start < 0.5


def test_png_unsupported_formats(tmp_path, monkeypatch):
    monkeypatch.setattr(png_module, "_USE_PILLOW", False)
    (tmp_path / "x.png").write_bytes(png(2, 2, zlib.compress(bytes(10)), depth=16))
    with pytest.raises(DataFormatError, match="a 16-bit grey PNG.* expected 8-bit grey"):
        read_input(tmp_path / "x.png")
    (tmp_path / "i.png").write_bytes(png(2, 2, zlib.compress(bytes(10)), interlace=1))
    with pytest.raises(DataFormatError, match="not interlaced .*install Pillow"):
        read_input(tmp_path / "i.png")
    (tmp_path / "f.png").write_bytes(png(2, 1, zlib.compress(b"\x07\0\0")))
    with pytest.raises(DataFormatError, match="PNG row 0 has an unknown filter 7"):
        read_input(tmp_path / "f.png")


def test_interlaced_and_palette_pngs_with_pillow(tmp_path):
    Image = pytest.importorskip("PIL.Image")
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (9, 7, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(tmp_path / "i.png", interlace=1)
    assert np.array_equal(read_input(tmp_path / "i.png")[0], rgb.transpose(2, 0, 1))
    pal = Image.fromarray(rgb).quantize(16)
    pal.save(tmp_path / "p.png")
    want = np.asarray(pal.convert("RGB")).transpose(2, 0, 1)
    assert np.array_equal(read_input(tmp_path / "p.png", expected=(3, 9, 7))[0], want)
    with pytest.raises(DataFormatError, match=r"\(3, 9, 7\) \(C, H, W\); the model expects \(1, 28, 28\)"):
        read_input(tmp_path / "p.png", expected=(1, 28, 28))


# -- PGM -------------------------------------------------------------------------------------------

def test_pgm_bad_headers(tmp_path):
    (tmp_path / "a.pgm").write_bytes(b"P5\n4x 3\n255\n" + bytes(12))
    with pytest.raises(DataFormatError, match="PGM header field b'4x'; expected width, height"):
        read_input(tmp_path / "a.pgm")
    (tmp_path / "b.pgm").write_bytes(b"P5\n65536 65536\n255\n" + bytes(12))
    with pytest.raises(DataFormatError, match="65536x65536 pixels.* at most 16777216 pixels"):
        read_input(tmp_path / "b.pgm")


# -- IDX -------------------------------------------------------------------------------------------

def test_idx_gzip_bomb_declared_size_capped(tmp_path):
    header = bytes([0, 0, 8, 3]) + struct.pack(">3I", 1_600_000, 28, 28)  # 1.25 GB declared
    (tmp_path / "x.gz").write_bytes(gzip.compress(header + bytes(1 << 20)))
    with pytest.raises(IDXFormatError, match="1254400000 bytes of data; expected at most 268435456"):
        read_idx(tmp_path / "x.gz")
    with pytest.raises(DataFormatError, match="1254400000 bytes"):
        read_input(tmp_path / "x.gz")


def test_idx_stream_longer_than_declared_under_a_memory_limit(tmp_path):
    """2 images declared, 256 MB of data in the (250 kB) stream: refused after one more chunk, in 64 MB."""
    header = bytes([0, 0, 8, 3]) + struct.pack(">3I", 2, 28, 28)
    z = zlib.compressobj(9, zlib.DEFLATED, 31)  # gzip container
    block = bytes(1 << 20)
    blob = z.compress(header) + b"".join(z.compress(block) for _ in range(256)) + z.flush()
    (tmp_path / "x.gz").write_bytes(blob)
    res = run_limited("from bitnet.data import read_idx",
                      f"try:\n    read_idx({str(tmp_path / 'x.gz')!r})\nexcept ValueError as e:\n    print('refused:', e)")
    assert res.returncode == 0 and "at least 1048576 trailing bytes" in res.stdout, res.stderr[-2000:]


def test_idx_expected_shape_checked_from_the_header(tmp_path):
    header = bytes([0, 0, 8, 3]) + struct.pack(">3I", 2, 32, 32)
    (tmp_path / "x.idx").write_bytes(header + bytes(2 * 32 * 32))
    with pytest.raises(DataFormatError, match=r"images of shape \(1, 32, 32\) .* expects \(1, 28, 28\)"):
        read_input(tmp_path / "x.idx", expected=(1, 28, 28))


def test_raw_bytes_under_a_canonical_gz_name_are_refused(tmp_path):
    """A tampered test set saved raw under the canonical .gz names skipped the checksum before."""
    folder = tmp_path / "mnist"
    folder.mkdir()
    images = bytes([0, 0, 8, 3]) + struct.pack(">3I", 10000, 28, 28) + bytes(10000 * 28 * 28)
    labels = bytes([0, 0, 8, 1]) + struct.pack(">I", 10000) + bytes(10000)
    (folder / "t10k-images-idx3-ubyte.gz").write_bytes(images)
    (folder / "t10k-labels-idx1-ubyte.gz").write_bytes(labels)
    with pytest.raises(ChecksumError, match=r"t10k-images-idx3-ubyte\.gz: not a gzip file, though named \.gz"):
        load_mnist("test", data_dir=tmp_path)
    for name, blob in (("t10k-images-idx3-ubyte", images), ("t10k-labels-idx1-ubyte", labels)):
        (folder / (name + ".gz")).unlink()
        (folder / name).write_bytes(blob)  # the same bytes under the raw names: checked against the raw digests
    with pytest.raises(ChecksumError, match="t10k-images-idx3-ubyte: SHA-256 mismatch: expected 0fa7898d"):
        load_mnist("test", data_dir=tmp_path)
