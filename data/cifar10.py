"""CIFAR-10 reader for the two official formats (no download; no arbitrary pickle).

* **binary** (``cifar-10-batches-bin/``): ``data_batch_1.bin`` .. ``data_batch_5.bin``
  and ``test_batch.bin``; each record is 1 label byte followed by 3072 pixel
  bytes, channel-major (1024 red, 1024 green, 1024 blue, each 32x32 row-major).
* **python** (``cifar-10-batches-py/``): ``data_batch_1`` .. ``data_batch_5`` and
  ``test_batch``; each a pickled dict with ``b"data"`` (uint8 array (N, 3072),
  same layout) and ``b"labels"`` (N ints).  It is read with a restricted
  unpickler that only rebuilds NumPy arrays (see :class:`RestrictedUnpickler`),
  so a crafted file cannot run code.

The batch folder is searched in ``ROOT/cifar-10/``, ``ROOT/`` (each holding
``cifar-10-batches-bin`` or ``cifar-10-batches-py``) and in ``ROOT/cifar-10`` or
``ROOT`` holding the batch files directly.  With ``format="auto"`` the binary
format is preferred wherever it is found: every location is searched for a
complete set of binary batches before any is searched for python batches (so
``ROOT/cifar-10-batches-bin`` wins over ``ROOT/cifar-10/cifar-10-batches-py``);
``format="python"`` asks for the python batches.

Record counts: any positive number of records per file is accepted (the
canonical files hold 10,000 each); the structure is validated instead: whole
3073-byte records, ``(N, 3072)`` uint8 data, N labels, labels in 0..9.  An
empty batch (0 records) is refused: no official file is empty, so it is
damage (a failed copy or extraction), not a valid batch.

A python batch is checked before and while it is unpickled, so that a small
file cannot make the reader allocate more than the file holds: every length a
pickle opcode declares must fit in the bytes that follow it, memo indices are
bounded by the opcodes read so far, and arrays are built only from data
bytes present in the file, after their shape and dtype are checked against
those bytes (no array is allocated from a declared shape).
"""

from __future__ import annotations

import io
import pickle
import pickletools
from pathlib import Path
from typing import Optional

import numpy as np

from bitnet.data.errors import CIFARFormatError, UnsafePickleError
from bitnet.data.paths import StrPath, candidate_dirs, dataset_not_found

__all__ = ["CIFAR10_CLASSES", "RestrictedUnpickler", "check_pickle_sizes", "load_cifar10", "read_cifar_bin",
           "read_cifar_python"]

CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")

_PIXELS = 3 * 32 * 32
_RECORD = 1 + _PIXELS
_SPLIT_BATCHES = {"train": [f"data_batch_{i}" for i in range(1, 6)], "test": ["test_batch"]}
_FORMATS = {"bin": ("cifar-10-batches-bin", ".bin"), "python": ("cifar-10-batches-py", "")}
_URL = "https://www.cs.toronto.edu/~kriz/cifar.html"


class _PickleRefused(CIFARFormatError):
    """Raised inside the unpickler; :func:`read_cifar_python` adds the file name."""


class _NdarrayClass:
    """What the global ``numpy.ndarray`` resolves to: a marker that ``_reconstruct`` accepts as the
    array class. The real class is never handed out, so a pickle cannot call ``ndarray(shape)``
    (REDUCE) or ``ndarray.__new__`` (NEWOBJ) to allocate an array of a shape it only declares."""

    def __repr__(self) -> str:
        return "numpy.ndarray (restricted)"


_NDARRAY = _NdarrayClass()
_ARRAY_KINDS = "biuf"  # plain booleans, integers and floats: no objects, strings, structs or subarrays


def _checked_data(shape: object, dtype: object, data: object) -> bytes:
    """The data bytes of a pickled array, after checking that they are exactly what ``shape`` and
    ``dtype`` need (the size is computed in Python ints: no overflow, nothing allocated)."""
    if not isinstance(dtype, np.dtype) or dtype.kind not in _ARRAY_KINDS or dtype.hasobject or dtype.subdtype:
        raise _PickleRefused(f"a pickled array of dtype {dtype!r}; a CIFAR-10 batch holds only numeric arrays.")
    if (type(shape) is not tuple or len(shape) > 32
            or not all(type(d) is int and d >= 0 for d in shape)):
        raise _PickleRefused(f"a pickled array with shape {shape!r}; expected a tuple of non-negative ints.")
    if isinstance(data, str):  # the data of a NumPy array pickled by Python 2, read as text
        data = data.encode("latin-1")
    if not isinstance(data, (bytes, bytearray)):
        raise _PickleRefused(f"a pickled array whose data is a {type(data).__name__}, not bytes.")
    count = 1
    for d in shape:
        count *= d
    if count * dtype.itemsize != len(data):
        raise _PickleRefused(
            f"a pickled array declares shape {shape} of {dtype} ({count * dtype.itemsize} bytes) but holds "
            f"{len(data)} bytes of data; the file is damaged or crafted.")
    return bytes(data)


