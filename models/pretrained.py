"""Pretrained zoo models, shipped with bitnet in ``models/pretrained/``.

Each entry of ``pretrained/manifest.json`` names a zoo model trained on a data set, its checkpoint
(``bitnet.save``: architecture and float weights) and its packed deployment file (``bitnet
convert``: one bit per binary weight), each with its SHA-256, the test accuracy each file reached
when it was made, and the exact commands that made it (``python -m bitnet.models.make_pretrained``
runs them again)::

    model = bitnet.models.get("lenet-binary", pretrained=True)        # the checkpoint, as a model
    packed = bitnet.load_packed(bitnet.models.pretrained_path("lenet-binary", "packed"))

Every file is checked against its SHA-256 before it is read: a damaged or replaced file is refused
with a ``PretrainedFileError`` that says how to get it back.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

FOLDER = Path(__file__).resolve().parent / "pretrained"
MANIFEST = FOLDER / "manifest.json"
KINDS = ("checkpoint", "packed")


class PretrainedFileError(RuntimeError):
    """A shipped pretrained file that is missing or does not match its SHA-256."""


def manifest() -> dict:
    """The manifest: ``{model name: entry}`` (empty where none is shipped)."""
    if not MANIFEST.is_file():
        return {}
    with open(MANIFEST) as f:
        return json.load(f)


def available() -> list:
    """The zoo models that ship pretrained weights, sorted."""
    return sorted(manifest())


def info(name: str) -> dict:
    """The manifest entry of ``name`` (data set, accuracies, files, commands)."""
    entries = manifest()
    if name not in entries:
        have = ", ".join(sorted(entries)) or "none"
        raise ValueError(f"no pretrained weights for {name!r}; models with pretrained weights: {have} "
                         "(pretrained=False builds the model with fresh weights)")
    return entries[name]


def sha256(path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def pretrained_path(name: str, kind: str = "checkpoint") -> Path:
    """The verified path of ``name``'s shipped ``kind`` file ("checkpoint" or "packed")."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {', '.join(KINDS)}, got {kind!r}")
    entry = info(name)[kind]
    path = FOLDER / entry["file"]
    if not path.is_file():
        raise PretrainedFileError(f"the pretrained {kind} file of {name!r} is missing ({path}); reinstall bitnet "
                                  "or make it again with: python -m bitnet.models.make_pretrained " + name)
    digest = sha256(path)
    if digest != entry["sha256"]:
        raise PretrainedFileError(f"{path}: SHA-256 {digest} does not match the manifest's {entry['sha256']} (a "
                                  "damaged or replaced file); reinstall bitnet or make it again with: "
                                  "python -m bitnet.models.make_pretrained " + name)
    return path


def load_pretrained(name: str, **kwargs):
    """The pretrained model ``name`` (``bitnet.load`` of its verified checkpoint, in training mode as
    every loaded model; call ``.eval()`` for inference). ``kwargs``, if any, must be the builder
    arguments the weights were trained with."""
    import inspect
    from bitnet.models.registry import builder
    trained = info(name).get("kwargs", {})
    effective = {k: p.default for k, p in inspect.signature(builder(name)).parameters.items() if k != "seed"}
    effective.update(trained)
    wrong = {k: v for k, v in kwargs.items() if k != "seed" and (k not in effective or effective[k] != v)}
    if wrong:
        raise ValueError(f"the pretrained {name!r} was trained with {effective}; got {wrong}: build it with "
                         "pretrained=False to change them")
    from bitnet.io import load
    return load(pretrained_path(name, "checkpoint"))
