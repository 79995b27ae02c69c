"""Reader for the IDX format (MNIST, Fashion-MNIST), raw or gzip-compressed.

IDX layout (all integers big-endian)::

    bytes 0-1   0x00 0x00
    byte  2     type code: 0x08 uint8, 0x09 int8, 0x0B int16, 0x0C int32, 0x0D float32, 0x0E float64
    byte  3     ndim
    4*ndim      the dimension sizes, uint32 each
    ...         prod(dims) values, C order

Gzip is detected by the magic bytes ``1f 8b``, not by the file name.  The
length of the (decompressed) content must match the header exactly.

Hostile files: the size the header declares is checked against ``max_bytes`` (default
``MAX_IDX_BYTES``) and, for a raw file, against the file's size before any data is read; a gzip
stream is inflated incrementally, never past the declared size (a stream longer than declared is
refused after reading one more chunk), so a decompression bomb costs at most ``max_bytes``.
"""

from __future__ import annotations

import gzip
import hashlib
import math
import zlib
from pathlib import Path
from typing import BinaryIO, Callable, Optional

import numpy as np

from bitnet.data.errors import ChecksumError, IDXFormatError
from bitnet.data.paths import StrPath

__all__ = ["IDX_DTYPES", "MAX_IDX_BYTES", "read_idx", "sha256_file", "verify_checksum", "is_gzip"]

#: IDX type code -> big-endian NumPy dtype.
IDX_DTYPES = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}

_GZIP_MAGIC = b"\x1f\x8b"
_CHUNK = 1 << 20
_MAX_NDIM = 16
#: The most bytes of data an IDX file may declare unless the caller says otherwise (256 MiB; the
#: MNIST training images take 47 MB).
MAX_IDX_BYTES = 1 << 28
_FIX = "The file is probably corrupt or incomplete: delete it and download it again."


def is_gzip(path: StrPath) -> bool:
    """True if the file starts with the gzip magic bytes."""
    with open(path, "rb") as f:
        return f.read(2) == _GZIP_MAGIC


def _fail(path: StrPath, found: str, expected: str) -> IDXFormatError:
    return IDXFormatError(f"{path}: not a valid IDX file: found {found}, expected {expected}. {_FIX}")


def _read_exact(f: BinaryIO, n: int) -> bytearray:
    """Read up to ``n`` bytes in chunks (never pre-allocates ``n`` from an untrusted header)."""
    buf = bytearray()
    while len(buf) < n:
        chunk = f.read(min(_CHUNK, n - len(buf)))
        if not chunk:
            break
        buf += chunk
    return buf


def _parse(f: BinaryIO, path: StrPath, raw_size: int | None, max_bytes: int,
           check_dims: Optional[Callable[[tuple], None]]) -> np.ndarray:
    head = _read_exact(f, 4)
    if len(head) < 4:
        raise _fail(path, f"{len(head)} bytes in total", "at least a 4-byte header")
    if head[0] != 0 or head[1] != 0 or head[2] not in IDX_DTYPES or not 1 <= head[3] <= _MAX_NDIM:
        codes = ", ".join(f"0x{c:02X}" for c in IDX_DTYPES)
        raise _fail(
            path,
            f"magic bytes {head.hex(' ')}",
            f"00 00 <type code in {codes}> <ndim 1..{_MAX_NDIM}>",
        )
    dtype, ndim = IDX_DTYPES[head[2]], head[3]
    dim_bytes = _read_exact(f, 4 * ndim)
    if len(dim_bytes) < 4 * ndim:
        raise _fail(path, f"a header cut off after {4 + len(dim_bytes)} bytes", f"{4 + 4 * ndim} header bytes")
    dims = tuple(int(d) for d in np.frombuffer(dim_bytes, dtype=">u4"))
    n_payload = math.prod(dims) * dtype.itemsize
    n_total = 4 + 4 * ndim + n_payload
    if n_payload > max_bytes:
        raise IDXFormatError(f"{path}: the IDX header declares dims {dims} of {dtype.name}, {n_payload} bytes of data; "
                             f"expected at most {max_bytes} bytes (a damaged or hostile file; read_idx(..., max_bytes=N) "
                             "reads larger ones)")
    if check_dims is not None:
        check_dims(dims)
    if raw_size is not None and raw_size != n_total:
        what = "truncated" if raw_size < n_total else f"{raw_size - n_total} trailing bytes"
        raise _fail(path, f"{raw_size} bytes ({what})", f"{n_total} bytes for dims {dims} of {dtype.name}")
    payload = _read_exact(f, n_payload)
    if len(payload) < n_payload:
        got = 4 + 4 * ndim + len(payload)
        raise _fail(path, f"{got} bytes (truncated)", f"{n_total} bytes for dims {dims} of {dtype.name}")
    extra = f.read(_CHUNK)  # one chunk more at most: a stream longer than declared is not read to its end
    if extra:
        more = "at least " if len(extra) == _CHUNK else ""
        raise _fail(path, f"{more}{len(extra)} trailing bytes after the data", f"exactly {n_total} bytes for dims {dims}")
    arr = np.frombuffer(payload, dtype=dtype).reshape(dims)
    native = dtype.newbyteorder("=")
    return arr.astype(native) if dtype.itemsize > 1 else arr.view(native)


def read_idx(path: StrPath, max_bytes: int = MAX_IDX_BYTES,
             check_dims: Optional[Callable[[tuple], None]] = None) -> np.ndarray:
    """Read an IDX file (raw or gzip-compressed) into a NumPy array of native byte order.

    ``max_bytes``: the most data the header may declare; ``check_dims(dims)``, when given, is called
    with the declared dimensions before any data is read (it raises to refuse them).

    Raises :class:`IDXFormatError` (a ``ValueError``) on a bad magic number, a
    truncated file, trailing bytes, a declared size over ``max_bytes``, or a damaged
    gzip stream; ``FileNotFoundError`` if the file does not exist.
    """
    path = Path(path)
    try:
        if is_gzip(path):
            with gzip.open(path, "rb") as f:
                return _parse(f, path, None, max_bytes, check_dims)
        with open(path, "rb") as f:
            return _parse(f, path, path.stat().st_size, max_bytes, check_dims)
    except (EOFError, gzip.BadGzipFile, zlib.error) as exc:
        raise IDXFormatError(f"{path}: damaged gzip stream ({exc}). {_FIX}") from exc


def sha256_file(path: StrPath) -> str:
    """Hex SHA-256 digest of a file, read in chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def verify_checksum(path: StrPath, expected_sha256: str) -> str:
    """Check the SHA-256 of ``path``; return the digest or raise :class:`ChecksumError` with both digests."""
    actual = sha256_file(path)
    if actual != expected_sha256.strip().lower():
        raise ChecksumError(
            f"{path}: SHA-256 mismatch: expected {expected_sha256}, got {actual}. "
            f"The file is corrupt, incomplete or not the expected version: delete it and download it again."
        )
    return actual
