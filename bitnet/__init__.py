"""bitnet: binary neural networks on NumPy and Numba."""
__version__ = "0.1.0"

from bitnet.tensor import Tensor, Parameter, Function, no_grad, enable_grad, is_grad_enabled, tensor  # noqa: F401
