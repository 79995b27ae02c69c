"""Exceptions raised by :mod:`bitnet.data`.

Every message says which file or directory was involved, what was found,
what was expected, and how to fix it.
"""

from __future__ import annotations

import pickle

__all__ = [
    "DatasetNotFoundError",
    "DataFormatError",
    "IDXFormatError",
    "CIFARFormatError",
    "UnsafePickleError",
    "ChecksumError",
    "DownloadError",
]


class DatasetNotFoundError(FileNotFoundError):
    """The files of a dataset are not in any of the searched directories."""


class DataFormatError(ValueError):
    """A dataset file exists but its content is not what the format requires."""


class IDXFormatError(DataFormatError):
    """An IDX file (MNIST, Fashion-MNIST) is malformed, truncated or has trailing bytes."""


class CIFARFormatError(DataFormatError):
    """A CIFAR-10 batch file (binary or python format) is malformed."""


class UnsafePickleError(pickle.UnpicklingError):
    """A pickle asked for a global that the restricted CIFAR-10 unpickler does not allow."""


class ChecksumError(ValueError):
    """The SHA-256 digest of a file differs from the expected one."""


class DownloadError(OSError):
    """Every mirror failed to deliver a file with the expected checksum."""
