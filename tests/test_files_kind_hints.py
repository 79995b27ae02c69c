"""A loader given a file of another kind says which loader reads that kind."""
from __future__ import annotations

import re

import pytest

import bitnet
from bitnet.io.config import wrong_kind_hint

STATE_DICT_FIX = "model.load_state_dict(bitnet.load_state_dict(path))"


@pytest.mark.parametrize("want,found,loader", [
    ("checkpoint", "state_dict", "bitnet.load_state_dict"),
    ("checkpoint", "packed", "bitnet.load_packed"),
    ("packed", "checkpoint", "bitnet.load "),
    ("packed", "state_dict", "bitnet.load_state_dict"),
    ("state_dict", "checkpoint", "bitnet.load "),
    ("state_dict", "packed", "bitnet.load_packed"),
])
def test_the_hint_names_the_loader_of_the_kind_found(want, found, loader):
    hint = wrong_kind_hint(want, found, "fallback")
    assert loader in hint and hint != "fallback"
    others = {"bitnet.load_state_dict", "bitnet.load_packed", "bitnet.load "} - {loader}
    rest = hint.split(";", 1)[1]  # after what the loader itself reads
    assert not any(o in rest for o in others), hint


def test_unknown_kinds_keep_the_callers_hint():
    assert wrong_kind_hint("checkpoint", "something-else", "a file of bitnet.save") == "a file of bitnet.save"
    assert wrong_kind_hint("checkpoint", "checkpoint", "x") == "x"


@pytest.fixture
def files(tmp_path):
    model = bitnet.models.get("lenet-binary", seed=0)
    bitnet.save_state_dict(model, tmp_path / "weights.h5")
    bitnet.save(model, tmp_path / "ckpt.h5")
    bitnet.convert(model, tmp_path / "packed.h5")
    return tmp_path


def test_loaders_that_already_name_the_right_loader(files):
    with pytest.raises(bitnet.BitnetFileError, match="load a packed file with bitnet.load_packed"):
        bitnet.load(files / "packed.h5")
    with pytest.raises(bitnet.BitnetFileError, match=r"a checkpoint loads with bitnet\.load"):
        bitnet.load_state_dict(files / "ckpt.h5")


def test_load_and_load_packed_of_a_weights_only_file_point_to_load_state_dict(files):
    for load in (bitnet.load, bitnet.load_packed):
        with pytest.raises(bitnet.BitnetFileError) as info:
            load(files / "weights.h5")
        msg = str(info.value)
        assert "found 'state_dict'" in msg and STATE_DICT_FIX in msg, msg
        assert not re.search(r"bitnet\.load_packed\b|bitnet\.load\b(?!_)", msg.split(";", 1)[1]), msg
