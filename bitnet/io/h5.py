"""Safe HDF5 reading and atomic writing, shared by every kind of bitnet file (docs/file-format.md).

Writing: ``atomic_write`` (``bitnet.io.destinations``, re-exported here) writes into a temporary
file beside the target and renames it over the target, so a crash, a kill or a power loss leaves the
previous file or the new one, never a part. Strings are fixed-length attributes; every dataset
carries the CRC-32 of its data (attribute ``crc32``), checked when it is read.

Reading: every attribute's type and size, and every dataset's shape, dtype and storage (no chunk
larger than the dataset itself plus ``MAX_CHUNK_SLACK``), are checked from their headers before any
value is read; links to other objects or files, external raw data and virtual datasets are refused
(a file never makes the reader open another file). Float data must be finite and within
``MAX_ABS_VALUE``. Every problem raises ``BitnetFileError`` naming the file, the key, what was
expected and what was found.
"""
from __future__ import annotations

import datetime
import json
import math
import os
import zlib

import numpy as np

# (their old home: bitnet.io.h5.atomic_write, check_destination, ...)
from bitnet.io.destinations import _umask, atomic_write, check_destination, file_in_the_way, not_a_file  # noqa: F401

FORMAT_NAME = "bitnet-model"
FORMAT_VERSION = 2           # written; see docs/file-format.md for what changed
READABLE_VERSIONS = (1, 2)
MAX_CONFIG_BYTES = 1 << 20   # a JSON config (or compressed architecture) larger than this is not a bitnet file
MAX_ARCHITECTURE_BYTES = 1 << 24  # the architecture's JSON, decompressed
MAX_CHUNK_SLACK = 1 << 20    # a dataset's chunks may exceed its own size by at most this many bytes
MAX_ABS_VALUE = 2.0 ** 64    # stored floats beyond +-this are refused: their square would overflow float32
CHECKSUM_ATTR = "crc32"      # on every dataset: zlib.crc32 of its data's bytes (C order, little-endian)


class BitnetFileError(ValueError):
    """A model file that cannot be read as one: says which file, which key, expected vs found."""

    def __init__(self, path, key, expected, found, hint=""):
        self.path, self.key, self.expected, self.found = str(path), key, expected, found
        msg = f"{path}: {key}: expected {expected}, found {found}"
        super().__init__(msg + (f"; {hint}" if hint else ""))


def short(value, limit=80) -> str:
    """``repr(value)``, cut to ``limit`` characters for error messages."""
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


# -- writing (destinations and the atomic write: bitnet.io.destinations) -------------------------

def set_text(obj, name, text: str) -> None:
    """A string attribute, stored as fixed-length bytes: its content sits inside the attribute message,
    so a reader knows its size before reading it (variable-length strings live in a heap that a
    damaged file can make a reader chase for ever)."""
    obj.attrs[name] = np.bytes_(text.encode("utf-8"))


def checksum(data: np.ndarray) -> int:
    """CRC-32 (``zlib.crc32``) of an array's bytes in C order, little-endian: what ``crc32`` attributes hold."""
    a = np.ascontiguousarray(data)
    if a.dtype.byteorder == ">":
        a = a.astype(a.dtype.newbyteorder("<"))
    return zlib.crc32(a.reshape(-1).view(np.uint8)) if a.size else 0


def create_dataset(group, name, data):
    """``group[name] = data`` (contiguous; HDF5's compact layout was measured to save nothing here), with
    the CRC-32 of its data as attribute ``crc32``."""
    data = np.asarray(data)
    ds = group.create_dataset(name, data=data if data.ndim == 0 else np.ascontiguousarray(data))
    ds.attrs[CHECKSUM_ATTR] = np.uint32(checksum(data))
    return ds


def check_values(state: dict, owner: str, bound=True) -> None:
    """Refuse to write what loading would refuse: every float array finite (and within
    ``MAX_ABS_VALUE`` when ``bound``), numbers only. ``ValueError`` / ``TypeError`` naming the key."""
    for key, value in state.items():
        a = np.asarray(value)
        if a.dtype.kind not in "biuf":
            raise TypeError(f"{owner}: {key} has dtype {a.dtype}; a bitnet file holds numbers only (bool, int, float)")
        if a.dtype.kind == "f" and a.size:
            lo, hi = float(a.min()), float(a.max())  # NaN if any is NaN; no temporary arrays
            if not (math.isfinite(lo) and math.isfinite(hi)):
                raise ValueError(f"{owner}: {key} holds {int(np.sum(~np.isfinite(a)))} NaN or infinite values; the "
                                 "file would not load. Training diverged? Lower the learning rate or resume from an "
                                 "earlier checkpoint")
            if bound and max(hi, -lo) > MAX_ABS_VALUE:
                raise ValueError(f"{owner}: {key} holds values beyond +-2^64 (largest {max(hi, -lo):.3g}); "
                                 "loading refuses them (their squares overflow float32)")


