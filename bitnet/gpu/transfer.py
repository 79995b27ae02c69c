"""``Tensor.to``: moving a tensor between the CPU and the GPU inside the autograd graph."""
from __future__ import annotations

from bitnet.gpu.arrays import device_of, to_device
from bitnet.tensor import Function


class ToDevice(Function):
    """y = x on another device (the same values); dy/dx: the gradient moved back to x's device."""

    devices = ("cpu", "cuda")
    crosses_devices = True

    def forward(self, a, device):
        self.source = device_of(a)
        return to_device(a, device)

    def backward(self, g):
        return to_device(g, self.source)
