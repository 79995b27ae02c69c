"""bitnet.progress: the plain bar's redraw (no stale characters), tqdm where installed and live,
the style switch, and fit's progress argument."""
from __future__ import annotations

import builtins
import io

import numpy as np
import pytest

from bitnet import nn, optim
from bitnet.data import DataLoader
from bitnet.progress import Progress
from bitnet.training import fit


class _TTY(io.StringIO):
    def isatty(self):
        return True


def _screen(text):
    """What a terminal shows after ``text``: each carriage return goes back to the line's start and
    overwrites it character by character."""
    lines = [""]
    col = 0
    for ch in text:
        if ch == "\r":
            col = 0
        elif ch == "\n":
            lines.append("")
            col = 0
        else:
            line = lines[-1]
            lines[-1] = line[:col] + ch + line[col + 1:]
            col += 1
    return [line.rstrip() for line in lines]


def test_plain_redraw_leaves_no_characters_of_a_longer_line():
    out = _TTY()
    bar = Progress(2, "e", stream=out, refresh=1e9, style="plain")
    bar.update(img_s="6400")
    bar.update(img_s="640")
    shown = _screen(out.getvalue())
    assert shown[0].endswith("img_s 640"), shown  # not "img_s 6400" (the bug: a stale 0)


def test_close_ends_an_unfinished_plain_line():
    out = _TTY()
    bar = Progress(10, "e", stream=out, refresh=1e9, style="plain")
    bar.update(loss=1.0)
    bar.close()
    assert out.getvalue().endswith("\n") and out.getvalue().count("\n") == 1


def test_tqdm_is_used_on_a_live_output_and_plain_in_a_log():
    pytest.importorskip("tqdm")
    out = _TTY()
    bar = Progress(3, "epoch 1/1", stream=out)
    assert bar._bar is not None
    for _ in range(3):
        bar.update(loss=0.25)
    assert "3/3" in out.getvalue() and "loss 0.2500" in out.getvalue() and bar._bar is None  # closed at the end
    log = io.StringIO()
    bar = Progress(3, "eval", stream=log, log_every=1e9)
    assert bar._bar is None


def test_without_tqdm_auto_falls_back_and_tqdm_style_says_what_to_install(monkeypatch):
    real_import = builtins.__import__

    def no_tqdm(name, *args, **kwargs):
        if name.startswith("tqdm"):
            raise ImportError("no tqdm here")
        return real_import(name, *args, **kwargs)
    monkeypatch.setattr(builtins, "__import__", no_tqdm)
    out = _TTY()
    bar = Progress(2, "e", stream=out, refresh=1e9)
    assert bar._bar is None
    bar.update(loss=0.5)
    bar.update(loss=0.5)
    assert "[########################] 2/2" in out.getvalue()
    with pytest.raises(ImportError, match="pip install tqdm"):
        Progress(2, "e", stream=out, style="tqdm")


def test_style_from_the_environment_and_bad_styles(monkeypatch):
    monkeypatch.setenv("BITNET_PROGRESS", "plain")
    assert Progress(2, "e", stream=_TTY())._bar is None
    monkeypatch.setenv("BITNET_PROGRESS", "fancy")
    with pytest.raises(ValueError, match="BITNET_PROGRESS"):
        Progress(2, "e", stream=_TTY())


def test_fit_accepts_a_style_and_off(capsys):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((64, 4)).astype(np.float32)
    y = (x[:, 0] > 0).astype(np.int64)
    model = nn.Sequential(nn.Dense(4, 2, rng=0))
    opt = optim.SGD(model.parameters(), lr=0.1)
    fit(model, opt, DataLoader((x, y), 16), epochs=1, progress="plain", log=None)
    err = capsys.readouterr().err
    assert "epoch 1/1 4/4 (100%)" in err  # captured stderr is not live: a log line
    fit(model, opt, DataLoader((x, y), 16), epochs=1, progress=False, log=None)
    assert capsys.readouterr().err == ""