class _PickledArray(np.ndarray):
    """An empty array (what ``_reconstruct`` returns) that checks the state a pickle gives it.

    NumPy's own ``ndarray.__setstate__`` would, for an object dtype, allocate the declared size
    before reading the data, and raises a bare ``MemoryError`` for a shape too large to address;
    this one hands it only states whose data bytes match the declared numeric shape and dtype."""

    def __setstate__(self, state: object) -> None:
        if not isinstance(state, tuple) or len(state) not in (4, 5):
            raise _PickleRefused(f"a pickled array with a state of type {type(state).__name__}; expected a tuple.")
        shape, dtype, fortran, data = state[-4:]
        data = _checked_data(shape, dtype, data)
        np.ndarray.__setstate__(self, (1, shape, dtype, bool(fortran), data))


def _reconstruct(cls: object, shape: object, dtype: object) -> np.ndarray:
    """``numpy.core.multiarray._reconstruct`` as NumPy's pickles call it: ``(ndarray, (0,), b'b')``,
    an empty array that the next BUILD fills. Any other shape would allocate what the file declares."""
    if cls is not _NDARRAY:
        raise _PickleRefused(f"_reconstruct of {cls!r}; only numpy.ndarray is allowed.")
    if not (type(shape) is tuple and len(shape) == 1 and type(shape[0]) is int and shape[0] == 0):
        raise _PickleRefused(
            f"_reconstruct asks for shape {shape!r} before any data is read (NumPy's pickles ask for (0,)); "
            "refusing to allocate it.")
    return np.ndarray.__new__(_PickledArray, (0,), np.uint8)


def _frombuffer(buf: object, dtype: object, shape: object, order: object, axis_order: object = None) -> np.ndarray:
    """``numpy.core.numeric._frombuffer`` (pickle protocol 5), with the data checked against shape and dtype."""
    data = _checked_data(shape, dtype, buf)
    count = len(data) // dtype.itemsize
    flat = np.frombuffer(data, dtype=dtype, count=count) if count else np.empty(0, dtype)
    if order == "K" and axis_order is not None:
        if type(axis_order) not in (tuple, list) or sorted(axis_order) != list(range(len(shape))):
            raise _PickleRefused(f"_frombuffer with axis order {axis_order!r} for a {len(shape)}-d array.")
        return flat.reshape(shape, order="C").transpose(axis_order).copy()
    if order not in ("C", "F", "K", "A"):
        raise _PickleRefused(f"_frombuffer with order {order!r}.")
    return flat.reshape(shape, order=order).copy()


def _encode(obj: object, encoding: str = "utf-8", errors: str = "strict") -> bytes:
    """``_codecs.encode`` as Python 3 pickles ``bytes`` under protocol <= 2: ``(str, 'latin1')`` only,
    which gives exactly one byte per character (no other codec is looked up or run)."""
    if not isinstance(obj, str) or encoding not in ("latin1", "latin-1") or errors != "strict":
        raise _PickleRefused(f"_codecs.encode of a {type(obj).__name__} with {encoding!r}; only latin1 text is allowed.")
    return obj.encode("latin-1")


def _numpy_globals() -> dict[tuple[str, str], object]:
    """The only globals a pickled numeric ndarray needs, under their NumPy 1.x and 2.x module names,
    each resolved to a checked stand-in (see :class:`RestrictedUnpickler`)."""
    allowed: dict[tuple[str, str], object] = {("numpy", "ndarray"): _NDARRAY, ("numpy", "dtype"): np.dtype}
    for mod in ("numpy.core", "numpy._core"):
        allowed[(mod + ".multiarray", "_reconstruct")] = _reconstruct
        allowed[(mod + ".numeric", "_frombuffer")] = _frombuffer
    allowed[("_codecs", "encode")] = _encode  # bytes pickled by Python 3 with protocol <= 2
    allowed[("codecs", "encode")] = _encode
    return allowed


_MEMO_OPS = {"PUT", "BINPUT", "LONG_BINPUT"}