def _header_values(config: dict) -> tuple:
    """(config JSON text without the architecture, the architecture's compressed bytes or None)."""
    config = dict(config)
    architecture = config.pop("architecture", None)
    text = json.dumps(config, sort_keys=True, allow_nan=False)
    if architecture is None:
        return text, None
    arch = json.dumps(architecture, sort_keys=True, separators=(",", ":"), allow_nan=False)
    return text, zlib.compress(arch.encode("utf-8"), 9)


def header_bytes(config: dict) -> int:
    """The bytes ``write_header`` stores for ``config`` (its JSON and the compressed architecture)."""
    text, arch = _header_values(config)
    return len(text.encode("utf-8")) + (len(arch) if arch is not None else 0)


def write_header(f, kind: str, config: dict) -> None:
    """The root attributes of every bitnet file: format, version, bitnet's version, time, kind, config
    (JSON text) and, when the config has one, the architecture (zlib-compressed JSON, opaque bytes: a
    binary ResNet-18's 11 kB of JSON take 754 bytes)."""
    from bitnet import __version__
    set_text(f, "format", FORMAT_NAME)
    f.attrs["format_version"] = FORMAT_VERSION
    set_text(f, "bitnet_version", __version__)
    set_text(f, "created", datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"))
    set_text(f, "kind", kind)
    text, arch = _header_values(config)
    set_text(f, "config", text)
    if arch is not None:
        f.attrs["architecture"] = np.void(arch)


def write_weights(f, state: dict, attrs=None):
    """The ``/weights`` group: one dataset per key of ``state``; ``attrs`` maps keys to attributes."""
    weights = f.create_group("weights")
    for key, value in state.items():
        ds = create_dataset(weights, key, value)
        for name, v in (attrs or {}).get(key, {}).items():
            if isinstance(v, str):
                set_text(ds, name, v)
            else:
                ds.attrs[name] = v
    return weights


# -- reading ----------------------------------------------------------------------------------------

def open_file(path):
    """The HDF5 file at ``path``, read-only; ``FileNotFoundError`` (or another ``OSError`` of
    ``not_a_file``: a folder, ...) / ``BitnetFileError``."""
    import h5py
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise not_a_file(path, "model file")
    try:
        return h5py.File(path, "r")
    except OSError as e:
        raise BitnetFileError(path, "(file)", "an HDF5 file", f"unreadable data ({e})") from None


def attr(obj, path, name, kind):
    """Attribute ``name`` of ``obj`` as a ``"string"`` or an ``"int"``; its type and size are checked
    from the attribute's header before its value is read."""
    if name not in obj.attrs:
        raise BitnetFileError(path, f"attribute {name!r}", f"a {kind}", "nothing", "not a bitnet model file?")
    aid = obj.attrs.get_id(name)
    dtype, shape = aid.dtype, aid.shape
    if shape != ():
        raise BitnetFileError(path, f"attribute {name!r}", f"a single {kind}", f"shape {shape}")
    if kind == "string":
        if dtype.kind != "S":
            raise BitnetFileError(path, f"attribute {name!r}", "a fixed-length string", f"dtype {dtype}")
        if dtype.itemsize > MAX_CONFIG_BYTES:
            raise BitnetFileError(path, f"attribute {name!r}", f"at most {MAX_CONFIG_BYTES} bytes", f"{dtype.itemsize}")
        return bytes(obj.attrs[name]).decode("utf-8", "replace")
    if dtype.kind not in "iu" or dtype.itemsize > 8:
        raise BitnetFileError(path, f"attribute {name!r}", "an integer", f"dtype {dtype}")
    return int(obj.attrs[name])


def _parse_json(text, path, name):
    def constant(c):
        raise ValueError(f"{c} is not a JSON number")
    try:
        return json.loads(text, parse_constant=constant)
    except (ValueError, RecursionError) as e:
        raise BitnetFileError(path, f"attribute {name!r}", "JSON", f"invalid JSON ({e})") from None


def json_attr(obj, path, name):
    """A string attribute holding JSON, parsed (NaN and infinities refused)."""
    return _parse_json(attr(obj, path, name, "string"), path, name)


def zlib_json_attr(obj, path, name):
    """An opaque attribute holding zlib-compressed JSON, decompressed to at most
    ``MAX_ARCHITECTURE_BYTES`` and parsed."""
    aid = obj.attrs.get_id(name)
    key = f"attribute {name!r}"
    if aid.shape != () or aid.dtype.kind != "V" or aid.dtype.itemsize > MAX_CONFIG_BYTES:
        raise BitnetFileError(path, key, f"at most {MAX_CONFIG_BYTES} bytes of compressed JSON",
                              f"dtype {aid.dtype}, shape {aid.shape}")
    stream = zlib.decompressobj()
    try:
        text = stream.decompress(bytes(obj.attrs[name]), MAX_ARCHITECTURE_BYTES)
    except zlib.error as e:
        raise BitnetFileError(path, key, "zlib-compressed JSON", f"damaged data ({e})") from None
    if stream.unconsumed_tail or not stream.eof:
        raise BitnetFileError(path, key, f"compressed JSON of at most {MAX_ARCHITECTURE_BYTES} bytes",
                              "more" if stream.unconsumed_tail else "a truncated stream")
    return _parse_json(text.decode("utf-8", "replace"), path, name)


def read_header(f, path) -> tuple:
    """``(format_version, kind, config)`` of a bitnet file, checked; the config includes the
    architecture when the file has one."""
    fmt = attr(f, path, "format", "string")
    if fmt != FORMAT_NAME:
        raise BitnetFileError(path, "attribute 'format'", repr(FORMAT_NAME), short(fmt))
    version = attr(f, path, "format_version", "int")
    if version not in READABLE_VERSIONS:
        raise BitnetFileError(path, "attribute 'format_version'", f"one of {READABLE_VERSIONS}", f"{version}",
                              "written by a newer bitnet: upgrade bitnet (pip install -U bitnet-bnn)")
    config = json_attr(f, path, "config")
    if "architecture" in f.attrs:
        if version == 1 or not isinstance(config, dict) or "architecture" in config:
            raise BitnetFileError(path, "attribute 'architecture'", "an architecture beside a version 2 config "
                                  "without one", "a second architecture or a version 1 config")
        config = dict(config, architecture=zlib_json_attr(f, path, "architecture"))
    kind = attr(f, path, "kind", "string")
    return version, kind, config


def check_kind(path, kind, want, hint) -> None:
    if kind != want:
        raise BitnetFileError(path, "attribute 'kind'", repr(want), repr(kind), hint)


def member(group, name, path, key):
    """``group[name]`` (None if absent) when it is stored in this file under that name: soft and
    external links are refused, so a file never makes the reader open another file."""
    import h5py
    link = group.get(name, getlink=True)
    if link is None:
        return None
    if not isinstance(link, h5py.HardLink):
        raise BitnetFileError(path, key, "an object stored in this file", f"a {type(link).__name__}",
                              "bitnet files do not follow links")
    return group[name]


def group(parent, name, path, key):
    """``parent[name]`` as a group stored in this file, or None if absent."""
    import h5py
    g = member(parent, name, path, key)
    if g is not None and not isinstance(g, h5py.Group):
        raise BitnetFileError(path, key, "a group", type(g).__name__)
    return g


def dataset(ds, path, key, max_size=None, limit_name=""):
    """``ds`` if it is a dataset whose data lies in this file (no external raw-data files, no virtual
    dataset mapping other files) with at most ``max_size`` elements, stored in chunks no larger than
    the dataset itself plus ``MAX_CHUNK_SLACK`` bytes (HDF5 decompresses a whole chunk to read any of it,
    so a small dataset in one huge chunk would cost the chunk's size)."""
    import h5py
    if not isinstance(ds, h5py.Dataset):
        raise BitnetFileError(path, key, "a dataset", type(ds).__name__)
    if ds.is_virtual or ds.external:
        raise BitnetFileError(path, key, "data stored in this file", "a virtual dataset" if ds.is_virtual
                              else "raw data in external files", "bitnet files do not read other files")
    if max_size is not None and ds.size > max_size:
        raise BitnetFileError(path, key, f"at most {max_size} elements{limit_name}", f"{ds.size} (shape {ds.shape})")
    if ds.chunks is not None:
        itemsize = ds.dtype.itemsize
        chunk, own = math.prod(ds.chunks) * itemsize, math.prod(ds.shape) * itemsize
        if chunk > own + MAX_CHUNK_SLACK:
            raise BitnetFileError(path, key, f"chunks of at most the dataset's {own} bytes (+ {MAX_CHUNK_SLACK})",
                                  f"chunks of shape {ds.chunks} ({chunk} bytes)",
                                  "rewrite it with h5repack, or load and save it with bitnet")
    return ds


def plain_number_dtype(dtype) -> bool:
    """A dtype of plain numbers: bool, int or float of at most 8 bytes, not a string, complex, compound,
    array, object or variable-length type."""
    dtype = np.dtype(dtype)
    return dtype.kind in "biuf" and dtype.itemsize <= 8 and dtype.subdtype is None and dtype.fields is None \
        and dtype.metadata is None


def read_data(ds, path, key, finite=True, bound=MAX_ABS_VALUE) -> np.ndarray:
    """The values of a checked dataset, compared with its ``crc32`` attribute when it has one (files
    written before the checksums came have none); float values must be finite when ``finite`` and within
    +-``bound`` (None: no bound)."""
    try:
        data = np.asarray(ds[()])
    except (OSError, ValueError, RuntimeError) as e:
        raise BitnetFileError(path, key, "readable data", f"a damaged dataset ({e})") from None
    if CHECKSUM_ATTR in ds.attrs:
        want = attr(ds, path, CHECKSUM_ATTR, "int")
        if checksum(data) != want:
            raise BitnetFileError(path, key, f"data whose CRC-32 is the stored {want:#010x}",
                                  f"{checksum(data):#010x}", "the file was damaged after it was written (disk, "
                                  "transfer or an edit): use another copy")
    if finite and data.dtype.kind == "f" and data.size:
        lo, hi = float(data.min()), float(data.max())  # NaN if any is NaN; no temporary arrays
        if not (math.isfinite(lo) and math.isfinite(hi)):
            raise BitnetFileError(path, key, "finite values",
                                  f"{int(np.sum(~np.isfinite(data)))} NaN or infinite values")
        if bound is not None and max(hi, -lo) > bound:
            raise BitnetFileError(path, key, "values within +-2^64 (a square beyond it overflows float32)",
                                  f"{int(np.sum(np.abs(data) > bound))} values beyond it, the largest "
                                  f"{max(hi, -lo):.3g}")
    return data


def check_array(ds, path, key, shape, dtype):
    """``ds`` after checking its storage, shape and dtype against the expected ones (nothing read)."""
    ds = dataset(ds, path, key)
    if ds.shape != tuple(shape):
        raise BitnetFileError(path, key, f"shape {tuple(shape)}", f"shape {ds.shape}")
    if ds.dtype != dtype:
        raise BitnetFileError(path, key, f"dtype {np.dtype(dtype)}", f"dtype {ds.dtype}")
    return ds


def read_array(ds, path, key, shape, dtype, finite=True) -> np.ndarray:
    """The dataset's values, after checking its storage, shape and dtype against the expected ones."""
    return read_data(check_array(ds, path, key, shape, dtype), path, key, finite)


def weights_group(f, path):
    g = group(f, "weights", path, "group 'weights'")
    if g is None:
        raise BitnetFileError(path, "group 'weights'", "a group of datasets", "nothing")
    return g


def read_weights(f, path, expected: dict, sink=None) -> dict:
    """The ``/weights`` datasets, every one checked against ``expected`` (key -> array of the right shape
    and dtype) before any is read; no key may be missing or extra. With ``sink``, each array is handed
    to ``sink(key, array)`` as soon as it is read and checked, and not kept (at most one array read at
    a time); else they are returned by key."""
    g = weights_group(f, path)
    extra = sorted(set(g) - set(expected))
    if extra:
        raise BitnetFileError(path, f"weights/{extra[0]}", "only the keys of the model (its state_dict)",
                              f"{len(extra)} unexpected key(s): {', '.join(extra[:5])}")
    found = {}
    for key, ref in expected.items():
        ds = member(g, key, path, f"weights/{key}")
        if ds is None:
            raise BitnetFileError(path, f"weights/{key}", f"a dataset of shape {ref.shape}", "nothing")
        found[key] = check_array(ds, path, f"weights/{key}", ref.shape, ref.dtype)
    state = {}
    for key, ds in found.items():
        data = read_data(ds, path, f"weights/{key}")
        if sink is None:
            state[key] = data
        else:
            sink(key, data)
    return state
