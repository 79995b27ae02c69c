"""bitnet: binary neural networks on NumPy and Numba."""
import os as _os

__version__ = "0.1.0"

# Training alternates between BLAS (GEMMs) and Numba's OpenMP pool (im2col, pooling, batch norm).
# OpenMP's idle workers spin-wait by default and take the cores from the GEMM threads (measured
# 1.6x slower LeNet steps on 2 cores). Numba starts its OpenMP pool lazily, so this default, set
# only where the user has not chosen a policy, takes effect whatever was imported before bitnet.
# The BLAS side is handled in bitnet.kernels.gemm. See docs/performance.md.
_os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from bitnet.tensor import Tensor, Parameter, Function, no_grad, enable_grad, is_grad_enabled, tensor  # noqa: F401
