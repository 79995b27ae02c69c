"""A small binary VGG-style network for 28x28 grey images (our Fashion-MNIST network).

    conv 3x3x64 (pad 1) -> BN -> hardtanh -> max-pool 2            28 -> 14   full precision
    QConv 3x3x128 (pad 1) -> BN -> max-pool 2                       14 -> 7    binary
    QConv 3x3x256 (pad 1) -> BN -> max-pool 2                        7 -> 3    binary
    flatten (2304) -> QDense 1024 -> BN -> dense 10                             binary, then float

The first and last layers stay in full precision (as in BMXNet and most BNNs); binary layers get
binary inputs from their own ``ste_sign`` input quantizer, and padded borders hold +1 (sign of
zero padding). 31.7 M MACs per image, 98.5% of them binary; 404 KiB packed, 26.5x smaller
than float32 (``bitnet.summary``).
"""
from __future__ import annotations

from bitnet import nn
from bitnet.models.registry import register
from bitnet.nn.init import as_generator


@register("binary-vgg-small")
def binary_vgg_small(num_classes: int = 10, in_channels: int = 1, image_size: int = 28, seed=None) -> nn.Sequential:
    """Binary VGG-style net for 28x28 inputs (Fashion-MNIST); ``seed`` fixes the initial weights."""
    rng = as_generator(seed)
    side = image_size // 2 // 2 // 2
    if side < 1:
        raise ValueError(f"binary-vgg-small needs images of at least 8x8 pixels, got {image_size}x{image_size}")
    return nn.Sequential(
        nn.Conv2d(in_channels, 64, 3, padding=1, rng=rng), nn.BatchNorm2d(64), nn.HardTanh(), nn.MaxPool2d(2),
        nn.QConv2d(64, 128, 3, padding=1, rng=rng), nn.BatchNorm2d(128), nn.MaxPool2d(2),
        nn.QConv2d(128, 256, 3, padding=1, rng=rng), nn.BatchNorm2d(256), nn.MaxPool2d(2),
        nn.Flatten(), nn.QDense(256 * side * side, 1024, rng=rng), nn.BatchNorm1d(1024),
        nn.Dense(1024, num_classes, rng=rng),
    )
