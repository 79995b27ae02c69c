"""Training on an NVIDIA GPU: device arrays (``arrays``), the GPU implementations of the autograd
primitives (``ops``, chosen by ``dispatch``) and the NumPy emulation that tests them without a GPU
(``emulated``). docs/gpu.md, "Training on the GPU", describes the design."""
