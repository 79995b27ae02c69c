"""`bitnet bench gemm | conv | model | train-bits | train --quick --json FILE`: each runs end to end and
writes records with the fields the benchmark contract names (case, method, median_s, and where they
apply tops, the ratio against the baseline measured in the same run, the tail of the timed calls:
p90_s, max_s, max_over_median), under ``--busy N`` load whose processes are gone afterwards, and
with the ONNX Runtime columns where torch, onnx and onnxruntime are installed. Speed is never
asserted: the machine is shared."""
from __future__ import annotations

import json
import os

import numba
import pytest

from bitnet.bench import cli as bench_cli
from bitnet.bench import load, onnx_models, timing
from bitnet.cli import main

TAIL = {"p90_s", "max_s", "max_over_median"}


@pytest.fixture(autouse=True)
def _fast_timing(monkeypatch):
    monkeypatch.setattr(timing, "SETTLE_S", 0.0)
    monkeypatch.setattr(timing, "WARMUP_S", 0.0)
    monkeypatch.setattr(load, "RAMP_S", 0.0)


def _run(args, tmp_path):
    out = tmp_path / "records.json"
    assert main(["bench"] + args + ["--json", str(out)]) == 0
    return json.loads(out.read_text())


def _assert_gone(pids):
    assert pids
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


def _assert_tail(records):
    for r in records:
        assert TAIL <= set(r), r
        assert r["median_s"] <= r["p90_s"] <= r["max_s"]
        assert r["max_over_median"] == pytest.approx(r["max_s"] / r["median_s"])


@pytest.mark.parametrize("which,baseline,ratio,tops", [
    ("gemm", "numpy", "ratio_vs_numpy", True),
    ("conv", "numpy gemm", "ratio_vs_numpy", True),
    ("model", "bitnet float", "ratio_vs_bitnet_float", False),
    ("train-bits", "float forward", "ratio_vs_float_forward", False),
])
def test_kernel_benchmarks_write_their_records(which, baseline, ratio, tops, tmp_path, capsys):
    extra = ["--no-torch", "--no-ort", "--threads", "1"] if which == "model" else []
    records = _run([which, "--quick", "--rounds", "1", "--repeats", "1"] + extra, tmp_path)
    assert records and all({"case", "method", "median_s", ratio} <= set(r) for r in records)
    assert all(r["median_s"] > 0 for r in records)
    for case in {r["case"] for r in records}:
        rows = {r["method"]: r for r in records if r["case"] == case}
        assert rows[baseline][ratio] == pytest.approx(1.0)
        for r in rows.values():  # the ratio is the baseline's time over this method's, same run
            assert r[ratio] == pytest.approx(rows[baseline]["median_s"] / r["median_s"])
            assert ("tops" in r) == tops
    if which in ("model", "train-bits"):
        _assert_tail(records)
    printed = capsys.readouterr().out
    assert records[0]["case"] in printed


@pytest.mark.parametrize("which", ["model", "train-bits"])
def test_busy_load_runs_and_stops(which, tmp_path, capsys):
    before = len(load.STARTED)
    extra = ["--no-torch", "--no-ort", "--threads", "1"] if which == "model" else []
    records = _run([which, "--quick", "--rounds", "1", "--repeats", "2", "--busy", "1"] + extra, tmp_path)
    assert all(r["busy"] == 1 for r in records)
    _assert_tail(records)
    assert all(r["calls"] == 2 for r in records)
    assert "1 busy-looping process" in capsys.readouterr().out
    _assert_gone(load.STARTED[before:])


@pytest.mark.parametrize("error", [RuntimeError, KeyboardInterrupt])
def test_busy_processes_stop_on_error(error):
    with pytest.raises(error):
        with load.busy(2) as pids:
            assert len(pids) == 2
            for pid in pids:
                os.kill(pid, 0)  # running
            raise error()
    _assert_gone(pids)


def test_thread_lists():
    assert bench_cli.thread_counts("1,2") == [1, 2]
    assert bench_cli.thread_counts("2,2,1") == [2, 1]
    for bad in ("", "0", "a,b", "1,-1"):
        with pytest.raises(Exception):
            bench_cli.thread_counts(bad)
    assert bench_cli._threads_list(None)[0] == 1
    too_many = numba.config.NUMBA_NUM_THREADS + 1
    assert main(["bench", "model", "--quick", "--threads", str(too_many)]) == 2


def test_model_every_thread_count(tmp_path):
    counts = sorted({1, numba.config.NUMBA_NUM_THREADS})
    records = _run(["model", "--quick", "--rounds", "1", "--repeats", "1", "--no-torch", "--no-ort",
                    "--threads", ",".join(map(str, counts))], tmp_path)
    assert sorted({r["threads"] for r in records}) == counts
    assert len(records) == 2 * len(counts) * 2  # packed, bitnet float x threads x batches 1, 64


