"""In-memory datasets and a minibatch loader yielding NumPy arrays.

Randomness: the loader owns one ``numpy.random.Generator`` and draws a new
permutation from it at the start of every epoch; NumPy's global RNG is never
used, so a seed makes the whole sequence of epochs reproducible.
"""

from __future__ import annotations

from typing import Any, Callable, Iterator, Optional, Union

import numpy as np


__all__ = ["ArrayDataset", "DataLoader"]

RngLike = Union[np.random.Generator, int, None]

_INT64_MAX = np.iinfo(np.int64).max


def int64_labels(labels: Any, what: str = "labels") -> np.ndarray:
    """``labels`` as int64, refusing what a cast would change: float labels must be whole numbers
    (``3.0`` is class 3; ``0.9``, NaN and inf are refused instead of truncated), bool gives 0/1,
    anything else (strings, objects, complex) is refused. Negative integers are kept: ``cross_entropy``
    skips targets equal to its ``ignore_index`` (-100 by default, as in PyTorch) and checks the others
    against the number of classes, which the loader does not know."""
    arr = np.asarray(labels)
    kind = arr.dtype.kind
    if kind in "iu":
        if kind == "u" and arr.dtype.itemsize == 8 and arr.size and int(arr.max()) > _INT64_MAX:
            raise ValueError(f"{what}: label {int(arr.max())} does not fit in int64")
        return arr.astype(np.int64, copy=False)
    if kind == "b":
        return arr.astype(np.int64)
    if kind == "f":
        with np.errstate(invalid="ignore"):
            bad = ~(np.isfinite(arr) & (arr == np.floor(arr)) & (np.abs(arr) < 2.0**63))
        if bad.any():
            i = np.flatnonzero(bad.ravel())
            raise ValueError(
                f"{what} must be class indices (whole numbers); found {arr.dtype} values such as "
                f"{arr.ravel()[i[0]].item()!r} (first at index {i[0]}; {len(i)} of {arr.size} labels), which a "
                "cast to int64 would change. Round or map them to integer classes yourself "
                "(labels.astype(np.int64) if truncation is what you want).")
        return arr.astype(np.int64)
    raise ValueError(f"{what} must be integer class indices, found dtype {arr.dtype}")


class ArrayDataset:
    """Pairs ``images[i]`` with ``labels[i]``; indexing with an index array returns a batch.

    ``labels`` are checked and stored as int64 class indices (see :func:`int64_labels`): whole-number
    floats are accepted, fractional ones, NaN and non-numeric labels are refused; negative labels
    are kept (``cross_entropy(..., ignore_index=)`` uses them to mark samples to skip).
    """

    def __init__(self, images: Any, labels: Any) -> None:
        images, labels = np.asarray(images), np.asarray(labels)
        if images.ndim < 1 or labels.ndim != 1:
            raise ValueError(f"expected images (N, ...) and labels (N,), got shapes {images.shape} and {labels.shape}")
        if len(images) != len(labels):
            raise ValueError(f"{len(images)} images but {len(labels)} labels: they must have the same length")
        self.images, self.labels = images, int64_labels(labels)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: Any) -> tuple[np.ndarray, np.ndarray]:
        return self.images[index], self.labels[index]

    def __repr__(self) -> str:
        return f"ArrayDataset(images={self.images.dtype}{self.images.shape}, labels={self.labels.dtype}{self.labels.shape})"


def _as_generator(rng: RngLike) -> np.random.Generator:
    if rng is None:
        return np.random.default_rng()
    if isinstance(rng, np.random.Generator):
        return rng
    if isinstance(rng, (int, np.integer)) and not isinstance(rng, bool):
        return np.random.default_rng(int(rng))
    raise TypeError(f"rng must be a numpy.random.Generator, an int seed or None, got {type(rng).__name__}")


def _pair_from_list(dataset: list) -> ArrayDataset:
    """``[images, labels]``: two NumPy arrays, read (and checked) as the (images, labels) pair.

    A list cannot be a dataset here (the loader indexes the dataset with an array of indices, which
    a list does not accept), so the pair is the only reading that can work; anything else is refused
    now rather than at the first batch. A list of ``(x, y)`` samples, the other reading, is refused
    with the way to stack it."""
    if len(dataset) == 2 and all(isinstance(a, np.ndarray) and a.ndim >= 1 for a in dataset):
        return ArrayDataset(*dataset)  # checks the lengths and the labels' shape like the tuple
    raise TypeError(
        f"DataLoader got a list of {len(dataset)} element(s): a list is taken as a dataset only in the form "
        "[images, labels], two NumPy arrays with the same first axis length (like the (images, labels) tuple). "
        "For a list of (x, y) samples, stack them: ArrayDataset(np.stack([s[0] for s in samples]), "
        "np.array([s[1] for s in samples])); otherwise pass an (images, labels) tuple, an ArrayDataset or an "
        "object with __len__ and __getitem__(index_array) -> (x, y).")


