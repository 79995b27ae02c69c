"""bitnet.summary: packed sizes, parameter counts and MACs computed by hand for small models."""
from __future__ import annotations

import io

import numpy as np

import bitnet
from bitnet import nn


def test_hand_computed_small_model():
    model = nn.Sequential(
        nn.Conv2d(1, 4, 3, rng=0),                        # 1*3*3*4 + 4 = 40 float params
        nn.QConv2d(4, 8, 3, padding=1, rng=0),            # binary 8 x K=36: 9 taps of 1 word each
                                                          # (the file's rows, 8 x 9 words); bias 8
        nn.BatchNorm2d(8),                                # 16 params + 16 buffers: folded into
                                                          # the QConv2d as 8 scales + 8 shifts
        nn.Flatten(),
        nn.QDense(8 * 4 * 4, 70, scaling=None, rng=0),    # binary 70 x K=128 -> 2 words each; bias 70
                                                          # into 70 scales + 70 shifts
        nn.QDense(70, 5, act_bit=2, weight_bit=4, rng=0), # k-bit: float32 in packed form
    )
    s = bitnet.summary(model, (1, 6, 6), file=io.StringIO())
    assert [li.output_shape[1:] for li in s.layers] == [(4, 4, 4), (8, 4, 4), (8, 4, 4), (128,), (70,), (5,)]
    expected_packed = (40 * 4) + (8 * 9 * 8 + 8 * 8) + 0 + (70 * 2 * 8 + 70 * 8) + ((350 + 5) * 4)
    assert s.packed_bytes == expected_packed
    n_params = 40 + (288 + 8) + 16 + (128 * 70 + 70) + (350 + 5)
    assert s.total_params == n_params
    assert s.float32_bytes == 4 * (n_params + 16)
    assert s.macs == {"32-bit": 4 * 4 * 4 * 9, "binary": 8 * 4 * 4 * 36 + 70 * 128, "4-bit": 5 * 70}
    assert [li.folded for li in s.layers] == [False, False, True, False, False, False]


def test_unfolded_batchnorm_is_counted_in_full():
    # a batch norm after a float layer, or one without running statistics, keeps its 4 vectors
    m = nn.Sequential(nn.QConv2d(64, 3, 1, bias=False, rng=0), nn.BatchNorm2d(3, track_running_stats=False),
                      nn.Flatten(), nn.Dense(12, 2, rng=0), nn.BatchNorm1d(2))
    s = bitnet.summary(m, (64, 2, 2), file=io.StringIO())
    # the binary layer: 3 words and its 3 scales + 3 shifts (what its packed twin stores)
    assert s.packed_bytes == 3 * 8 + 3 * 8 + 3 * 2 * 4 + 26 * 4 + 2 * 4 * 4
    assert not any(li.folded for li in s.layers)


def test_magnitude_aware_scales_are_counted():
    m = nn.Sequential(nn.QDense(64, 3, scaling="channel", bias=False, rng=0))
    s = bitnet.summary(m, (64,), file=io.StringIO())
    assert s.packed_bytes == 3 * 8 + 3 * 8  # words, and alpha folded into 3 scales + 3 shifts


def test_lenet_binary_is_no_larger_than_bmxnet_file_and_prints_totals():
    out = io.StringIO()
    s = bitnet.summary(bitnet.models.get("lenet-binary", seed=0), (1, 28, 28), file=out)
    # by hand: 6656 (first conv) + 1024 (its BatchNorm2d) + 12800 + 512 (binary conv, scale and
    # shift of the folded bias and BatchNorm2d) + 128000 + 8000 (binary dense, folded bias and
    # BatchNorm1d) + 40040 (last dense)
    assert s.packed_bytes == 197032
    # BMXNet reports its binary LeNet file as "206 KB", 22x smaller than float
    assert s.packed_bytes <= 206_000
    assert s.compression > 22
    text = out.getvalue()
    assert "compression" in text and "binary share" in text and "QConv2d" in text


def test_summary_restores_mode_and_leaves_no_hooks():
    m = bitnet.models.get("lenet", seed=0)
    bitnet.summary(m, (1, 28, 28), file=io.StringIO())
    assert m.training and all(not mod._forward_hooks for mod in m.modules())
    x = bitnet.Tensor(np.zeros((2, 1, 28, 28), np.float32))
    assert m(x).shape == (2, 10)


def test_columns_line_up_for_nested_names_and_the_repr_is_one_line():
    model = bitnet.models.get("resnet18-binary", seed=0)
    out = io.StringIO()
    s = bitnet.summary(model, (3, 32, 32), file=out)
    lines = out.getvalue().splitlines()
    head, rows = lines[0], [ln for ln in lines[2:] if not ln.startswith("-")][:len(s.layers)]
    starts = [head.index(c) for c in ("type", "output", "params", "MACs")]
    for row, li in zip(rows, s.layers):
        assert row[starts[0]:].startswith(li.kind), row   # every column starts where its header does
        assert row[starts[1]:].startswith(str(li.output_shape[1:])), row
        assert row[starts[2] - 1] == " " and row[starts[3] - 1] == " "
    assert any(li.name.startswith("stages.2.shortcut") for li in s.layers)
    assert "\n" not in repr(s) and len(repr(s)) < 200 and str(s) == out.getvalue().rstrip("\n")
    html = s._repr_html_()
    assert html.count("<tr>") == len(s.layers) + 1 and "binary share" in html


def test_notebook_display_of_summaries_and_modules(monkeypatch):
    import bitnet.progress
    monkeypatch.setattr(bitnet.progress, "in_notebook", lambda: True)
    out = io.StringIO()
    monkeypatch.setattr("sys.stdout", out)
    model = bitnet.models.get("lenet-binary", seed=0)
    s = bitnet.summary(model, (1, 28, 28))
    assert out.getvalue() == ""  # the returned Summary displays itself (HTML) in a notebook
    assert model._repr_html_() == s._repr_html_()  # a zoo model knows its input shape
    custom = nn.Sequential(nn.Dense(8, 4), nn.Tanh())
    html = custom._repr_html_()
    assert "36 parameters" in html and html.count("<tr>") == 3
    custom.input_shape = (8,)
    assert custom._repr_html_() == bitnet.summary(custom, (8,))._repr_html_()
