"""The GPU-engine tests run "cuda" on the NumPy emulation (``bitnet.gpu.arrays.emulate``) by default.
With ``BITNET_TEST_CUDA=gpu`` in the environment (a machine with an NVIDIA GPU and CuPy, DEVELOPERS.md)
``emulate()`` is replaced, before the test modules import it, by a block that changes nothing, so the
same tests run on CuPy arrays on the GPU. Checks that name the emulation's array type, and equalities
that hold only because the emulation computes with NumPy, are marked in their tests."""
from __future__ import annotations

import contextlib
import os

import bitnet.gpu.arrays as arrays

ON_GPU = os.environ.get("BITNET_TEST_CUDA") == "gpu"

if ON_GPU:
    @contextlib.contextmanager
    def _real_gpu():
        yield arrays.cupy_module()

    arrays.emulate = _real_gpu
