"""Packed models on the GPU agree with the CPU packed models (exactly where every layer is binary),
run under Numba's CUDA simulator in a subprocess (tests/gpu/cuda_model_checks.py)."""
from __future__ import annotations

import os

import pytest

from cudasim import run_in_simulator

HERE = os.path.dirname(os.path.abspath(__file__))


@pytest.mark.parametrize("check", ["binary", "mixed", "resnet", "mma", "graphs", "files", "cli"])
def test_packed_models_on_the_gpu_match_the_cpu(check):
    out = run_in_simulator(os.path.join(HERE, "cuda_model_checks.py"), check)
    assert f"{check}: ok" in out


def test_gpu_gemm_benchmark_runs(tmp_path):
    import json
    out = run_in_simulator("-m", "bitnet.cli", "bench", "gemm", "--device", "cuda", "--quick", "--rounds", "1",
                           "--repeats", "2", "--json", str(tmp_path / "g.json"))
    recs = json.loads((tmp_path / "g.json").read_text())
    assert {r["method"] for r in recs} >= {"xnor", "xnor mma", "xnor+binarize"}  # mma emulated in the simulator
    if os.environ.get("BITNET_TEST_CUDA") != "gpu":  # the simulator: its tiny case, no timings
        assert "the CUDA simulator" in out
        assert all((r["m"], r["n"], r["k"]) == (40, 24, 200) for r in recs)
    else:
        assert all(r["tops"] > 0 for r in recs if r["method"].startswith("xnor"))


def test_binary_kernels_are_chosen_by_the_gpu():
    from bitnet.packed.cuda_model import choose_binary_kernels
    assert choose_binary_kernels(None, (9, 0)) == "mma" and choose_binary_kernels(None, (8, 0)) == "mma"
    assert choose_binary_kernels(None, (7, 5)) == "popcount"      # no 1-bit MMA: the CUDA-core kernels
    assert choose_binary_kernels(None, None) == "popcount"        # the simulator, unless asked
    assert choose_binary_kernels("mma", None) == "mma"            # ... then emulated
    assert choose_binary_kernels("popcount", (9, 0)) == "popcount"
    with pytest.raises(ValueError, match=r"capability 8.0 or newer\); this GPU has 7.5"):
        choose_binary_kernels("mma", (7, 5))
    with pytest.raises(ValueError, match="binary_kernels must be one of"):
        choose_binary_kernels("tensor", (9, 0))


def test_binary_kernels_are_refused_on_the_cpu():
    import bitnet
    with pytest.raises(ValueError, match='applies to device="cuda" only'):
        bitnet.pack(bitnet.models.get("lenet-binary", seed=0), binary_kernels="mma")


def test_graph_driver_binds_the_capture_calls_or_says_why_not():
    import ctypes

    from bitnet.packed.cuda_graph import DriverGraphs, GraphError
    try:
        driver = DriverGraphs()
    except GraphError as e:   # no NVIDIA driver on this machine
        assert "could not be loaded" in str(e) or "CUDA 11.4 or newer" in str(e)
        return
    assert driver.lib.cuGraphLaunch.argtypes == [ctypes.c_void_p, ctypes.c_void_p]
    assert driver.lib.cuStreamBeginCapture_v2.restype is ctypes.c_int


def test_device_array_benchmark_runs(tmp_path):
    """bitnet.bench.gpu_arrays (issue 14's choice of device arrays): numba's rows in the simulator."""
    import json
    run_in_simulator("-m", "bitnet.bench.gpu_arrays", "--sizes", "8", "--repeats", "2", "--json",
                     str(tmp_path / "a.json"))
    recs = json.loads((tmp_path / "a.json").read_text())
    assert {(r["library"], r["op"]) for r in recs} >= {("numba", "alloc"), ("numba", "add"), ("numba", "gemm")}
    assert all(r["host_us"] > 0 for r in recs)
