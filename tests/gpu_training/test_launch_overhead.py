"""``python -m bitnet.bench.launch_overhead``: bitnet's Python time per CUDA C kernel launch, with a
stand-in for CuPy that is there for the run only."""
from __future__ import annotations

import sys

import pytest

from bitnet.bench import launch_overhead
from bitnet.gpu import raw_kernels


def test_it_times_each_kernel_and_leaves_no_stand_in_behind(capsys):
    compiled, had_cupy = raw_kernels._compiled, "cupy" in sys.modules
    records = launch_overhead.main(["--repeats", "20", "--rounds", "2"])
    assert [(r["kernel"], r["arguments"]) for r in records] == [
        ("sign_forward", 3), ("adam_step", 15), ("bn_stats_finalize", 17)]
    assert all(r["host_us"] > 0 for r in records)
    assert "us per launch" in capsys.readouterr().out
    assert raw_kernels._compiled is compiled and ("cupy" in sys.modules) == had_cupy


def test_the_stand_in_goes_away_on_an_error_too():
    compiled, had_cupy = raw_kernels._compiled, "cupy" in sys.modules
    with pytest.raises(RuntimeError):
        with launch_overhead.stand_in_cupy():
            assert raw_kernels._compiled is not compiled
            raise RuntimeError("boom")
    assert raw_kernels._compiled is compiled and ("cupy" in sys.modules) == had_cupy


def test_bad_counts_are_refused(capsys):
    with pytest.raises(SystemExit):
        launch_overhead.main(["--repeats", "0"])
    assert "must be at least 1, got 0" in capsys.readouterr().err
