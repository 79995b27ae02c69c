"""Pretrained models: the shipped files (models/pretrained/) match their SHA-256, load, and reach
the test accuracy their manifest states (and the recipe's target) on the real test sets; the API
refuses unknown names, changed arguments, and missing or altered files with the way to fix it."""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

import bitnet
from bitnet.models import make_pretrained, pretrained

SHIPPED = pretrained.manifest()
DATA = Path(__file__).resolve().parents[3] / "shared" / "data"


def _data_dir():
    d = os.environ.get("BITNET_DATA") or (str(DATA) if DATA.is_dir() else None)
    if d is None:
        pytest.skip("no data sets here (set BITNET_DATA)")
    return d


def test_both_recipes_are_shipped():
    assert sorted(SHIPPED) == sorted(make_pretrained.RECIPES) == ["binary-vgg-small", "lenet-binary"]
    assert bitnet.models.pretrained_models() == sorted(SHIPPED)
    for name, entry in SHIPPED.items():
        assert entry["target_accuracy"] == make_pretrained.RECIPES[name]["target"]
        assert entry["made_by"] == f"python -m bitnet.models.make_pretrained {name}"
        assert min(entry["test_accuracy"].values()) >= entry["target_accuracy"]


@pytest.mark.parametrize("name", sorted(SHIPPED))
@pytest.mark.parametrize("kind", ["checkpoint", "packed"])
def test_shipped_file_reaches_its_stated_accuracy(name, kind):
    entry = SHIPPED[name]
    path = bitnet.models.pretrained_path(name, kind)  # SHA-256 checked
    assert path.stat().st_size == entry[kind]["bytes"]
    acc = make_pretrained.test_accuracy(path, entry["dataset"], _data_dir())
    # the same file on the same test set; float sums in another thread count or BLAS may move a
    # borderline image: at most 3 of 10,000 either way
    assert abs(acc - entry["test_accuracy"][kind]) <= 3e-4, (acc, entry["test_accuracy"][kind])
    assert acc >= entry["target_accuracy"] - 3e-4


def test_get_pretrained_is_the_shipped_checkpoint():
    if "lenet-binary" not in SHIPPED:
        pytest.skip("lenet-binary is not shipped")
    model = bitnet.models.get("lenet-binary", pretrained=True)
    direct = bitnet.load(bitnet.models.pretrained_path("lenet-binary"))
    for k, v in model.state_dict().items():
        assert np.array_equal(v, direct.state_dict()[k])
    assert bitnet.models.get("lenet-binary", pretrained=True, num_classes=10) is not None
    with pytest.raises(ValueError, match="pretrained=False to change"):
        bitnet.models.get("lenet-binary", pretrained=True, num_classes=5)


@pytest.fixture
def fake_shipped(tmp_path, monkeypatch):
    """A manifest of one small model in a temporary folder."""
    model = bitnet.models.get("lenet-binary", seed=0)
    bitnet.save(model, tmp_path / "m.h5")
    bitnet.convert(tmp_path / "m.h5", tmp_path / "m.packed.h5")
    entry = {kind: {"file": f, "sha256": pretrained.sha256(tmp_path / f), "bytes": (tmp_path / f).stat().st_size}
             for kind, f in (("checkpoint", "m.h5"), ("packed", "m.packed.h5"))}
    entry.update(dataset="mnist", kwargs={}, test_accuracy={"checkpoint": 0.1, "packed": 0.1})
    (tmp_path / "manifest.json").write_text(json.dumps({"lenet-binary": entry}))
    monkeypatch.setattr(pretrained, "FOLDER", tmp_path)
    monkeypatch.setattr(pretrained, "MANIFEST", tmp_path / "manifest.json")
    return tmp_path, model


def test_altered_or_missing_files_are_refused(fake_shipped):
    folder, model = fake_shipped
    loaded = bitnet.models.get("lenet-binary", pretrained=True)
    for k, v in model.state_dict().items():
        assert np.array_equal(loaded.state_dict()[k], v)
    data = bytearray((folder / "m.packed.h5").read_bytes())
    data[-100] ^= 1
    (folder / "m.packed.h5").write_bytes(bytes(data))
    with pytest.raises(pretrained.PretrainedFileError, match="does not match the manifest"):
        bitnet.models.pretrained_path("lenet-binary", "packed")
    os.remove(folder / "m.h5")
    with pytest.raises(pretrained.PretrainedFileError, match="missing.*make_pretrained lenet-binary"):
        bitnet.models.get("lenet-binary", pretrained=True)


def test_unknown_names_and_kinds(fake_shipped):
    with pytest.raises(ValueError, match="no pretrained weights for 'lenet'; models with pretrained weights: "
                                         "lenet-binary"):
        bitnet.models.get("lenet", pretrained=True)
    with pytest.raises(ValueError, match="unknown model"):
        bitnet.models.get("no-such-net", pretrained=True)
    with pytest.raises(ValueError, match="kind must be one of"):
        bitnet.models.pretrained_path("lenet-binary", "onnx")
