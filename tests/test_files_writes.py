"""Durable, well-behaved writes (bitnet.io.h5.atomic_write): the file and its folder are flushed to the
disk around the rename, the file's mode follows the umask, and a bad destination is named as such,
before anything is written."""
from __future__ import annotations

import os
import stat

import pytest

import bitnet
from bitnet import nn
from bitnet.io import h5


def _model():
    return nn.Sequential(nn.Dense(3, 2, rng=0))


@pytest.mark.parametrize("umask,mode", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
@pytest.mark.parametrize("save", [lambda m, p: bitnet.save(m, p), lambda m, p: bitnet.convert(m, p),
                                  lambda m, p: bitnet.save_state_dict(m, p)], ids=["save", "convert", "state_dict"])
def test_the_file_mode_follows_the_umask(umask, mode, save, tmp_path):
    old = os.umask(umask)
    try:
        save(_model(), tmp_path / "m.h5")
        assert h5._umask() == umask
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(tmp_path / "m.h5").st_mode) == mode


def test_the_file_and_its_folder_are_flushed_around_the_rename(tmp_path, monkeypatch):
    calls = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        st = os.fstat(fd)
        calls.append(("dir" if stat.S_ISDIR(st.st_mode) else "file", st.st_ino, os.path.exists(tmp_path / "m.h5")))
        real_fsync(fd)

    def replace(src, dst):
        calls.append(("rename", os.stat(src).st_ino, False))
        real_replace(src, dst)
    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    bitnet.save(_model(), tmp_path / "m.h5")
    kinds = [c[0] for c in calls]
    assert kinds == ["file", "rename", "dir"], calls
    assert calls[0][1] == calls[1][1] == os.stat(tmp_path / "m.h5").st_ino  # the file flushed is the one renamed
    assert calls[2][1] == os.stat(tmp_path).st_ino and calls[2][2]           # then its folder, after the rename


def test_a_bad_destination_is_named_before_anything_is_written(tmp_path):
    with pytest.raises(FileNotFoundError, match=f"the folder {tmp_path / 'missing'} does not exist"):
        bitnet.save(_model(), tmp_path / "missing" / "m.h5")
    (tmp_path / "dir.h5").mkdir()
    with pytest.raises(IsADirectoryError, match="it is a folder; give a file name"):
        bitnet.save(_model(), tmp_path / "dir.h5")
    assert sorted(os.listdir(tmp_path)) == ["dir.h5"] and not os.listdir(tmp_path / "dir.h5")
    if os.geteuid() != 0:  # root writes anywhere
        ro = tmp_path / "ro"
        ro.mkdir()
        ro.chmod(0o555)
        with pytest.raises(PermissionError, match="is not writable"):
            bitnet.save(_model(), ro / "m.h5")
    assert h5.check_destination(tmp_path / "m.h5") == str(tmp_path / "m.h5")
