"""Damage the metadata of an HDF5 file the way a bad disk or a hostile editor would, keeping its
checksums valid so that HDF5 reads on into the damage: the superblock (version 2 or 3, what h5py
writes with libver="latest") has its root group address moved, its checksum recomputed."""
from __future__ import annotations

import struct

_M = 0xFFFFFFFF


def _rot(x, k):
    return ((x << k) | (x >> (32 - k))) & _M


def lookup3(data: bytes, initval: int = 0) -> int:
    """Bob Jenkins' lookup3 ``hashlittle``, HDF5's metadata checksum."""
    n = len(data)
    a = b = c = (0xDEADBEEF + n + initval) & _M
    i = 0
    while n > 12:
        a = (a + int.from_bytes(data[i:i + 4], "little")) & _M
        b = (b + int.from_bytes(data[i + 4:i + 8], "little")) & _M
        c = (c + int.from_bytes(data[i + 8:i + 12], "little")) & _M
        a = (a - c) & _M; a ^= _rot(c, 4); c = (c + b) & _M  # noqa: E702
        b = (b - a) & _M; b ^= _rot(a, 6); a = (a + c) & _M  # noqa: E702
        c = (c - b) & _M; c ^= _rot(b, 8); b = (b + a) & _M  # noqa: E702
        a = (a - c) & _M; a ^= _rot(c, 16); c = (c + b) & _M  # noqa: E702
        b = (b - a) & _M; b ^= _rot(a, 19); a = (a + c) & _M  # noqa: E702
        c = (c - b) & _M; c ^= _rot(b, 4); b = (b + a) & _M  # noqa: E702
        n, i = n - 12, i + 12
    if n == 0:
        return c
    tail = data[i:] + bytes(12 - n)
    a = (a + int.from_bytes(tail[0:4], "little")) & _M
    b = (b + int.from_bytes(tail[4:8], "little")) & _M
    c = (c + int.from_bytes(tail[8:12], "little")) & _M
    c ^= b; c = (c - _rot(b, 14)) & _M  # noqa: E702
    a ^= c; a = (a - _rot(c, 11)) & _M  # noqa: E702
    b ^= a; b = (b - _rot(a, 25)) & _M  # noqa: E702
    c ^= b; c = (c - _rot(b, 16)) & _M  # noqa: E702
    a ^= c; a = (a - _rot(c, 4)) & _M  # noqa: E702
    b ^= a; b = (b - _rot(a, 14)) & _M  # noqa: E702
    c ^= b; c = (c - _rot(b, 24)) & _M  # noqa: E702
    return c


def move_root(src: bytes, address: int) -> bytes:
    """``src`` (an HDF5 file with a version 2/3 superblock, 8-byte offsets) with the root group's
    object header address set to ``address`` and the superblock checksum made valid again."""
    b = bytearray(src)
    assert b[:8] == b"\x89HDF\r\n\x1a\n" and b[8] in (2, 3) and b[9] == 8, "not a version 2/3 superblock"
    assert lookup3(bytes(b[:44])) == struct.unpack("<I", b[44:48])[0], "checksum not understood"
    b[36:44] = struct.pack("<Q", address)
    b[44:48] = struct.pack("<I", lookup3(bytes(b[:44])))
    return bytes(b)
