"""Exceptions raised by :mod:`bitnet.data`.

Every message says which file or directory was involved, what was found,
what was expected, and how to fix it. The errors about missing or undownloadable
data name the fix in two wordings: ``str(error)`` in Python's terms (``data_dir=``,
``download=True``) and ``error.cli_message`` in the command line's (``--data-dir``,
``--no-download``); the ``bitnet`` command prints the latter.
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


class _TwoWordings:
    """Mixin: ``str(self)`` is the message for Python callers, ``cli_message`` the one for the CLI."""

    def __init__(self, message: str, cli_message: str | None = None) -> None:
        super().__init__(message)
        self.cli_message = message if cli_message is None else cli_message


class DatasetNotFoundError(_TwoWordings, FileNotFoundError):
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


class DownloadError(_TwoWordings, OSError):
    """Every mirror failed to deliver a file with the expected checksum."""
