"""bitnet: binary neural networks on NumPy and Numba."""
import os as _os

__version__ = "0.1.0"

# Training alternates between OpenBLAS (GEMMs) and Numba's OpenMP pool (im2col, pooling, batch
# norm). Idle workers of either pool spin-wait by default and steal the cores from the other:
# measured 1.9x slower LeNet steps on 2 cores. Both settings are read when the libraries load,
# so they are set here, before NumPy is imported, and only where the user has not set them.
# See docs/performance.md.
_os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
_os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "4")

from bitnet.tensor import Tensor, Parameter, Function, no_grad, enable_grad, is_grad_enabled, tensor  # noqa: F401
