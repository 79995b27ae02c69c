"""`bitnet bench gemm | conv | model | train-bits --quick --json FILE`: each runs end to end and writes
records with the fields the benchmark contract names (case, method, median_s, and where they apply
tops and the ratio against the baseline measured in the same run)."""
from __future__ import annotations

import json

import pytest

from bitnet.bench import timing
from bitnet.cli import main


@pytest.mark.parametrize("which,baseline,ratio,tops", [
    ("gemm", "numpy", "ratio_vs_numpy", True),
    ("conv", "numpy gemm", "ratio_vs_numpy", True),
    ("model", "bitnet float", "ratio_vs_bitnet_float", False),
    ("train-bits", "float forward", "ratio_vs_float_forward", False),
])
def test_kernel_benchmarks_write_their_records(which, baseline, ratio, tops, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(timing, "SETTLE_S", 0.0)
    monkeypatch.setattr(timing, "WARMUP_S", 0.0)
    out = tmp_path / "records.json"
    extra = ["--no-torch"] if which == "model" else []
    assert main(["bench", which, "--quick", "--rounds", "1", "--repeats", "1", "--json", str(out)] + extra) == 0
    records = json.loads(out.read_text())
    assert records and all({"case", "method", "median_s", ratio} <= set(r) for r in records)
    assert all(r["median_s"] > 0 for r in records)
    for case in {r["case"] for r in records}:
        rows = {r["method"]: r for r in records if r["case"] == case}
        assert rows[baseline][ratio] == pytest.approx(1.0)
        for r in rows.values():  # the ratio is the baseline's time over this method's, same run
            assert r[ratio] == pytest.approx(rows[baseline]["median_s"] / r["median_s"])
            assert ("tops" in r) == tops
    printed = capsys.readouterr().out
    assert records[0]["case"] in printed
