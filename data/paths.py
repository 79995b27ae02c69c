"""Where datasets live on disk.

The data root is chosen in this order:

1. the ``data_dir`` argument (``--data-dir DIR`` on the command line);
2. the environment variable ``BITNET_DATA``;
3. a per-user cache: ``$XDG_CACHE_HOME/bitnet/data`` or ``~/.cache/bitnet/data``.

A dataset lives in a subfolder of the root named after it (``mnist``,
``fashion-mnist``, ``cifar-10``).  The root may also *be* the dataset folder,
with the files directly inside it; both are searched, subfolder first.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional, Sequence, Union

from bitnet.data.errors import DatasetNotFoundError

__all__ = [
    "ENV_VAR",
    "DATASET_NAMES",
    "default_cache_dir",
    "resolve_data_dir",
    "candidate_dirs",
    "download_target_dir",
    "locate_files",
    "dataset_not_found",
]

ENV_VAR = "BITNET_DATA"
DATASET_NAMES = ("mnist", "fashion-mnist", "cifar-10")

StrPath = Union[str, "os.PathLike[str]"]


def default_cache_dir() -> Path:
    """Per-user cache directory: ``$XDG_CACHE_HOME/bitnet/data`` or ``~/.cache/bitnet/data``."""
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "bitnet" / "data"


def resolve_data_dir(data_dir: Optional[StrPath] = None) -> Path:
    """Return the data root: ``data_dir``, else ``$BITNET_DATA``, else :func:`default_cache_dir`.

    The directory is not required to exist (a download may create it).
    """
    if data_dir is not None:
        return Path(data_dir).expanduser()
    env = os.environ.get(ENV_VAR)
    if env:
        return Path(env).expanduser()
    return default_cache_dir()


def candidate_dirs(dataset: str, data_dir: Optional[StrPath] = None) -> list[Path]:
    """Directories searched for ``dataset``: ``ROOT/dataset`` and then ``ROOT`` itself."""
    if dataset not in DATASET_NAMES:
        raise ValueError(f"unknown dataset {dataset!r}; expected one of {DATASET_NAMES}")
    root = resolve_data_dir(data_dir)
    return [root / dataset, root]


def download_target_dir(dataset: str, data_dir: Optional[StrPath] = None) -> Path:
    """Folder a download writes to: the root itself if it is named after the dataset, else ``ROOT/dataset``."""
    root = resolve_data_dir(data_dir)
    return root if root.name == dataset else root / dataset


def locate_files(
    dataset: str,
    required: Sequence[Sequence[str]],
    data_dir: Optional[StrPath] = None,
    *,
    download_supported: bool = True,
) -> list[Path]:
    """Find one directory holding every required file of ``dataset``.

    ``required`` lists, for each needed file, its acceptable names in order of
    preference (e.g. ``("train-labels-idx1-ubyte.gz", "train-labels-idx1-ubyte")``).
    Returns the chosen path of each required file, all from the same directory.
    Raises :class:`DatasetNotFoundError` if no candidate directory has them all.
    """
    searched = candidate_dirs(dataset, data_dir)
    for directory in searched:
        found = []
        for names in required:
            path = next((directory / n for n in names if (directory / n).is_file()), None)
            if path is None:
                break
            found.append(path)
        else:
            return found
    expected = [" or ".join(names) for names in required]
    raise dataset_not_found(dataset, searched, expected, download_supported=download_supported, data_dir=data_dir)


def dataset_not_found(
    dataset: str,
    searched: Sequence[Path],
    expected: Sequence[str],
    *,
    download_supported: bool = True,
    extra_hint: str = "",
    data_dir: Optional[StrPath] = None,
) -> DatasetNotFoundError:
    """Build a :class:`DatasetNotFoundError` naming the searched dirs, the expected files and the fixes.

    The fix is worded twice: for Python callers (``data_dir=DIR``, ``download=True``) as the
    message, and for the command line (``--data-dir DIR``, leaving out ``--no-download``) as
    ``cli_message``. ``data_dir`` is the caller's argument: it names the folder a download would
    fill.
    """
    lines = [f"{dataset} files not found.", "Searched directories:"]
    lines += [f"  {d}" + ("" if d.is_dir() else "  (does not exist)") for d in searched]
    lines.append("Expected files:")
    lines += [f"  {name}" for name in expected]
    where = f"where DIR/{dataset}/ or DIR itself holds these files"
    fixes = {}
    for caller, dir_option, download_fix in (
        ("python", "data_dir=DIR", "call with download=True"),
        ("cli", "--data-dir DIR", "leave out --no-download"),
    ):
        fix = f"Fix: pass {dir_option} or set the environment variable {ENV_VAR}=DIR, {where}"
        if download_supported:
            target = download_target_dir(dataset, data_dir)
            fix += f"; or {download_fix} to download them into {target} (needs internet access)."
        else:
            fix += "."
        fixes[caller] = "\n".join(lines + [fix] + ([extra_hint] if extra_hint else []))
    return DatasetNotFoundError(fixes["python"], fixes["cli"])
