"""Where a bitnet file may be written, and the atomic write itself (docs/file-format.md).

``check_destination`` refuses, before any work, a path whose folder is missing, not writable or a
file, and a path that is a folder; ``not_a_file`` says what a path that names no regular file is.
``atomic_write`` writes into a temporary file beside the target, flushes it to the disk (fsync),
gives it the mode a newly created file gets (0o666 less the umask), renames it over the target and
flushes the folder, so a crash, a kill or a power loss leaves the previous file or the new one,
never a part. ``bitnet.io.h5`` re-exports these names.
"""
from __future__ import annotations

import os
import stat
import tempfile


def check_destination(path) -> str:
    """``path`` as a string if a file can be written there: its folder exists and is a writable folder,
    and ``path`` itself is not a folder; else ``FileNotFoundError`` / ``NotADirectoryError`` (a file
    where a folder of the path should be) / ``IsADirectoryError`` / ``PermissionError`` naming the
    folder or the path (so a long training run can check its ``--save`` destination before it starts)."""
    path = os.fspath(path)
    if not path:
        raise FileNotFoundError("cannot save '': an empty file name; give a path, e.g. model.h5")
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        blocker = file_in_the_way(folder)
        if blocker is not None:
            raise NotADirectoryError(f"cannot save {path}: {blocker} is a file, not a folder; choose a path in a "
                                     "folder")
        raise FileNotFoundError(f"cannot save {path}: the folder {folder} does not exist; create it first")
    if os.path.isdir(path):
        raise IsADirectoryError(f"cannot save {path}: it is a folder; give a file name, e.g. "
                                f"{os.path.join(path, 'model.h5')}")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise PermissionError(f"cannot save {path}: the folder {folder} is not writable")
    return path


def file_in_the_way(path) -> str | None:
    """The nearest existing ancestor of ``path`` (itself included) when it is not a folder (a file
    standing where the path needs a folder), else None."""
    path = os.path.abspath(path)
    while not os.path.lexists(path):
        parent = os.path.dirname(path)
        if parent == path:
            return None
        path = parent
    return None if os.path.isdir(path) else path


def not_a_file(path, what: str) -> OSError:
    """The error for a ``path`` that names no regular file, saying which case it is: a folder
    (``IsADirectoryError``), a file where one of its folders should be (``NotADirectoryError``),
    something else (a device, a pipe: ``OSError``) or nothing (``FileNotFoundError``); ``what``
    says what was expected, e.g. "model file"."""
    path = os.fspath(path)
    a = "an" if what[:1] in "aeiou" else "a"
    if os.path.isdir(path):
        return IsADirectoryError(f"{path} is a folder, not {a} {what}; give the path of the file")
    if os.path.exists(path):
        return OSError(f"{path} is not a regular file (a device, a pipe or a socket); expected {a} {what}")
    blocker = file_in_the_way(os.path.dirname(os.path.abspath(path)))
    if blocker is not None:
        return NotADirectoryError(f"{path}: no such {what}: {blocker} is a file, not a folder")
    return FileNotFoundError(f"{path}: no such {what}")


def _umask() -> int:
    """The process's umask, read without changing it where Linux tells it (/proc), else set and reset."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _fsync_folder(folder) -> None:
    """Flush a folder's entries (the rename) to the disk, where the system allows opening folders."""
    try:
        fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return  # e.g. Windows: a rename there is flushed with the file
    try:
        os.fsync(fd)
    except OSError:
        pass  # some file systems do not flush folders; the file itself was flushed
    finally:
        os.close(fd)


def atomic_write(path, write) -> None:
    """Write an HDF5 file through ``write(h5file)`` into a temporary file beside ``path``, flush it to the
    disk, give it the mode a newly created file gets (0o666 less the umask), rename it over ``path``
    (atomic on POSIX) and flush the folder: readers see the old file or the new one, never a part, also
    after a power loss. Errors about the destination name it, not the temporary file."""
    import h5py
    path = check_destination(path)
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".bitnet-", suffix=".h5.tmp", dir=folder)
    os.close(fd)
    try:
        with h5py.File(tmp, "w", libver="latest") as f:
            write(f)
        fd = os.open(tmp, os.O_RDWR)  # (Windows flushes only a file open for writing)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        try:
            os.chmod(tmp, stat.S_IMODE(0o666 & ~_umask()))
        except OSError:
            pass  # a file system without Unix modes: the file keeps the one it has
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    _fsync_folder(folder)
