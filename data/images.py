"""Reading single inputs for ``bitnet predict``: NumPy ``.npy`` arrays, IDX files (MNIST's format,
optionally gzipped), binary PGM (``P5``) and PNG images (``bitnet.data.png``: Pillow when installed,
else a reader of its own).

``read_input(path, expected=None)`` returns a uint8 or float array of shape ``(N, H, W)`` (grey) or
``(N, C, H, W)``; one image gets a batch axis of 1. Hostile files are refused before anything large
is allocated: a file may hold at most ``MAX_INPUT_BYTES`` of pixel data (declared sizes are checked
against it, and against the file's real size, before reading), a PNG or PGM at most
``png.MAX_PIXELS`` pixels, and with ``expected`` (the model's (C, H, W)) the images' shape is checked
from the header, before the pixels are read or inflated.
"""
from __future__ import annotations

import math
import os

import numpy as np

from bitnet.data.errors import DataFormatError
from bitnet.data.png import MAX_PIXELS, read_png

#: The most bytes of pixel data an input file may hold or declare (256 MiB: 340,000 MNIST images).
MAX_INPUT_BYTES = 1 << 28


def _check_shape(path, shape, expected):
    """``shape``: the array's, (H, W), (N, H, W) or (N, C, H, W); ``expected``: (C, H, W) or None."""
    if len(shape) not in (2, 3, 4):
        raise DataFormatError(f"{path}: an array of shape {tuple(shape)}; expected images (H, W), (N, H, W) or "
                              "(N, C, H, W)")
    if expected is None:
        return
    image = (1,) + tuple(shape[-2:]) if len(shape) < 4 else tuple(shape[1:])
    if image != tuple(expected):
        raise DataFormatError(f"{path}: images of shape {image} (C, H, W); the model expects {tuple(expected)}")


def _npy(path, expected) -> np.ndarray:
    """A ``.npy`` array: header (version, shape, dtype) checked against the file's size and the caps
    before any data is read; no pickles."""
    fmt = np.lib.format
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        head = f.read(6)
        if head[:4] == b"PK\x03\x04":
            raise DataFormatError(f"{path}: a .npz archive (np.savez) or another zip file; expected one array "
                                  "written by np.save (np.save('x.npy', np.load(path)['name']))")
        f.seek(0)
        try:
            version = fmt.read_magic(f)
            if version == (1, 0):
                shape, fortran, dtype = fmt.read_array_header_1_0(f)
            elif version == (2, 0):
                shape, fortran, dtype = fmt.read_array_header_2_0(f)
            else:
                raise ValueError(f"format version {version}; expected 1.0 or 2.0")
        except (ValueError, SyntaxError, TypeError, EOFError) as e:
            raise DataFormatError(f"{path}: not a NumPy .npy file ({e}); expected an array written by np.save") from None
        if dtype.hasobject or dtype.kind not in "uif" or dtype.fields is not None:
            raise DataFormatError(f"{path}: an array of dtype {dtype}; expected images of numbers (uint8, or floats "
                                  "in [0, 1])")
        _check_shape(path, shape, expected)
        count = math.prod(shape)
        nbytes = count * dtype.itemsize
        if nbytes > MAX_INPUT_BYTES:
            raise DataFormatError(f"{path}: an array of shape {shape} ({nbytes} bytes of {dtype}); expected at most "
                                  f"{MAX_INPUT_BYTES} bytes: split it into several files")
        if nbytes != size - f.tell():
            raise DataFormatError(f"{path}: {size - f.tell()} bytes of data for an array of shape {shape} and dtype "
                                  f"{dtype}, which needs {nbytes}; the file is truncated or damaged")
        data = np.fromfile(f, dtype=dtype, count=count)
    arr = data.reshape(shape, order="F" if fortran else "C")
    return arr.astype(dtype.newbyteorder("=")) if not dtype.isnative else arr


def _pgm(path, raw: bytes, expected) -> np.ndarray:
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
        token = raw[start:pos]
        if not token.isdigit() or len(token) > 9:
            raise DataFormatError(f"{path}: PGM header field {token[:20]!r}; expected width, height and maxval as "
                                  "decimal numbers" if token else f"{path}: truncated PGM header")
        fields.append(int(token))
    width, height, maxval = fields
    pos += 1
    if not 0 < width * height <= MAX_PIXELS or maxval != 255 or len(raw) - pos != width * height:
        raise DataFormatError(f"{path}: PGM of {width}x{height} pixels, maxval {maxval}, {len(raw) - pos} data bytes; "
                              f"expected 8-bit data (maxval 255), width x height bytes, at most {MAX_PIXELS} pixels")
    _check_shape(path, (height, width), expected)
    return np.frombuffer(raw[pos:], np.uint8).reshape(1, height, width).copy()


def read_input(path, expected=None) -> np.ndarray:
    """The images in ``path`` (.npy, IDX, PGM or PNG) with a batch axis; see the module docstring.
    ``expected``: the (C, H, W) the caller needs, checked before the pixels are read."""
    from bitnet.data.idx import read_idx
    path = os.fspath(path)
    if not os.path.isfile(path):
        from bitnet.io.h5 import not_a_file
        raise not_a_file(path, "input file")  # missing, a folder, a file in place of a folder, a device
    with open(path, "rb") as f:
        head = f.read(8)
    if path.endswith(".npy") or head.startswith((b"\x93NUMPY", b"PK\x03\x04")):
        arr = _npy(path, expected)
    elif head.startswith(b"\x89PNG") or head[:2] == b"P5":
        if os.path.getsize(path) > MAX_INPUT_BYTES:
            raise DataFormatError(f"{path}: an image file of {os.path.getsize(path)} bytes; expected at most "
                                  f"{MAX_INPUT_BYTES}")
        with open(path, "rb") as f:
            raw = f.read()
        return read_png(path, raw, expected) if head.startswith(b"\x89PNG") else _pgm(path, raw, expected)
    else:
        arr = read_idx(path, max_bytes=MAX_INPUT_BYTES,
                       check_dims=lambda dims: _check_shape(path, dims, expected))
    if arr.dtype.kind not in "uif":
        raise DataFormatError(f"{path}: an array of shape {arr.shape} and dtype {arr.dtype}; expected images "
                              "(H, W), (N, H, W) or (N, C, H, W) of numbers")
    _check_shape(path, arr.shape, None)
    return arr[None] if arr.ndim == 2 else arr