def check_pickle_sizes(raw: bytes) -> None:
    """Refuse a pickle whose opcodes declare more than it holds, before it is unpickled.

    CPython's unpickler allocates a counted ``bytes``/``str``/``bytearray`` (``BINBYTES8`` and kin)
    at the length the opcode declares and only then reads it, and grows its memo to twice a
    ``PUT`` index: a few bytes can ask for terabytes. This walks the opcodes (``pickletools.genops``
    reads each argument with ``read(n)``, which stops at the end of the data) and checks that every
    declared length is present and every memo index is at most the number of opcodes before it.

    Raises:
        CIFARFormatError: the pickle is truncated, malformed or declares sizes it does not hold.
    """
    stream = io.BytesIO(raw)
    try:
        for count, (op, arg, pos) in enumerate(pickletools.genops(stream)):
            if op.name in _MEMO_OPS and not (isinstance(arg, int) and 0 <= arg <= count):
                raise _PickleRefused(f"memo index {arg!r} at byte {pos} after only {count} opcodes.")
    except _PickleRefused:
        raise
    except (ValueError, TypeError, OverflowError, UnicodeDecodeError) as exc:
        # genops: unknown opcode, truncated argument ("expected N bytes ... but only M remain"), no STOP
        raise CIFARFormatError(f"not a well-formed pickle ({exc}).") from None


class RestrictedUnpickler(pickle.Unpickler):
    """Unpickler whose ``find_class`` resolves only the exact globals needed to rebuild an ndarray.

    Anything else (``os.system``, ``builtins.eval``, any class) raises
    :class:`UnsafePickleError`. The NumPy globals resolve to checked stand-ins: ``ndarray`` to a
    marker that cannot be called, ``_reconstruct`` to one that returns only an empty array (whose
    ``__setstate__`` checks the declared shape and dtype against the data bytes), ``_frombuffer``
    likewise, ``_codecs.encode`` to latin1 only; so no array is allocated from a size a file merely
    declares. Arrays come back as NumPy arrays (an ndarray subclass; ``np.asarray`` gives the base
    class). Counted opcodes and memo indices are checked before unpickling by
    :func:`check_pickle_sizes`, which :func:`read_cifar_python` runs first.
    """

    _allowed = _numpy_globals()

    def find_class(self, module: str, name: str) -> object:
        try:
            return self._allowed[(module, name)]
        except KeyError:
            raise UnsafePickleError(
                f"refusing to load global {module}.{name}: a CIFAR-10 python batch only needs NumPy array "
                "globals. This file is not an official CIFAR-10 batch and may be malicious; use the "
                f"official files ({_URL}), preferably the binary version."
            ) from None


def _check_labels(labels: np.ndarray, n: int, path: Path) -> np.ndarray:
    if labels.ndim != 1:
        raise CIFARFormatError(
            f"{path}: b'labels' must be a flat list of {n} integers (one per image), found an array of shape "
            f"{labels.shape}; the file is corrupt or not a CIFAR-10 batch.")
    if len(labels) != n:
        raise CIFARFormatError(f"{path}: {len(labels)} labels for {n} images; expected one each.")
    if labels.min() < 0 or labels.max() > 9:
        raise CIFARFormatError(f"{path}: labels out of range 0..9 (found {labels.min()}..{labels.max()}); the file is corrupt.")
    return labels.astype(np.int64)


def _empty_batch(path: Path, what: str) -> CIFARFormatError:
    return CIFARFormatError(
        f"{path}: {what}, no records; an official CIFAR-10 batch holds 10,000 images, so the file is damaged "
        f"(an interrupted copy or extraction). Download it again from {_URL}.")


def read_cifar_bin(path: StrPath) -> tuple[np.ndarray, np.ndarray]:
    """Read one binary batch: ``(images uint8 (N, 3, 32, 32), labels int64 (N,))``, N >= 1."""
    path = Path(path)
    raw = np.fromfile(path, dtype=np.uint8)
    if raw.size == 0:
        raise _empty_batch(path, "the file is empty (0 bytes)")
    if raw.size % _RECORD:
        raise CIFARFormatError(
            f"{path}: {raw.size} bytes is not a whole number of {_RECORD}-byte records (1 label + 3072 pixels); "
            f"the file is truncated or not a CIFAR-10 binary batch. Download it again from {_URL}."
        )
    records = raw.reshape(-1, _RECORD)
    images = records[:, 1:].reshape(-1, 3, 32, 32).copy()
    return images, _check_labels(records[:, 0], len(records), path)