class DataLoader:
    """Iterate over minibatches ``(x float32, y int64)`` of a dataset.

    Args:
        dataset: an :class:`ArrayDataset`, an ``(images, labels)`` tuple, a list
            ``[images, labels]`` of two NumPy arrays with the same first axis length
            (read as the same pair; any other list is refused: the loader indexes with
            index arrays, which lists do not accept), or any object with ``__len__`` and
            ``__getitem__(index_array) -> (x, y)``.
        batch_size: samples per batch (> 0).
        shuffle: draw a new permutation each epoch (each sample once per epoch).
        rng: ``numpy.random.Generator`` or int seed used for shuffling. With
            ``shuffle=True`` and ``rng=None`` a fresh ``np.random.default_rng()``
            is created (not reproducible); pass a seed for reproducible runs.
        drop_last: drop the final batch if it is smaller than ``batch_size``.
        transform: callable applied to each image batch (e.g. :class:`bitnet.data.Normalize`);
            its output is cast to float32. Without one, images are only cast to
            float32 (values unchanged, e.g. 0..255).
        device: None or "cpu" (NumPy batches), or "cuda": batches as device arrays, each one
            gathered, transformed and copied to the GPU in a background thread while the
            previous step computes (``bitnet.data.prefetch``).

    Labels are class indices, yielded as int64: integer labels as they are (negative ones too,
    for ``cross_entropy(..., ignore_index=)``; the range against the number of classes is checked by
    the loss), whole-number floats converted (``3.0`` -> 3); fractional floats (``0.9``), NaN, inf
    and non-numeric labels raise ``ValueError`` (at construction for arrays, at the batch for other
    datasets) instead of being truncated.

    ``len(loader)`` is the number of batches per epoch.
    """

    def __init__(
        self,
        dataset: Any,
        batch_size: int,
        shuffle: bool = False,
        rng: RngLike = None,
        drop_last: bool = False,
        transform: Optional[Callable[[np.ndarray], np.ndarray]] = None,
        device: Optional[str] = None,
    ) -> None:
        if isinstance(dataset, tuple):
            if len(dataset) != 2:
                raise ValueError(f"expected an (images, labels) pair, got a tuple of length {len(dataset)}")
            dataset = ArrayDataset(*dataset)
        elif isinstance(dataset, list):
            dataset = _pair_from_list(dataset)
        if not (hasattr(dataset, "__len__") and hasattr(dataset, "__getitem__")):
            raise TypeError(f"dataset must support len() and indexing, got {type(dataset).__name__}")
        if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size <= 0:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
        if transform is not None and not callable(transform):
            raise TypeError(f"transform must be callable, got {type(transform).__name__}")
        self.dataset = dataset
        self.batch_size = int(batch_size)
        self.shuffle = bool(shuffle)
        self.rng = _as_generator(rng) if (shuffle or rng is not None) else None
        self.drop_last = bool(drop_last)
        self.transform = transform
        from bitnet.backend import check_device
        self.device = check_device(device, "DataLoader", none=True)

    def __len__(self) -> int:
        n = len(self.dataset)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def __iter__(self) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        if self.device == "cuda":
            from bitnet.data.prefetch import DevicePrefetcher
            return iter(DevicePrefetcher(_HostBatches(self), "cuda"))
        return self._host_batches()

    def _host_batches(self) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        n = len(self.dataset)
        order = self.rng.permutation(n) if self.shuffle else np.arange(n)
        for b in range(len(self)):
            x, y = self.dataset[order[b * self.batch_size:(b + 1) * self.batch_size]]
            if self.transform is not None:
                x = self.transform(x)
            yield np.asarray(x, dtype=np.float32), int64_labels(y, f"labels of batch {b}")


class _HostBatches:
    """A loader's host batches, re-iterable (what ``DevicePrefetcher`` reads from)."""

    def __init__(self, loader: DataLoader) -> None:
        self.loader = loader

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self):
        return self.loader._host_batches()
