"""MNIST and Fashion-MNIST readers (the four standard IDX files per dataset).

Both datasets share the same file names, sizes and format, so one function,
:func:`load_idx_dataset`, reads either; :func:`load_mnist` and
:func:`load_fashion_mnist` only fix the dataset name.  Nothing is cached:
every call reads the files again.

Downloading: ``download=False`` by default, as in torchvision's ``MNIST(root, download=False)``:
a Python call never touches the network unless asked. ``download=True`` fetches the missing
``.gz`` files of the split into the data folder (checksummed, atomically) and announces it on
stderr; :func:`download_idx_dataset` fetches several splits at once (what ``bitnet train`` does,
downloading by default unless given ``--no-download``).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Mapping, Optional, Sequence

import numpy as np

from bitnet.data.download import DEFAULT_MIRRORS, DEFAULT_TIMEOUT, download_files
from bitnet.data.errors import ChecksumError, DatasetNotFoundError, IDXFormatError
from bitnet.data.idx import is_gzip, read_idx, verify_checksum
from bitnet.data.paths import StrPath, download_target_dir, locate_files

__all__ = [
    "IDX_DATASETS",
    "SPLIT_FILES",
    "CANONICAL_COUNTS",
    "CANONICAL_SHA256",
    "CANONICAL_RAW_SHA256",
    "CANONICAL_SIZES",
    "download_idx_dataset",
    "load_idx_dataset",
    "load_mnist",
    "load_fashion_mnist",
]

IDX_DATASETS = ("mnist", "fashion-mnist")

#: split -> (images file, labels file), without the ``.gz`` suffix.
SPLIT_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}

#: Number of samples in the canonical files.
CANONICAL_COUNTS = {"train": 60000, "test": 10000}

#: SHA-256 of the canonical ``.gz`` files (as published with the datasets).
CANONICAL_SHA256: dict[str, dict[str, str]] = {
    "mnist": {
        "train-images-idx3-ubyte.gz": "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609",
        "train-labels-idx1-ubyte.gz": "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c",
        "t10k-images-idx3-ubyte.gz": "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6",
        "t10k-labels-idx1-ubyte.gz": "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6",
    },
    "fashion-mnist": {
        "train-images-idx3-ubyte.gz": "3aede38d61863908ad78613f6a32ed271626dd12800ba2636569512369268a84",
        "train-labels-idx1-ubyte.gz": "a04f17134ac03560a47e3764e11b92fc97de4d1bfaf8ba1a3aa29af54cc90845",
        "t10k-images-idx3-ubyte.gz": "346e55b948d973a97e58d2351dde16a484bd415d4595297633bb08f03db6a073",
        "t10k-labels-idx1-ubyte.gz": "67da17c76eaffca5446c3361aaab5c3cd6d1c2608764d35dfb1850b086bf8dd5",
    },
}

#: SHA-256 of the canonical files decompressed (saved without ``.gz``, e.g. by ``gunzip``): a file
#: under a canonical name is checked whatever it holds, so a tampered raw copy is refused too.
CANONICAL_RAW_SHA256: dict[str, dict[str, str]] = {
    "mnist": {
        "train-images-idx3-ubyte": "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
        "train-labels-idx1-ubyte": "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
        "t10k-images-idx3-ubyte": "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
        "t10k-labels-idx1-ubyte": "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
    },
    "fashion-mnist": {
        "train-images-idx3-ubyte": "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
        "train-labels-idx1-ubyte": "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
        "t10k-images-idx3-ubyte": "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
        "t10k-labels-idx1-ubyte": "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
    },
}

#: Size in bytes of the canonical ``.gz`` files (the same names in both datasets).
CANONICAL_SIZES: dict[str, dict[str, int]] = {
    "mnist": {
        "train-images-idx3-ubyte.gz": 9912422,
        "train-labels-idx1-ubyte.gz": 28881,
        "t10k-images-idx3-ubyte.gz": 1648877,
        "t10k-labels-idx1-ubyte.gz": 4542,
    },
    "fashion-mnist": {
        "train-images-idx3-ubyte.gz": 26421880,
        "train-labels-idx1-ubyte.gz": 29515,
        "t10k-images-idx3-ubyte.gz": 4422102,
        "t10k-labels-idx1-ubyte.gz": 5148,
    },
}

_TITLES = {"mnist": "MNIST", "fashion-mnist": "Fashion-MNIST"}
_IMAGE_SHAPE = (28, 28)
#: The most samples a non-canonical file (``checksums=`` given) may declare: 300,000 images, 235 MB.
MAX_SAMPLES = 300_000
_NUM_CLASSES = 10


def _locate(dataset: str, split: str, data_dir: Optional[StrPath]) -> list[Path]:
    """Paths of (images, labels) for ``split``; the ``.gz`` file is preferred over the raw one."""
    required = [(name + ".gz", name) for name in SPLIT_FILES[split]]
    return locate_files(dataset, required, data_dir)


def _shown(path: Path) -> str:
    """``path`` with the home folder written as ``~``."""
    try:
        return str(Path("~") / path.resolve().relative_to(Path.home().resolve()))
    except ValueError:
        return str(path)


def download_idx_dataset(
    dataset: str,
    data_dir: Optional[StrPath] = None,
    splits: Sequence[str] = ("train", "test"),
    *,
    checksums: Optional[Mapping[str, str]] = None,
    mirrors: Optional[Sequence[str]] = None,
    timeout: float = DEFAULT_TIMEOUT,
    progress: bool = True,
) -> list[Path]:
    """Download the ``.gz`` files of ``splits`` of MNIST or Fashion-MNIST that the data folder lacks.

    Splits whose files are already found (see :func:`load_idx_dataset`) are left alone; the
    missing files go to ``DATA/<dataset>/`` (``DATA`` as resolved from ``data_dir``), each
    verified against its SHA-256 before it is renamed into place. With ``progress`` one line
    announces the download on stderr (``downloading MNIST (11.6 MB) into ~/.cache/bitnet/data/mnist
    ...``), then each file's progress. Returns the paths downloaded (empty when nothing was missing).

    Raises:
        DownloadError: no mirror delivered a verified file (e.g. no internet access).
        ValueError: an unknown dataset or split, or a file without a known SHA-256.
    """
    if dataset not in IDX_DATASETS:
        raise ValueError(f"unknown IDX dataset {dataset!r}; expected one of {IDX_DATASETS}")
    unknown = [s for s in splits if s not in SPLIT_FILES]
    if unknown:
        raise ValueError(f"unknown split {unknown[0]!r}; expected 'train' or 'test'")
    table = CANONICAL_SHA256[dataset] if checksums is None else checksums
    missing = []
    for split in splits:
        try:
            _locate(dataset, split, data_dir)
        except DatasetNotFoundError:
            missing.append(split)
    target = download_target_dir(dataset, data_dir)
    names = [n + ".gz" for split in missing for n in SPLIT_FILES[split] if not (target / (n + ".gz")).is_file()]
    if not names:
        return []
    if progress:
        sizes = CANONICAL_SIZES[dataset]
        size = f" ({sum(sizes[n] for n in names) / 1e6:.1f} MB)" if checksums is None else ""
        print(f"downloading {_TITLES[dataset]}{size} into {_shown(target)} ...", file=sys.stderr, flush=True)
    return download_files(names, target, mirrors or DEFAULT_MIRRORS[dataset], table, timeout=timeout,
                          progress=progress)


def _verify(path: Path, checksums: Mapping[str, str]) -> None:
    """Check the SHA-256 of the file under ``path``'s name, whatever it holds (raw bytes saved under
    a ``.gz`` name are checked against the ``.gz`` digest, and refused). A ``.gz`` name needs a
    digest; a raw name is checked where ``checksums`` has one (the canonical tables do)."""
    expected = checksums.get(path.name)
    if expected is None:
        if path.name.endswith(".gz"):
            raise ValueError(
                f"{path}: no SHA-256 known for {path.name!r}; add it to checksums= or pass verify=False"
            )
        return
    if path.name.endswith(".gz") and not is_gzip(path):
        raise ChecksumError(
            f"{path}: not a gzip file, though named .gz (raw IDX bytes?); its SHA-256 cannot match the published "
            f"one. Delete it and download it again, or gzip the raw file, or keep it without the .gz suffix."
        )
    verify_checksum(path, expected)


def _check(images: np.ndarray, labels: np.ndarray, paths: list[Path], expected_count: Optional[int]) -> None:
    img_path, lbl_path = paths
    if images.dtype != np.uint8 or images.ndim != 3 or images.shape[1:] != _IMAGE_SHAPE:
        raise IDXFormatError(
            f"{img_path}: expected uint8 images of shape (N, 28, 28), found {images.dtype} {images.shape}. "
            "Is this the images file? It may be corrupt: download it again."
        )
    if labels.dtype != np.uint8 or labels.ndim != 1:
        raise IDXFormatError(
            f"{lbl_path}: expected uint8 labels of shape (N,), found {labels.dtype} {labels.shape}. "
            "Is this the labels file? It may be corrupt: download it again."
        )
    if len(images) != len(labels):
        raise IDXFormatError(
            f"{len(images)} images in {img_path} but {len(labels)} labels in {lbl_path}: the files do not "
            "belong together (mixed splits, datasets or versions). Download both again."
        )
    if expected_count is not None and len(images) != expected_count:
        raise IDXFormatError(
            f"{img_path}: {len(images)} samples, expected {expected_count} in the canonical files. "
            "For other files pass checksums= (your own table, or {}) to skip the canonical count check."
        )
    if labels.size and int(labels.max()) >= _NUM_CLASSES:
        raise IDXFormatError(f"{lbl_path}: label {int(labels.max())} out of range 0..9. The file is probably corrupt.")


def load_idx_dataset(
    dataset: str,
    split: str = "train",
    data_dir: Optional[StrPath] = None,
    download: bool = False,
    verify: bool = True,
    *,
    checksums: Optional[Mapping[str, str]] = None,
    mirrors: Optional[Sequence[str]] = None,
    timeout: float = DEFAULT_TIMEOUT,
) -> tuple[np.ndarray, np.ndarray]:
    """Load a split of MNIST or Fashion-MNIST.

    Args:
        dataset: ``"mnist"`` or ``"fashion-mnist"``.
        split: ``"train"`` (60,000 samples) or ``"test"`` (10,000 samples).
        data_dir: data root (see :func:`bitnet.data.resolve_data_dir`: ``data_dir``, else
            ``$BITNET_DATA``, else ``~/.cache/bitnet/data``); files are searched in
            ``data_dir/<dataset>/`` and then in ``data_dir`` itself.
        download: fetch the split's missing ``.gz`` files from the mirrors into
            ``data_dir/<dataset>/`` (needs internet; see :func:`download_idx_dataset`).
            False by default, as in torchvision: without it nothing touches the network.
        verify: check the SHA-256 of each file under a canonical name, whatever it holds: a
            ``.gz`` name against the published digest (raw bytes under it are refused), a raw
            name against the digest of the decompressed canonical file. With ``checksums``,
            raw names are checked only where the table has them.
        checksums: ``{file name: sha256}`` replacing the canonical table. When
            given, the sample count is not compared with 60,000/10,000 (only
            images against labels), so your own or test files can be read.
        mirrors: base URLs tried in order instead of the canonical mirrors.
        timeout: seconds per network operation when downloading.

    Returns:
        ``(images, labels)``: ``uint8`` array of shape ``(N, 28, 28)`` and
        ``int64`` array of shape ``(N,)`` with values in 0..9.

    Raises:
        DatasetNotFoundError: files missing and ``download`` is false.
        IDXFormatError: malformed, truncated or mismatched files.
        ChecksumError: a file differs from the expected digest.
        DownloadError: ``download=True`` and no mirror delivered a verified file.
    """
    if dataset not in IDX_DATASETS:
        raise ValueError(f"unknown IDX dataset {dataset!r}; expected one of {IDX_DATASETS}")
    if split not in SPLIT_FILES:
        raise ValueError(f"unknown split {split!r}; expected 'train' or 'test'")
    canonical = checksums is None
    table = {**CANONICAL_SHA256[dataset], **CANONICAL_RAW_SHA256[dataset]} if canonical else checksums
    try:
        paths = _locate(dataset, split, data_dir)
    except DatasetNotFoundError:
        if not download:
            raise
        download_idx_dataset(dataset, data_dir, (split,), checksums=checksums, mirrors=mirrors, timeout=timeout)
        paths = _locate(dataset, split, data_dir)
    if verify:
        for p in paths:
            _verify(p, table)
    count = CANONICAL_COUNTS[split] if canonical else MAX_SAMPLES
    images, labels = read_idx(paths[0], max_bytes=count * 28 * 28), read_idx(paths[1], max_bytes=count)
    _check(images, labels, paths, CANONICAL_COUNTS[split] if canonical else None)
    return images, labels.astype(np.int64)


def load_mnist(
    split: str = "train",
    data_dir: Optional[StrPath] = None,
    download: bool = False,
    verify: bool = True,
    **kwargs,
) -> tuple[np.ndarray, np.ndarray]:
    """Load MNIST: ``(images uint8 (N, 28, 28), labels int64 (N,))``. See :func:`load_idx_dataset`."""
    return load_idx_dataset("mnist", split, data_dir, download, verify, **kwargs)


def load_fashion_mnist(
    split: str = "train",
    data_dir: Optional[StrPath] = None,
    download: bool = False,
    verify: bool = True,
    **kwargs,
) -> tuple[np.ndarray, np.ndarray]:
    """Load Fashion-MNIST: ``(images uint8 (N, 28, 28), labels int64 (N,))``. See :func:`load_idx_dataset`."""
    return load_idx_dataset("fashion-mnist", split, data_dir, download, verify, **kwargs)
