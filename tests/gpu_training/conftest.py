"""The GPU-engine tests run "cuda" on the NumPy emulation (``bitnet.gpu.arrays.emulate``) by default.
With ``BITNET_TEST_CUDA=gpu`` in the environment (a machine with an NVIDIA GPU and CuPy, DEVELOPERS.md)
``emulate()`` is replaced, before the test modules import it, by a block that changes nothing, so the
same tests run on CuPy arrays on the GPU. Not yet run there (no GPU was at hand when they were
written): the tests of the emulation itself (test_device_arrays.py) and those that count reads back to
the host with it (test_host_reads.py) are skipped on the GPU, and float math
that a GPU computes with its own library or summation order (exp, log, tanh, pow, sums) compares
exactly on the emulation only: on the GPU with ``compare.float_math``'s tolerances."""
from __future__ import annotations

import contextlib
import os

import pytest

import bitnet.gpu.arrays as arrays

ON_GPU = os.environ.get("BITNET_TEST_CUDA") == "gpu"

if ON_GPU:
    @contextlib.contextmanager
    def _real_gpu():
        yield arrays.cupy_module()

    arrays.emulate = _real_gpu


def pytest_collection_modifyitems(config, items):
    if not ON_GPU:
        return
    skip = pytest.mark.skip(reason="checks the NumPy emulation of the GPU arrays, not the GPU")
    counted = pytest.mark.skip(reason="counts reads back to the host, which only the emulation records")
    for item in items:
        if item.fspath.basename == "test_device_arrays.py" and "emulat" in item.name:
            item.add_marker(skip)
        elif item.fspath.basename == "test_host_reads.py":
            item.add_marker(counted)


@pytest.fixture(params=["32-bit", "64-bit"])
def index(request):
    """Macros for the CUDA C sources' index arithmetic (bitnet.kernels.cuda_index), for the C-source
    tests: its 32-bit path, taken where the arrays fit (as in the tests), or the 64-bit one, forced by
    IDX32_LIMIT = -1."""
    return {} if request.param == "32-bit" else dict(IDX32_LIMIT="-1LL")
