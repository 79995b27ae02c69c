"""bitnet.summary: its rows add up to the whole model, its probe batch works for every batch norm, a
packed model is summarized with its real bits, bytes and binary MACs, and docs/quantization.md shows
the real output."""
from __future__ import annotations

import io
import re
from pathlib import Path

import numpy as np
import pytest

import bitnet
from bitnet import nn
from bitnet.io.packed import _file_state

DOCS = Path(__file__).resolve().parents[1] / "docs"


def _summary(model, shape):
    return bitnet.summary(model, shape, file=io.StringIO())


class _WithOwnParameter(nn.Module):
    """A module holding a Parameter itself besides its child layers."""

    def __init__(self):
        super().__init__()
        self.gain = bitnet.Parameter(np.ones(4, np.float32))
        self.body = nn.Sequential(nn.Dense(4, 10, rng=0), nn.Tanh(), nn.Dense(10, 4, rng=1))
        self.unused = nn.Dense(4, 2, rng=2)  # never called: its weights are still the model's (and the file's)

    def forward(self, x):
        return self.body(x) * self.gain


def test_parameters_of_non_leaf_and_uncalled_modules_are_counted():
    model = _WithOwnParameter()
    s = _summary(model, (4,))
    assert s.total_params == model.num_parameters() == 4 + 50 + 44 + 10
    rows = {li.name: li for li in s.layers}
    assert rows[""].params_by_bits == {32: 4} and rows[""].output_shape == (2, 4)
    assert rows["unused"].params_by_bits == {32: 10} and rows["unused"].output_shape is None
    assert s.packed_bytes == 4 * model.num_parameters()
    assert s.macs == {"32-bit": 40 + 40}  # the unused layer does no MACs
    assert re.search(r"^unused +Dense +- +32:10 ", str(s), re.M)


@pytest.mark.parametrize("model_in", ["eval", "train"])
def test_batchnorm_without_running_statistics(model_in):
    model = nn.Sequential(nn.Dense(4, 3, rng=0), nn.BatchNorm1d(3, track_running_stats=False), nn.Tanh())
    model.train(model_in == "train")
    s = _summary(model, (4,))
    assert [li.output_shape[1:] for li in s.layers] == [(3,), (3,), (3,)]
    assert s.total_params == model.num_parameters() and model.training == (model_in == "train")


def _payload(packed):
    """The bytes of the packed file's datasets (what bitnet.convert writes, HDF5 aside)."""
    return sum(v.nbytes for v in _file_state(packed).values())


def test_packed_model_small_hand_computed():
    rng = np.random.default_rng(0)
    model = nn.Sequential(
        nn.Conv2d(1, 4, 3, rng=rng), nn.BatchNorm2d(4, momentum=None),  # float, with an int64 batch count
        nn.QConv2d(4, 8, 3, padding=1, rng=rng), nn.BatchNorm2d(8),     # binary, K = 36 in 9 taps of 1 word
        nn.Flatten(), nn.QDense(8 * 4 * 4, 70, scaling=None, rng=rng),  # binary, K = 128 in 2 words
        nn.QDense(70, 5, act_bit=2, weight_bit=4, rng=rng))             # k-bit: float32
    packed = bitnet.pack(model)
    s, f = _summary(packed, (1, 6, 6)), _summary(model, (1, 6, 6))
    rows = {li.name: li for li in s.layers}
    assert rows["2"].kind == "PackedConv2d" and rows["5"].kind == "PackedDense" and "5.conv" not in rows
    assert rows["2"].params_by_bits == {1: 8 * 36, 32: 16} and rows["5"].params_by_bits == {1: 70 * 128, 32: 140}
    assert rows["2"].packed_bytes == 8 * 9 * 8 + 8 * 8 and rows["5"].packed_bytes == 70 * 2 * 8 + 70 * 8
    assert rows["2"].macs == {"binary": 8 * 4 * 4 * 36} and rows["5"].macs == {"binary": 70 * 128}
    expected = (40 * 4) + (16 * 4 + 8) + (8 * 9 * 8 + 8 * 8) + (70 * 2 * 8 + 70 * 8) + (355 * 4)
    assert s.packed_bytes == f.packed_bytes == _payload(packed) == expected
    assert s.macs == f.macs and s.binary_mac_share == f.binary_mac_share > 0.9
    assert s.compression > 9 and s.file_bytes is None  # a packed file is written from the float model
    assert "binary share: 93.6%" in str(s) and "packed file" not in str(s)


@pytest.mark.parametrize("name,kwargs,shape", [
    ("lenet-binary", {}, (1, 28, 28)),
    ("resnet18-binary", {}, (3, 32, 32)),
    ("resnet18-binary", {"shortcut": "binary"}, (3, 32, 32)),
], ids=str)
def test_packed_zoo_models_match_their_float_summary_and_their_file(name, kwargs, shape):
    model = bitnet.models.get(name, seed=0, **kwargs)
    packed = bitnet.pack(model)
    s, f = _summary(packed, shape), _summary(model, shape)
    assert s.macs == f.macs and s.binary_mac_share > 0.85
    assert s.packed_bytes == _payload(packed)  # every byte the file's datasets hold, no more
    packed_bits = sum(li.params_by_bits.get(1, 0) for li in s.layers)
    assert packed_bits == sum(li.params_by_bits.get(1, 0) for li in f.layers) > 0
    if name == "lenet-binary":
        assert s.packed_bytes == f.packed_bytes == 197032 and s.compression > 22
    else:  # a packed ResNet also folds the batch norms of its float stem and shortcuts
        assert s.packed_bytes < f.packed_bytes and s.compression > 10


def test_a_cuda_packed_model_is_summarized_through_its_cpu_model():
    packed = bitnet.pack(bitnet.models.get("lenet-binary", seed=0))

    class StandIn:  # what summary uses of a CudaPackedModel: its cpu_model (no GPU needed here)
        cpu_model = packed
    assert str(_summary(StandIn(), (1, 28, 28))) == str(_summary(packed, (1, 28, 28)))


def test_docs_show_the_real_summary_output():
    text = (DOCS / "quantization.md").read_text()
    shown = re.search(r'For `bitnet.models.get\("lenet-binary"\)` at \(1, 28, 28\):\n\n```\n(.*?)```', text, re.S)
    assert shown, "the summary example of docs/quantization.md moved"
    real = str(_summary(bitnet.models.get("lenet-binary", seed=0), (1, 28, 28)))

    def file_line_fuzzy(s):  # the HDF5 size is an estimate that depends on zlib's compression of the config
        return re.sub(r"(packed file \(bitnet convert, HDF5\): about )\d+ bytes \([\d.]+ KiB\)", r"\1N", s)
    assert file_line_fuzzy(shown.group(1).rstrip("\n")) == file_line_fuzzy(real)
    assert all(len(line) <= 120 for line in text.splitlines() if not line.startswith("|"))
