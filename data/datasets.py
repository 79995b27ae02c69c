"""Datasets by name, as the command line uses them: arrays plus their normalization.

``load_splits(name, splits, data_dir=None, download=False)`` returns ``[(images, labels), ...]``,
first downloading every missing file of those splits at once where the dataset has a downloader
(MNIST, Fashion-MNIST; CIFAR-10 has none, its error says where to get the files);
``load_dataset`` loads one split; ``transform_for(name)`` is the ``Normalize`` transform with that
dataset's mean and std.
"""
from __future__ import annotations

from bitnet.data.cifar10 import load_cifar10
from bitnet.data.mnist import download_idx_dataset, load_fashion_mnist, load_mnist
from bitnet.data.transforms import (CIFAR10_MEAN, CIFAR10_STD, FASHION_MNIST_MEAN, FASHION_MNIST_STD,
                                    MNIST_MEAN, MNIST_STD, Normalize)

_DATASETS = {
    "mnist": (load_mnist, MNIST_MEAN, MNIST_STD),
    "fashion-mnist": (load_fashion_mnist, FASHION_MNIST_MEAN, FASHION_MNIST_STD),
    "cifar10": (load_cifar10, CIFAR10_MEAN, CIFAR10_STD),
}
NAMES = tuple(_DATASETS)
DOWNLOADABLE = ("mnist", "fashion-mnist")


def _entry(name):
    try:
        return _DATASETS[name]
    except KeyError:
        raise ValueError(f"unknown dataset {name!r}; choose one of {', '.join(NAMES)}") from None


def load_splits(name: str, splits=("train", "test"), data_dir=None, download: bool = False):
    """``[(images uint8, labels int64) for each split]`` of the named dataset.

    With ``download``, the missing files of all ``splits`` are downloaded first, announced in one
    line on stderr; for a dataset without a downloader (CIFAR-10) ``download`` changes nothing and
    a missing file raises ``DatasetNotFoundError`` saying where to get it."""
    loader = _entry(name)[0]
    if download and name in DOWNLOADABLE:
        download_idx_dataset(name, data_dir, tuple(splits))
    return [loader(split, data_dir=data_dir) for split in splits]


def load_dataset(name: str, split: str, data_dir=None, download: bool = False):
    """(images uint8, labels int64) of the named dataset's ``split`` ("train" or "test");
    see :func:`load_splits`."""
    return load_splits(name, (split,), data_dir, download)[0]


def transform_for(name: str) -> Normalize:
    """The normalization used for training and evaluation on ``name``."""
    _, mean, std = _entry(name)
    return Normalize(mean, std)
