"""Dataset readers and a minibatch loader: ``bitnet.data``.

Readers return plain NumPy arrays and cache nothing:

* :func:`load_mnist`, :func:`load_fashion_mnist` -> ``(uint8 (N, 28, 28), int64 (N,))``
  from the four standard IDX ``.gz`` files (SHA-256 verified) or their raw versions;
* :func:`load_cifar10` -> ``(uint8 (N, 3, 32, 32), int64 (N,))`` from the official
  binary or python batches (the pickles are read with a restricted unpickler).

Files are looked up in ``data_dir`` (``--data-dir``), else ``$BITNET_DATA``, else
``~/.cache/bitnet/data`` (``$XDG_CACHE_HOME/bitnet/data``), under a subfolder named after the
dataset or directly. The Python readers download only when asked (``download=True``, as in
torchvision); the ``bitnet`` command downloads missing MNIST / Fashion-MNIST files by default
(``--no-download`` forbids it). Tests never reach the internet.

:class:`DataLoader` yields ``(x float32, y int64)`` NumPy batches, shuffling with
its own ``numpy.random.Generator``; :class:`Normalize` scales and standardizes.

Example::

    from bitnet.data import load_mnist, DataLoader, Normalize, MNIST_MEAN, MNIST_STD
    x, y = load_mnist("train", download=True)   # into ~/.cache/bitnet/data/mnist the first time
    loader = DataLoader((x, y), batch_size=128, shuffle=True, rng=0,
                        transform=Normalize(MNIST_MEAN, MNIST_STD))
    for xb, yb in loader:   # xb: float32 (128, 1, 28, 28), yb: int64 (128,)
        ...
"""

from bitnet.data.cifar10 import CIFAR10_CLASSES, RestrictedUnpickler, load_cifar10, read_cifar_bin, read_cifar_python
from bitnet.data.download import DEFAULT_MIRRORS, download_file, download_files
from bitnet.data.errors import (
    ChecksumError,
    CIFARFormatError,
    DataFormatError,
    DatasetNotFoundError,
    DownloadError,
    IDXFormatError,
    UnsafePickleError,
)
from bitnet.data.idx import read_idx, sha256_file, verify_checksum
from bitnet.data.loader import ArrayDataset, DataLoader
from bitnet.data.prefetch import DevicePrefetcher
from bitnet.data.mnist import (CANONICAL_SHA256, download_idx_dataset, load_fashion_mnist, load_idx_dataset,
                               load_mnist)
from bitnet.data.paths import ENV_VAR, default_cache_dir, resolve_data_dir
from bitnet.data.transforms import (
    CIFAR10_MEAN,
    CIFAR10_STD,
    FASHION_MNIST_MEAN,
    FASHION_MNIST_STD,
    MNIST_MEAN,
    MNIST_STD,
    Normalize,
)

__all__ = [
    # paths
    "ENV_VAR", "resolve_data_dir", "default_cache_dir",
    # readers
    "read_idx", "sha256_file", "verify_checksum",
    "load_mnist", "load_fashion_mnist", "load_idx_dataset", "download_idx_dataset", "CANONICAL_SHA256",
    "load_cifar10", "read_cifar_bin", "read_cifar_python", "RestrictedUnpickler", "CIFAR10_CLASSES",
    "download_file", "download_files", "DEFAULT_MIRRORS",
    # batching
    "ArrayDataset", "DataLoader", "DevicePrefetcher", "Normalize",
    "MNIST_MEAN", "MNIST_STD", "FASHION_MNIST_MEAN", "FASHION_MNIST_STD", "CIFAR10_MEAN", "CIFAR10_STD",
    # errors
    "DatasetNotFoundError", "DataFormatError", "IDXFormatError", "CIFARFormatError",
    "UnsafePickleError", "ChecksumError", "DownloadError",
]
