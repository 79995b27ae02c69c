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
``ROOT`` holding the batch files directly; the binary format is preferred.

Record counts: any number of records per file is accepted (the canonical
files hold 10,000 each); the structure is validated instead: whole 3073-byte
records, ``(N, 3072)`` uint8 data, N labels, labels in 0..9.
"""

from __future__ import annotations

import io
import pickle
from pathlib import Path
from typing import Optional

import numpy as np

from bitnet.data.errors import CIFARFormatError, UnsafePickleError
from bitnet.data.paths import StrPath, candidate_dirs, dataset_not_found

__all__ = ["CIFAR10_CLASSES", "RestrictedUnpickler", "load_cifar10", "read_cifar_bin", "read_cifar_python"]

CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")

_PIXELS = 3 * 32 * 32
_RECORD = 1 + _PIXELS
_SPLIT_BATCHES = {"train": [f"data_batch_{i}" for i in range(1, 6)], "test": ["test_batch"]}
_FORMATS = {"bin": ("cifar-10-batches-bin", ".bin"), "python": ("cifar-10-batches-py", "")}
_URL = "https://www.cs.toronto.edu/~kriz/cifar.html"


def _numpy_globals() -> dict[tuple[str, str], object]:
    """The only globals a pickled uint8 ndarray needs, under their NumPy 1.x and 2.x module names."""
    try:  # numpy >= 2
        from numpy._core.multiarray import _reconstruct as reconstruct
        from numpy._core.numeric import _frombuffer as frombuffer
    except ImportError:  # numpy 1.x
        from numpy.core.multiarray import _reconstruct as reconstruct
        from numpy.core.numeric import _frombuffer as frombuffer
    allowed: dict[tuple[str, str], object] = {("numpy", "ndarray"): np.ndarray, ("numpy", "dtype"): np.dtype}
    for mod in ("numpy.core", "numpy._core"):
        allowed[(mod + ".multiarray", "_reconstruct")] = reconstruct
        allowed[(mod + ".numeric", "_frombuffer")] = frombuffer
    import codecs

    allowed[("_codecs", "encode")] = codecs.encode  # bytes pickled by Python 3 with protocol <= 2
    allowed[("codecs", "encode")] = codecs.encode
    return allowed


class RestrictedUnpickler(pickle.Unpickler):
    """Unpickler whose ``find_class`` resolves only the exact globals needed to rebuild an ndarray.

    Anything else (``os.system``, ``builtins.eval``, any class) raises
    :class:`UnsafePickleError`.
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
    if labels.shape != (n,):
        raise CIFARFormatError(f"{path}: {labels.shape[0] if labels.ndim else 0} labels for {n} images; expected one each.")
    if n and (labels.min() < 0 or labels.max() > 9):
        raise CIFARFormatError(f"{path}: labels out of range 0..9 (found {labels.min()}..{labels.max()}); the file is corrupt.")
    return labels.astype(np.int64)


def read_cifar_bin(path: StrPath) -> tuple[np.ndarray, np.ndarray]:
    """Read one binary batch: ``(images uint8 (N, 3, 32, 32), labels int64 (N,))``."""
    path = Path(path)
    raw = np.fromfile(path, dtype=np.uint8)
    if raw.size == 0 or raw.size % _RECORD:
        raise CIFARFormatError(
            f"{path}: {raw.size} bytes is not a whole number of {_RECORD}-byte records (1 label + 3072 pixels); "
            f"the file is truncated or not a CIFAR-10 binary batch. Download it again from {_URL}."
        )
    records = raw.reshape(-1, _RECORD)
    images = records[:, 1:].reshape(-1, 3, 32, 32).copy()
    return images, _check_labels(records[:, 0], len(records), path)


def read_cifar_python(path: StrPath) -> tuple[np.ndarray, np.ndarray]:
    """Read one python-format batch safely: ``(images uint8 (N, 3, 32, 32), labels int64 (N,))``."""
    path = Path(path)
    try:
        batch = RestrictedUnpickler(io.BytesIO(path.read_bytes()), encoding="bytes").load()
    except UnsafePickleError as exc:
        raise UnsafePickleError(f"{path}: {exc}") from None
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError) as exc:
        raise CIFARFormatError(f"{path}: not a readable CIFAR-10 python batch ({exc!r}); download it again.") from exc
    if not isinstance(batch, dict):
        raise CIFARFormatError(f"{path}: expected a pickled dict, found {type(batch).__name__}.")
    get = lambda key: batch.get(key.encode(), batch.get(key))  # noqa: E731  (py2 bytes or py3 str keys)
    data, labels = get("data"), get("labels")
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != _PIXELS:
        found = f"{data.dtype} {data.shape}" if isinstance(data, np.ndarray) else type(data).__name__
        raise CIFARFormatError(f"{path}: key b'data' must be a uint8 array of shape (N, 3072), found {found}.")
    if labels is None:
        raise CIFARFormatError(f"{path}: key b'labels' is missing (keys: {sorted(map(repr, batch))}).")
    labels = np.asarray(labels)
    if labels.dtype.kind not in "iu":
        raise CIFARFormatError(f"{path}: b'labels' must be integers, found {labels.dtype}.")
    images = np.ascontiguousarray(data.reshape(-1, 3, 32, 32))
    return images, _check_labels(labels, len(data), path)


def _find_batches(split: str, data_dir: Optional[StrPath], fmt: str) -> tuple[str, list[Path]]:
    formats = list(_FORMATS) if fmt == "auto" else [fmt]
    searched: list[Path] = []
    for base in candidate_dirs("cifar-10", data_dir):
        for f in formats:
            subdir, suffix = _FORMATS[f]
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
        format: ``"bin"``, ``"python"`` or ``"auto"`` (binary preferred).

    Raises:
        DatasetNotFoundError: no folder holds all batch files of the split.
        CIFARFormatError: a batch is malformed.
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
