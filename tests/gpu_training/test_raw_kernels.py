"""bitnet.gpu.raw_kernels on the emulation: a launch runs the kernel's NumPy version on the device
arrays' memory and counts as one kernel launch of its caller; bad arguments are clear errors."""
from __future__ import annotations

import numpy as np
import pytest

from bitnet.gpu.arrays import emulate, to_device, to_host
from bitnet.gpu.emulated import count_device_calls
from bitnet.gpu.raw_kernels import blocks_for, c_type, launch
from bitnet.kernels import cuda_sign as KS
from tests.gpu_training.compare import emulation_only


@emulation_only
def test_a_launch_writes_its_output_in_place_and_counts_once_for_its_caller():
    x = np.array([-2.0, -0.0, 0.0, np.nan, 3.0], np.float32)
    with emulate():
        dx, y = to_device(x, "cuda"), to_device(np.zeros(5, np.float32), "cuda")
        with count_device_calls() as calls:
            launch(KS, "sign_forward", blocks_for(5, KS.THREADS), KS.THREADS, (dx, 5, y), dict(SG_X="float"))
        np.testing.assert_array_equal(to_host(y), [-1, 1, 1, 1, 1])
    assert calls == [("sign_forward", "tests/gpu_training/test_raw_kernels.py:"
                      "test_a_launch_writes_its_output_in_place_and_counts_once_for_its_caller")]


def test_bad_arguments_are_clear_errors():
    with pytest.raises(TypeError, match="sign_forward takes 3 arguments, got 2"):
        launch(KS, "sign_forward", 1, KS.THREADS, (np.zeros(1), 1), {})
    with pytest.raises(TypeError, match="float32 or float64 arrays, got float16"):
        c_type(np.float16)
    assert c_type(np.float32) == "float" and c_type(np.dtype("float64")) == "double"
    with emulate():
        x = to_device(np.zeros((4, 3), np.float32), "cuda").T
        with pytest.raises(ValueError, match="sign_forward: argument 0 must be C-contiguous"):
            launch(KS, "sign_forward", 1, KS.THREADS, (x, 12, to_device(np.zeros(12, np.float32), "cuda")), {})
    assert blocks_for(0, 256) == 0 and blocks_for(1, 256) == 1 and blocks_for(257, 256) == 2


def test_on_cupy_a_kernel_is_compiled_and_looked_up_once_per_set_of_macros(monkeypatch):
    """The CuPy path with a stand-in for CuPy (no GPU here): one RawModule per set of macros, one
    get_function per kernel, each launch a call with the arguments in their C types."""
    import sys
    import types
    from bitnet.gpu import raw_kernels
    made, looked_up, launched = [], [], []

    class Module:
        def __init__(self, code, options):
            made.append(options)

        def get_function(self, name):
            looked_up.append(name)
            return lambda grid, block, args: launched.append((name, grid, block, args))

    monkeypatch.setitem(sys.modules, "cupy", types.SimpleNamespace(RawModule=Module))
    monkeypatch.setattr(raw_kernels, "_compiled", {})
    x, y = np.zeros(300, np.float32), np.zeros(300, np.float32)  # host arrays stand for device ones
    for _ in range(3):
        launch(KS, "sign_forward", blocks_for(300, KS.THREADS), KS.THREADS, (x, 300, y), dict(SG_X="float"))
    launch(KS, "ste_backward", 2, KS.THREADS, (x, x, 300, 1.0, y), dict(SG_X="float", SG_G="float"))
    launch(KS, "sign_forward", 0, KS.THREADS, (x, 0, y), dict(SG_X="float"))  # no blocks: nothing to launch
    assert made == [("--fmad=false", "-DSG_X=float"), ("--fmad=false", "-DSG_G=float", "-DSG_X=float")]
    assert looked_up == ["sign_forward", "ste_backward"]
    assert [(n, g, b) for n, g, b, _ in launched] == [("sign_forward", (2,), (KS.THREADS,))] * 3 + \
        [("ste_backward", (2,), (KS.THREADS,))]
    args = launched[-1][3]
    assert args[0] is x and type(args[2]) is np.int64 and type(args[3]) is np.float64 and args[4] is y
