"""Running a CUDA C kernel source on the CPU: the source (no shared memory, no barriers) compiles as
C++ behind a small shim that defines ``__global__``, ``__device__`` and ``blockIdx`` / ``threadIdx`` /
``blockDim``; a launch is a loop over every block and thread (``-ffp-contract=off``, as
``--fmad=false`` on the GPU). Also the NVRTC check that the source compiles for a GPU. Used by
test_cuda_c_sources.py and test_cuda_c_step_kernels.py."""
from __future__ import annotations

import ctypes
import shutil
import subprocess

import numpy as np
import pytest

SHIM = r"""
#include <math.h>
struct bn_dim3 { unsigned int x, y, z; };
static bn_dim3 blockIdx, threadIdx, blockDim, gridDim;
extern "C" void shim_set(unsigned int block, unsigned int thread, unsigned int threads, unsigned int blocks) {
    blockIdx.x = block; threadIdx.x = thread; blockDim.x = threads; gridDim.x = blocks;
}
#define __global__
#define __device__
"""
CTYPES = {"ptr": ctypes.c_void_p, "table": ctypes.c_void_p, "i32": ctypes.c_int32, "i64": ctypes.c_int64,
          "f64": ctypes.c_double}
C_NAME = {np.float32: "float", np.float64: "double"}


def _compiler():
    return shutil.which("g++") or shutil.which("c++") or shutil.which("clang++")


def builder(tmp_path_factory, default_module):
    """``lib(module=default_module, **macros)``: the module's source compiled with those macros, loaded
    (ctypes); skips the test without a C++ compiler."""
    if _compiler() is None:
        pytest.skip("no C++ compiler (g++, c++ or clang++) to run the CUDA C source on the CPU")
    folder = tmp_path_factory.mktemp("cuda_c")
    libs = {}

    def lib(module=default_module, **types):
        key = (module.__name__,) + tuple(sorted(types.items()))
        if key not in libs:
            name = module.__name__.rsplit(".", 1)[-1] + "_" + "_".join(f"{k}{v}" for k, v in key[1:])
            src, out = folder / f"{name}.cpp", folder / f"{name}.so"
            macros = "".join(f"#define {k} {v}\n" for k, v in key[1:])
            src.write_text(SHIM + macros + module.SOURCE)
            done = subprocess.run([_compiler(), "-O1", "-ffp-contract=off", "-fPIC", "-shared", "-o", str(out),
                                   str(src)], capture_output=True, text=True)
            assert done.returncode == 0, f"{module.__name__}'s source does not compile as C++:\n{done.stderr}"
            libs[key] = ctypes.CDLL(str(out))
        return libs[key]
    return lib


def run_on_cpu(lib, name, count, args, module):
    """Launch kernel ``name`` over ``count`` threads (blocks of module.THREADS), every thread in turn."""
    fn = getattr(lib, name)
    kinds = module.SIGNATURES[name]
    fn.argtypes = [CTYPES[k] for k in kinds]
    fn.restype = None
    tables = [np.array([x.ctypes.data for x in a], np.uint64) for a, k in zip(args, kinds) if k == "table"]
    table = iter(tables)  # "table": a list of host arrays, given as the array of their addresses
    c_args = [a.ctypes.data if k == "ptr" else next(table).ctypes.data if k == "table" else a
              for a, k in zip(args, kinds)]
    blocks = -(-count // module.THREADS)
    for b in range(blocks):
        for t in range(module.THREADS):
            lib.shim_set(b, t, module.THREADS, blocks)
            fn(*c_args)


def nvrtc_or_none():
    """CuPy's NVRTC bindings (the compiler the kernels go through), or None."""
    try:
        from cupy_backends.cuda.libs import nvrtc
        nvrtc.getVersion()
        return nvrtc
    except Exception:  # no CuPy, or no NVRTC library beside it
        return None


def compile_with_nvrtc(nvrtc, module, macros, arch, library=()):
    """Compile ``module.SOURCE`` with every macro set to float, then double, for ``arch``; check each
    kernel is in the PTX and no fused multiply-add is. ``library``: the math functions it calls whose
    CUDA implementations use fma themselves (exp, log): the fma check then compiles the source again
    with each of them replaced by the identity, so that it looks at the kernel's own arithmetic."""
    for t in ("float", "double"):
        options = ["--fmad=false", f"-arch={arch}"] + [f"-D{k}={t}" for k in macros]
        ptx = _ptx(nvrtc, module, options)
        for name in module.SIGNATURES:
            assert f".entry {name}(".encode() in ptx, name
        if library:
            ptx = _ptx(nvrtc, module, options + [f"-D{f}(v)=(v)" for f in library])
        assert b"fma" not in ptx, f"{module.__name__} ({t}): --fmad=false, yet a fused multiply-add"


def _ptx(nvrtc, module, options):
    prog = nvrtc.createProgram(module.SOURCE, "source.cu", [], [])
    try:
        nvrtc.compileProgram(prog, options)
    except Exception as e:  # the log says which line
        raise AssertionError(f"NVRTC ({module.__name__}, {options}): {e}\n{nvrtc.getProgramLog(prog)}") from None
    return nvrtc.getPTX(prog)