def test_model_onnx_runtime_columns(tmp_path, capsys):
    pytest.importorskip("torch")
    pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    records = _run(["model", "--quick", "--rounds", "1", "--repeats", "1", "--threads", "1"], tmp_path)
    for case in {r["case"] for r in records}:
        rows = {r["method"]: r for r in records if r["case"] == case}
        assert {"packed", "bitnet float", "torch float32", "ort fp32", "ort int8"} <= set(rows)
        for r in rows.values():
            assert r["ratio_vs_ort_int8"] == pytest.approx(rows["ort int8"]["median_s"] / r["median_s"])
            assert r["ratio_vs_torch"] == pytest.approx(rows["torch float32"]["median_s"] / r["median_s"])
        _assert_tail(rows.values())
    printed = capsys.readouterr().out
    assert "x ort_int8" in printed and "calibrated on" in printed


def test_model_without_onnx_runtime_says_so(tmp_path, monkeypatch, capsys):
    real = onnx_models.installed
    monkeypatch.setattr(onnx_models, "installed", lambda m: m != "onnxruntime" and real(m))
    records = _run(["model", "--quick", "--rounds", "1", "--repeats", "1", "--no-torch", "--threads", "1"], tmp_path)
    assert {r["method"] for r in records} == {"packed", "bitnet float"}
    (note,) = [line for line in capsys.readouterr().out.splitlines() if "ort fp32 / ort int8 skipped" in line]
    assert "onnxruntime" in note and "not installed" in note and "pip install" in note
    monkeypatch.setattr(onnx_models, "installed", lambda m: m != "torch" and real(m))
    records = _run(["model", "--quick", "--rounds", "1", "--repeats", "1", "--threads", "1"], tmp_path)
    assert {r["method"] for r in records} == {"packed", "bitnet float"}
    printed = capsys.readouterr().out
    assert "torch float32 skipped: PyTorch is not installed" in printed
    assert "they need PyTorch to export the float twins to ONNX" in printed


@pytest.mark.parametrize("model", ["lenet-binary", "resnet18-binary"])
def test_train_binary_networks_under_load(model, tmp_path, capsys):
    before = len(load.STARTED)
    records = _run(["train", "--model", model, "--batch-size", "8", "--rounds", "1", "--steps", "2",
                    "--threads", "1", "--busy", "1", "--no-torch"], tmp_path)
    (rec,) = records
    assert rec["method"] == "bitnet" and rec["model"] == model and rec["busy"] == 1 and rec["threads"] == 1
    assert rec["calls"] == 2 and len(rec["last_losses"]) == 1
    _assert_tail(records)
    _assert_gone(load.STARTED[before:])
    assert "1 busy-looping process" in capsys.readouterr().out


def test_train_against_pytorch_same_work(tmp_path, capsys):
    pytest.importorskip("torch")
    records = _run(["train", "--model", "lenet-binary", "--batch-size", "32", "--rounds", "2", "--steps", "2",
                    "--threads", "1"], tmp_path)
    rows = {r["method"]: r for r in records}
    assert set(rows) == {"bitnet", "torch"}
    assert rows["torch"]["ratio_vs_torch"] == pytest.approx(1.0)
    # same initial weights, same batches, same estimator: the losses stay close over the timed steps
    for a, b in zip(rows["bitnet"]["last_losses"], rows["torch"]["last_losses"]):
        assert a == pytest.approx(b, rel=0.2)
    assert "losses, last 2 timed steps" in capsys.readouterr().out


def test_steady_timing_runs_and_stops_its_load():
    import os

    from bitnet.bench import load, steady
    before = len(load.STARTED)
    times = steady.main(["infer", "lenet-binary", "--batch", "2", "--threads", "1", "--busy", "1", "--seconds", "0.2"])
    assert len(times) >= 1 and (times > 0).all()
    pids = load.STARTED[before:]
    assert len(pids) == 1
    for pid in pids:  # killed and reaped: no such process any more
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
    times = steady.main(["train", "lenet-binary", "--batch", "4", "--seconds", "0.1"])
    assert len(times) >= 1


def test_packed_paths_times_the_three_paths_and_restores_threads():
    import numba

    from bitnet.bench import packed_paths
    before = numba.get_num_threads()
    results = packed_paths.main(["--batch", "1", "3", "--rounds", "1", "--calls", "1"])
    assert numba.get_num_threads() == before
    assert set(results) == {1, 3}
    for times in results.values():
        assert set(times) == {"layer by layer", "chains", "planned"} and all(t > 0 for t in times.values())


def test_gemm_plot_draws_the_paper_figure(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    fig_path = tmp_path / "speedup.png"
    records = _run(["gemm", "--quick", "--rounds", "1", "--repeats", "1", "--plot", str(fig_path)], tmp_path)
    assert fig_path.stat().st_size > 1000 and f"figure: {fig_path}" in capsys.readouterr().out
    from bitnet.bench.plots import gemm_speedup
    fig = gemm_speedup(records, tmp_path / "again.svg")
    lines = fig.axes[0].lines[:-1]  # (the last line is the 1.0 reference)
    by_label = {ln.get_label(): ln for ln in lines}
    xnor = [r for r in records if r["method"] == "xnor"][0]
    assert list(by_label["xnor (packed operands)"].get_xdata()) == [64]
    assert list(by_label["xnor (packed operands)"].get_ydata()) == [pytest.approx(xnor["ratio_vs_numpy"])]
    # a missing folder is refused before the benchmark runs
    assert main(["bench", "gemm", "--quick", "--plot", str(tmp_path / "no" / "f.png")]) == 2
    assert "does not exist" in capsys.readouterr().err
