"""Batch transforms and the usual normalization constants.

Transforms act on a whole batch (first axis = samples), as the
:class:`~bitnet.data.DataLoader` calls them once per batch.
"""

from __future__ import annotations

from typing import Sequence, Union

import numpy as np

__all__ = [
    "Normalize",
    "MNIST_MEAN",
    "MNIST_STD",
    "FASHION_MNIST_MEAN",
    "FASHION_MNIST_STD",
    "CIFAR10_MEAN",
    "CIFAR10_STD",
]

#: Mean and std of the MNIST training pixels scaled to [0, 1].
MNIST_MEAN, MNIST_STD = 0.1307, 0.3081
#: Mean and std of the Fashion-MNIST training pixels scaled to [0, 1].
FASHION_MNIST_MEAN, FASHION_MNIST_STD = 0.2860, 0.3530
#: Per-channel (R, G, B) mean and std of the CIFAR-10 training pixels scaled to [0, 1].
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)

Stat = Union[float, Sequence[float]]


class Normalize:
    """``uint8`` images -> ``float32`` ``(x / 255 - mean) / std``, shaped ``(N, C, H, W)``.

    Args:
        mean, std: a scalar, or one value per channel (axis 1 of the output).
        add_channel_axis: if true (default), a 3-D batch ``(N, H, W)`` of
            grey images becomes ``(N, 1, H, W)``, as convolution layers expect.
            4-D batches are left as they are. Set false to keep ``(N, H, W)``.

    Integer (``uint8``) input is divided by 255; floating input is taken to be
    already scaled to [0, 1].
    """

    def __init__(self, mean: Stat, std: Stat, add_channel_axis: bool = True) -> None:
        self.mean = np.asarray(mean, dtype=np.float32)
        self.std = np.asarray(std, dtype=np.float32)
        if self.mean.ndim > 1 or self.std.ndim > 1:
            raise ValueError(f"mean and std must be scalars or 1-D, got shapes {self.mean.shape}, {self.std.shape}")
        if self.mean.ndim == self.std.ndim == 1 and self.mean.size != self.std.size:
            raise ValueError(f"mean and std must have one value per channel each, got {self.mean.size} means "
                             f"{self.mean.tolist()} and {self.std.size} stds {self.std.tolist()}; give both per "
                             "channel (the same length) or either as a scalar")
        if not (np.all(np.isfinite(self.mean)) and np.all(np.isfinite(self.std))):
            raise ValueError(f"mean and std must be finite, got {self.mean.tolist()}, {self.std.tolist()}")
        if np.any(self.std <= 0):
            raise ValueError(f"std must be positive, got {self.std.tolist()}")
        self.add_channel_axis = add_channel_axis

    def __repr__(self) -> str:
        return (f"Normalize(mean={self.mean.tolist()}, std={self.std.tolist()}, "
                f"add_channel_axis={self.add_channel_axis})")

    def __call__(self, x: np.ndarray) -> np.ndarray:
        x = np.asarray(x)
        if x.dtype == np.uint8:
            out = x.astype(np.float32) / np.float32(255.0)
        elif np.issubdtype(x.dtype, np.floating):
            out = x.astype(np.float32)
        else:
            raise TypeError(f"Normalize expects uint8 or floating images, got {x.dtype}; convert them: "
                            "x.astype(np.uint8) for pixels 0-255, or floats scaled to [0, 1]")
        if self.add_channel_axis and out.ndim == 3:
            out = out[:, None]
        mean, std = self.mean, self.std
        if mean.ndim == 1 or std.ndim == 1:
            channels = max(mean.size, std.size)
            if out.ndim < 2 or out.shape[1] != channels:
                raise ValueError(f"per-channel mean/std for {channels} channels, but the batch has shape {out.shape} "
                                 "(channels are axis 1)")
            tail = (1,) * (out.ndim - 2)
            mean, std = mean.reshape(-1, *tail), std.reshape(-1, *tail)
        return (out - mean) / std
