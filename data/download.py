"""Download dataset files from mirrors, verified by SHA-256, written atomically.

Only the standard library (``urllib``) is used.  Each file is streamed into a
temporary file in the target directory while its SHA-256 is computed; it is
renamed to its final name only when the digest matches.  A failed mirror
(network error, HTTP error, checksum mismatch) leaves nothing behind and the
next mirror is tried.  Tests must not depend on the internet: pass
``mirrors=[...]`` pointing at a local server.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import socket
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Mapping, Sequence

from bitnet.data.errors import DownloadError
from bitnet.data.paths import ENV_VAR, StrPath

__all__ = ["DEFAULT_MIRRORS", "DEFAULT_TIMEOUT", "download_file", "download_files"]

#: Canonical mirrors per dataset, tried in order.
DEFAULT_MIRRORS: dict[str, tuple[str, ...]] = {
    "mnist": (
        "https://ossci-datasets.s3.amazonaws.com/mnist/",
        "http://yann.lecun.com/exdb/mnist/",
    ),
    "fashion-mnist": ("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",),
}

#: Seconds a connect or a read may block before the mirror counts as failed.
DEFAULT_TIMEOUT = 30.0

_CHUNK = 1 << 16


def _join(mirror: str, filename: str) -> str:
    return mirror.rstrip("/") + "/" + filename


def _is_network_error(exc: BaseException) -> bool:
    """Connection-level failures (no route, DNS, refused, timeout), as opposed to HTTP errors."""
    if isinstance(exc, urllib.error.HTTPError):
        return False
    return isinstance(exc, (urllib.error.URLError, socket.timeout, TimeoutError, ConnectionError))


class _Progress:
    """Download progress on stderr: on a terminal one line redrawn in place at most 10 times a
    second; elsewhere (a log file, CI) only the final line, so logs stay readable."""

    def __init__(self, label: str, total: int | None, enabled: bool) -> None:
        self.label, self.total, self.enabled = label, total, enabled
        self.tty = bool(getattr(sys.stderr, "isatty", lambda: False)())
        self.last = 0.0

    def update(self, done: int, final: bool = False) -> None:
        now = time.monotonic()
        if not self.enabled or (not final and (not self.tty or now - self.last < 0.1)):
            return
        self.last = now
        if self.total:
            msg = f"{done / 1e6:.1f}/{self.total / 1e6:.1f} MB ({100 * done // self.total}%)"
        else:
            msg = f"{done / 1e6:.1f} MB"
        sys.stderr.write(("\r" if self.tty else "") + f"Downloading {self.label}: {msg}" + ("\n" if final else ""))
        sys.stderr.flush()


def _fetch(url: str, dest: Path, timeout: float, progress: bool) -> str:
    """Stream ``url`` into ``dest``; return the hex SHA-256 of what was written."""
    h = hashlib.sha256()
    with urllib.request.urlopen(url, timeout=timeout) as resp, open(dest, "wb") as out:
        length = resp.headers.get("Content-Length")
        bar = _Progress(url, int(length) if length and length.isdigit() else None, progress)
        done = 0
        while chunk := resp.read(_CHUNK):
            out.write(chunk)
            h.update(chunk)
            done += len(chunk)
            bar.update(done)
        bar.update(done, final=True)
    return h.hexdigest()


def download_file(
    filename: str,
    target_dir: StrPath,
    mirrors: Sequence[str],
    sha256: str,
    *,
    timeout: float = DEFAULT_TIMEOUT,
    progress: bool = True,
) -> Path:
    """Download ``filename`` from the first mirror that delivers it with the expected ``sha256``.

    The file lands as ``target_dir/filename`` (atomic rename of a verified temp
    file).  Raises :class:`DownloadError` listing every mirror's failure.
    """
    if not sha256:
        raise ValueError(f"no SHA-256 known for {filename}: refusing to download an unverifiable file")
    if not mirrors:
        raise ValueError(f"no mirrors given for {filename}")
    target_dir = Path(target_dir)
    target_dir.mkdir(parents=True, exist_ok=True)
    final = target_dir / filename
    failures: list[tuple[str, BaseException | str]] = []
    for mirror in mirrors:
        url = _join(mirror, filename)
        fd, tmp_name = tempfile.mkstemp(prefix=f".{filename}.", suffix=".part", dir=target_dir)
        os.close(fd)
        tmp = Path(tmp_name)
        try:
            digest = _fetch(url, tmp, timeout, progress)
            if digest != sha256.lower():
                failures.append((url, f"checksum mismatch: expected SHA-256 {sha256}, got {digest}"))
                continue
            os.replace(tmp, final)
            return final
        except (OSError, http.client.HTTPException, ValueError) as exc:  # HTTP/URL errors, timeouts, cut-offs
            failures.append((url, exc))
        finally:
            tmp.unlink(missing_ok=True)
    raise _download_error(filename, target_dir, failures)


def _download_error(filename: str, target_dir: Path, failures: list[tuple[str, BaseException | str]]) -> DownloadError:
    """The error after every mirror failed, its fix worded for Python callers and for the CLI."""
    lines = [f"could not download {filename} into {target_dir}; every mirror failed:"]
    lines += [f"  {url}: {why}" for url, why in failures]
    if not any(isinstance(why, BaseException) and _is_network_error(why) for _, why in failures):
        return DownloadError("\n".join(lines))
    offline = ("This machine may have no internet access. Copy the dataset files from a machine that has, "
               "then {} or set {}=DIR to the folder holding them.")
    return DownloadError("\n".join(lines + [offline.format("pass data_dir=DIR", ENV_VAR)]),
                         "\n".join(lines + [offline.format("pass --data-dir DIR", ENV_VAR)]))


def download_files(
    filenames: Sequence[str],
    target_dir: StrPath,
    mirrors: Sequence[str],
    checksums: Mapping[str, str],
    *,
    timeout: float = DEFAULT_TIMEOUT,
    progress: bool = True,
) -> list[Path]:
    """Download each of ``filenames`` with :func:`download_file`, verified against ``checksums[name]``."""
    missing = [n for n in filenames if n not in checksums]
    if missing:
        raise ValueError(f"no SHA-256 known for {missing}: add them to checksums= to download them")
    return [
        download_file(n, target_dir, mirrors, checksums[n], timeout=timeout, progress=progress)
        for n in filenames
    ]
