"""Reading single inputs for ``bitnet predict``: NumPy ``.npy`` arrays, IDX files (MNIST's format,
optionally gzipped), binary PGM (``P5``) and PNG images (8-bit, not interlaced; decoded with
``zlib`` and the PNG row filters, no imaging library needed).

``read_input(path)`` returns a uint8 or float array of shape ``(N, H, W)`` (grey) or
``(N, C, H, W)``; one image gets a batch axis of 1.
"""
from __future__ import annotations

import os
import struct
import zlib

import numpy as np

from bitnet.data.errors import DataFormatError


def _png(path, raw: bytes) -> np.ndarray:
    if raw[:8] != b"\x89PNG\r\n\x1a\n":
        raise DataFormatError(f"{path}: not a PNG file (bad signature)")
    pos, chunks, header = 8, [], None
    while pos + 8 <= len(raw):
        length, ctype = struct.unpack(">I4s", raw[pos:pos + 8])
        body = raw[pos + 8:pos + 8 + length]
        if len(body) != length:
            raise DataFormatError(f"{path}: truncated PNG chunk {ctype!r}")
        if ctype == b"IHDR":
            header = struct.unpack(">IIBBBBB", body)
        elif ctype == b"IDAT":
            chunks.append(body)
        elif ctype == b"IEND":
            break
        pos += 12 + length
    if header is None:
        raise DataFormatError(f"{path}: PNG without an IHDR header")
    width, height, depth, color, _, _, interlace = header
    channels = {0: 1, 2: 3, 4: 2, 6: 4}.get(color)
    if depth != 8 or channels is None or interlace or not 0 < width * height <= 1 << 24:
        raise DataFormatError(f"{path}: PNG of bit depth {depth}, color type {color}, interlace {interlace}, "
                              f"{width}x{height}; expected 8-bit grey/RGB(A), not interlaced, at most 16 M pixels")
    try:
        data = zlib.decompress(b"".join(chunks), bufsize=height * (width * channels + 1))
    except zlib.error as e:
        raise DataFormatError(f"{path}: damaged PNG data ({e})") from None
    stride = width * channels
    if len(data) != height * (stride + 1):
        raise DataFormatError(f"{path}: PNG data of {len(data)} bytes, expected {height * (stride + 1)}")
    rows = np.frombuffer(data, np.uint8).reshape(height, stride + 1)
    out = np.zeros((height, stride), np.int32)
    for y in range(height):  # undo the per-row filters (PNG spec 9.2)
        kind, line = rows[y, 0], rows[y, 1:].astype(np.int32)
        prev = out[y - 1] if y else np.zeros(stride, np.int32)
        if kind == 0:
            out[y] = line
        elif kind == 2:
            out[y] = (line + prev) & 255
        elif kind in (1, 3, 4):
            for x in range(stride):
                a = out[y, x - channels] if x >= channels else 0
                b, c = prev[x], (prev[x - channels] if x >= channels else 0)
                if kind == 1:
                    pred = a
                elif kind == 3:
                    pred = (a + b) // 2
                else:
                    p = a + b - c
                    pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                    pred = a if pa <= pb and pa <= pc else (b if pb <= pc else c)
                out[y, x] = (line[x] + pred) & 255
        else:
            raise DataFormatError(f"{path}: PNG row {y} has an unknown filter {kind}")
    img = out.astype(np.uint8).reshape(height, width, channels)
    if channels in (2, 4):
        img = img[..., :-1]  # drop alpha
    return img[None, :, :, 0] if img.shape[-1] == 1 else img.transpose(2, 0, 1)[None]


def _pgm(path, raw: bytes) -> np.ndarray:
    fields, pos = [], 2
    while len(fields) < 3:
        while pos < len(raw) and raw[pos:pos + 1].isspace():
            pos += 1
        if raw[pos:pos + 1] == b"#":
            pos = raw.find(b"\n", pos) + 1 or len(raw)
            continue
        start = pos
        while pos < len(raw) and not raw[pos:pos + 1].isspace():
            pos += 1
        if start == pos:
            raise DataFormatError(f"{path}: truncated PGM header")
        fields.append(int(raw[start:pos]))
    width, height, maxval = fields
    pos += 1
    if maxval != 255 or len(raw) - pos < width * height:
        raise DataFormatError(f"{path}: PGM with maxval {maxval} and {len(raw) - pos} data bytes for {width}x{height}; "
                              "expected 8-bit data")
    return np.frombuffer(raw[pos:pos + width * height], np.uint8).reshape(1, height, width)


def read_input(path) -> np.ndarray:
    """The images in ``path`` (.npy, IDX, PGM or PNG) with a batch axis; see the module docstring."""
    from bitnet.data.idx import read_idx
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: no such input file")
    if path.endswith(".npy"):
        try:
            arr = np.load(path, allow_pickle=False)
        except ValueError as e:
            raise DataFormatError(f"{path}: not a plain NumPy array file ({e})") from None
    else:
        with open(path, "rb") as f:
            head = f.read(8)
        if head.startswith(b"\x89PNG"):
            with open(path, "rb") as f:
                return _png(path, f.read())
        if head[:2] == b"P5":
            with open(path, "rb") as f:
                return _pgm(path, f.read())
        arr = read_idx(path)
    if arr.ndim not in (2, 3, 4) or arr.dtype.kind not in "uif":
        raise DataFormatError(f"{path}: an array of shape {arr.shape} and dtype {arr.dtype}; expected images "
                              "(H, W), (N, H, W) or (N, C, H, W) of numbers")
    return arr[None] if arr.ndim == 2 else arr