def read_cifar_python(path: StrPath) -> tuple[np.ndarray, np.ndarray]:
    """Read one python-format batch safely: ``(images uint8 (N, 3, 32, 32), labels int64 (N,))``, N >= 1.

    The pickle's opcodes are checked first (:func:`check_pickle_sizes`), then it is read with
    :class:`RestrictedUnpickler`: nothing is allocated beyond what the file holds.
    """
    path = Path(path)
    raw = path.read_bytes()
    try:
        check_pickle_sizes(raw)
        batch = RestrictedUnpickler(io.BytesIO(raw), encoding="bytes").load()
    except UnsafePickleError as exc:
        raise UnsafePickleError(f"{path}: {exc}") from None
    except CIFARFormatError as exc:
        raise CIFARFormatError(
            f"{path}: not a CIFAR-10 python batch: {exc} Use the official files ({_URL}).") from None
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError, KeyError,
            OverflowError) as exc:
        raise CIFARFormatError(f"{path}: not a readable CIFAR-10 python batch ({exc!r}); download it again.") from exc
    del raw
    if not isinstance(batch, dict):
        raise CIFARFormatError(f"{path}: expected a pickled dict, found {type(batch).__name__}.")
    get = lambda key: batch.get(key.encode(), batch.get(key))  # noqa: E731  (py2 bytes or py3 str keys)
    data, labels = get("data"), get("labels")
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != _PIXELS:
        found = f"{data.dtype} {data.shape}" if isinstance(data, np.ndarray) else type(data).__name__
        raise CIFARFormatError(f"{path}: key b'data' must be a uint8 array of shape (N, 3072), found {found}.")
    if len(data) == 0:
        raise _empty_batch(path, "b'data' holds 0 images")
    if labels is None:
        raise CIFARFormatError(f"{path}: key b'labels' is missing (keys: {sorted(map(repr, batch))}).")
    try:
        labels = np.asarray(labels)
    except (ValueError, TypeError) as exc:  # ragged nested lists: NumPy refuses an inhomogeneous shape
        raise CIFARFormatError(
            f"{path}: b'labels' must be a flat list of {len(data)} integers (one per image), found a "
            f"{type(labels).__name__} NumPy cannot read as an array ({exc}); the file is corrupt.") from None
    if labels.dtype.kind not in "iu":
        raise CIFARFormatError(f"{path}: b'labels' must be integers, found {labels.dtype}.")
    images = np.ascontiguousarray(data.reshape(-1, 3, 32, 32))
    return images, _check_labels(labels, len(data), path)


def _find_batches(split: str, data_dir: Optional[StrPath], fmt: str) -> tuple[str, list[Path]]:
    formats = list(_FORMATS) if fmt == "auto" else [fmt]
    searched: list[Path] = []
    for f in formats:  # the format first, then the location: "auto" prefers binary batches wherever they are
        subdir, suffix = _FORMATS[f]
        for base in candidate_dirs("cifar-10", data_dir):
            for d in (base / subdir, base):
                files = [d / (name + suffix) for name in _SPLIT_BATCHES[split]]
                if d not in searched:
                    searched.append(d)
                if all(p.is_file() for p in files):
                    return f, files
    expected = [
        f"{_FORMATS[f][0]}/{{{','.join(n + _FORMATS[f][1] for n in _SPLIT_BATCHES[split])}}}" for f in formats
    ]
    raise dataset_not_found(
        "cifar-10", searched, expected, download_supported=False,
        extra_hint=(f"bitnet has no CIFAR-10 downloader: get the 'CIFAR-10 binary version' (cifar-10-binary.tar.gz, "
                    f"or the python version) from {_URL} and extract it into DIR/cifar-10/."),
    )


def load_cifar10(
    split: str = "train", data_dir: Optional[StrPath] = None, *, format: str = "auto"
) -> tuple[np.ndarray, np.ndarray]:
    """Load a CIFAR-10 split: ``(images uint8 (N, 3, 32, 32), labels int64 (N,))``.

    Args:
        split: ``"train"`` (``data_batch_1..5``) or ``"test"`` (``test_batch``).
        data_dir: data root (see :func:`bitnet.data.resolve_data_dir`).
        format: ``"bin"``, ``"python"`` or ``"auto"``: the binary batches if any searched
            location holds them all, else the python batches.

    Raises:
        DatasetNotFoundError: no folder holds all batch files of the split.
        CIFARFormatError: a batch is malformed, empty, or (python format) declares more than it holds.
        UnsafePickleError: a python batch asks for a forbidden global.
    """
    if split not in _SPLIT_BATCHES:
        raise ValueError(f"unknown split {split!r}; expected 'train' or 'test'")
    if format not in ("auto", *_FORMATS):
        raise ValueError(f"unknown format {format!r}; expected 'auto', 'bin' or 'python'")
    fmt, files = _find_batches(split, data_dir, format)
    reader = read_cifar_bin if fmt == "bin" else read_cifar_python
    parts = [reader(p) for p in files]
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])
