"""The GPU binary kernels: exact agreement with the CPU kernels under Numba's CUDA simulator (in a
subprocess: the simulator must be switched on before Numba is imported), and compilation to PTX
for real GPUs (compute capabilities 7.5 and 9.0) where the CUDA toolkit is installed."""
from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from cudasim import require_ptx_compiler, run_in_simulator

HERE = os.path.dirname(os.path.abspath(__file__))


@pytest.mark.parametrize("check", ["pack", "conv", "gemm", "errors"])
def test_gpu_kernels_match_the_cpu_kernels_in_the_simulator(check):
    out = run_in_simulator(os.path.join(HERE, "xnor_cuda_checks.py"), check)
    assert f"{check}: ok" in out


def _kernels():
    from numba import types as T

    from bitnet.kernels import xnor_cuda as XG
    u1, u2, u5 = (T.Array(T.uint64, d, "C") for d in (1, 2, 5))
    f1, f2, f4 = (T.Array(T.float32, d, "C") for d in (1, 2, 4))
    i2, i64 = T.Array(T.int32, 2, "C"), T.int64
    gemm = (u2, u2, i64, i64, i2, i64, f1, f1, f2, i2, f2, i64, u2)
    return {
        "pack_rows": (XG._pack_rows_kernel.py_func, (f2, u2)),
        "pack_nchw": (XG._pack_nchw_kernel.py_func, (f4, i64, u5)),
        "im2col_bits": (XG._im2col_bits_kernel.py_func, (u1,) + (i64,) * 14 + (u1, u2)),
        **{f"xnor_gemm_{t}x{t}": (XG._gemm_kernel(t, t).py_func, gemm) for t in (2, 4)},
    }


@pytest.mark.parametrize("cc", [(7, 5), (9, 0)])
def test_every_kernel_compiles_to_ptx(cc):
    from numba import cuda
    require_ptx_compiler(cc)
    for name, (fn, sig) in _kernels().items():
        ptx, _ = cuda.compile_ptx(fn, sig, cc=cc)
        assert f".target sm_{cc[0]}{cc[1]}" in ptx, name
        if name.startswith("xnor_gemm"):
            assert "popc.b64" in ptx, f"{name}: no 64-bit popcount in its PTX"
            # exactness: scale * dot rounded to float32, then + shift (never one fused multiply-add)
            assert "mul.rn.f32" in ptx and not re.search(r"\bfma\.", ptx), f"{name}: the epilogue must not fuse"
            assert not re.search(r"\b(ld|st)\.local", ptx), f"{name}: register tile spilled to local memory"


def test_import_bitnet_does_not_import_numba_cuda():
    code = "import sys, bitnet; bitnet.pack; bitnet.load_packed; print('numba.cuda' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_asking_for_cuda_without_a_gpu_says_what_to_do():
    # this process has no simulator switched on; where a real GPU is present there is nothing to check
    from numba import cuda

    import bitnet
    if cuda.is_available():
        pytest.skip("a CUDA GPU is present")
    with pytest.raises(bitnet.CudaUnavailableError, match="no usable NVIDIA GPU.*NUMBA_ENABLE_CUDASIM=1"):
        with bitnet.device("cuda"):
            pass
    assert bitnet.current_device() == "cpu"
    model = bitnet.models.get("lenet-binary", seed=0)
    with pytest.raises(bitnet.CudaUnavailableError, match='device="cpu"'):
        bitnet.pack(model, device="cuda")
    with pytest.raises(ValueError, match="device must be one of"):
        bitnet.pack(model, device="gpu")


def test_numba_cuda_that_cannot_run_with_this_numpy_is_named():
    """numba-cuda <= 0.30.4 calls np.row_stack (gone in NumPy 2.5): asking for CUDA says what to install."""
    import types

    from bitnet.backend import incompatible_numba_cuda
    new_numpy = types.SimpleNamespace(__version__="2.5.0")  # no row_stack
    msg = incompatible_numba_cuda(new_numpy, "0.30.4")
    assert "numba-cuda 0.30.4 cannot compile kernels with NumPy 2.5.0" in msg and 'numpy<2.5' in msg
    assert incompatible_numba_cuda(new_numpy, "0.31.0") == ""
    old_numpy = types.SimpleNamespace(__version__="2.4.6", row_stack=None)
    assert incompatible_numba_cuda(old_numpy, "0.30.4") == ""
