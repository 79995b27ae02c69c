"""Datasets by name, as the command line uses them: arrays plus their normalization.

``load_dataset(name, split, data_dir=None, download=False)`` returns ``(images, labels)`` and
``transform_for(name)`` the ``Normalize`` transform with that dataset's mean and std.
"""
from __future__ import annotations

from bitnet.data.cifar10 import load_cifar10
from bitnet.data.mnist import load_fashion_mnist, load_mnist
from bitnet.data.transforms import (CIFAR10_MEAN, CIFAR10_STD, FASHION_MNIST_MEAN, FASHION_MNIST_STD,
                                    MNIST_MEAN, MNIST_STD, Normalize)

_DATASETS = {
    "mnist": (load_mnist, MNIST_MEAN, MNIST_STD),
    "fashion-mnist": (load_fashion_mnist, FASHION_MNIST_MEAN, FASHION_MNIST_STD),
    "cifar10": (load_cifar10, CIFAR10_MEAN, CIFAR10_STD),
}
NAMES = tuple(_DATASETS)


def _entry(name):
    try:
        return _DATASETS[name]
    except KeyError:
        raise ValueError(f"unknown dataset {name!r}; choose one of {', '.join(NAMES)}") from None


def load_dataset(name: str, split: str, data_dir=None, download: bool = False):
    """(images uint8, labels int64) of the named dataset's ``split`` ("train" or "test")."""
    loader = _entry(name)[0]
    if name == "cifar10":
        if download:
            raise ValueError("CIFAR-10 has no downloader; fetch the official files and pass --data-dir")
        return loader(split, data_dir=data_dir)
    return loader(split, data_dir=data_dir, download=download)


def transform_for(name: str) -> Normalize:
    """The normalization used for training and evaluation on ``name``."""
    _, mean, std = _entry(name)
    return Normalize(mean, std)
