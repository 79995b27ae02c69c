"""bitnet.data.images.read_input: .npy, IDX, PGM and PNG (every row filter) inputs for bitnet predict."""
from __future__ import annotations

import struct
import zlib

import numpy as np
import pytest

from bitnet.data.errors import DataFormatError
from bitnet.data.images import read_input


def _paeth(a, b, c):
    p = a + b - c
    pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
    return a if pa <= pb and pa <= pc else (b if pb <= pc else c)


def _encode_png(img, filt):
    """A PNG writer (8-bit grey or RGB) applying one of the five row filters to every row."""
    h, w = img.shape[:2]
    ch = 1 if img.ndim == 2 else img.shape[2]
    rows = img.reshape(h, w * ch).astype(np.int64)
    out = b""
    for y in range(h):
        prev = rows[y - 1] if y else np.zeros(w * ch, np.int64)
        enc = []
        for x in range(w * ch):
            a = rows[y, x - ch] if x >= ch else 0
            b, c = prev[x], (prev[x - ch] if x >= ch else 0)
            pred = [0, a, b, (a + b) // 2, _paeth(a, b, c)][filt]
            enc.append((rows[y, x] - pred) & 255)
        out += bytes([filt]) + bytes(enc)

    def chunk(t, d):
        return struct.pack(">I", len(d)) + t + d + struct.pack(">I", zlib.crc32(t + d) & 0xFFFFFFFF)
    color = 0 if ch == 1 else 2
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, color, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(out)) + chunk(b"IEND", b""))


@pytest.mark.parametrize("filt", range(5))
@pytest.mark.parametrize("channels", [1, 3])
def test_png_every_filter(filt, channels, tmp_path):
    rng = np.random.default_rng(filt + channels)
    img = rng.integers(0, 256, (7, 9) if channels == 1 else (7, 9, 3)).astype(np.uint8)
    path = tmp_path / "x.png"
    path.write_bytes(_encode_png(img, filt))
    got = read_input(path)
    assert np.array_equal(got[0], img if channels == 1 else img.transpose(2, 0, 1))


def test_npy_pgm_and_errors(tmp_path):
    img = np.arange(12, dtype=np.uint8).reshape(3, 4)
    np.save(tmp_path / "a.npy", img)
    assert read_input(tmp_path / "a.npy").shape == (1, 3, 4)
    (tmp_path / "a.pgm").write_bytes(b"P5\n# c\n4 3\n255\n" + img.tobytes())
    assert np.array_equal(read_input(tmp_path / "a.pgm")[0], img)
    (tmp_path / "bad.png").write_bytes(_encode_png(img, 0)[:40])
    with pytest.raises(DataFormatError, match="bad.png"):
        read_input(tmp_path / "bad.png")
    np.save(tmp_path / "obj.npy", np.array(["a"]))
    with pytest.raises(DataFormatError, match="expected images"):
        read_input(tmp_path / "obj.npy")
    with pytest.raises(FileNotFoundError, match="no such input file"):
        read_input(tmp_path / "none.png")
