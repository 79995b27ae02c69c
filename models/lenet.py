"""LeNet in BMXNet's layout for 28x28 single-channel images (MNIST, Fashion-MNIST).

    conv 5x5x64 -> BN -> tanh -> max-pool 2   (28 -> 24 -> 12)
    conv 5x5x64 -> BN -> tanh -> max-pool 2   (12 -> 8 -> 4)
    flatten (64*4*4 = 1024 for 28x28 input) -> dense 1000 -> BN -> tanh -> dense 10
"""
from __future__ import annotations

from bitnet import nn
from bitnet.nn.init import as_generator
from bitnet.models.registry import register


@register("lenet")
def lenet(num_classes: int = 10, in_channels: int = 1, image_size: int = 28, seed=None) -> nn.Sequential:
    """Full-precision LeNet (BMXNet layout); ``seed`` (int or Generator) fixes the initial weights."""
    rng = as_generator(seed)
    side = ((image_size - 4) // 2 - 4) // 2
    if side < 1:
        raise ValueError(f"lenet needs images of at least 16x16 pixels, got {image_size}x{image_size}")
    return nn.Sequential(
        nn.Conv2d(in_channels, 64, 5, rng=rng), nn.BatchNorm2d(64), nn.Tanh(), nn.MaxPool2d(2),
        nn.Conv2d(64, 64, 5, rng=rng), nn.BatchNorm2d(64), nn.Tanh(), nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Dense(64 * side * side, 1000, rng=rng), nn.BatchNorm1d(1000), nn.Tanh(),
        nn.Dense(1000, num_classes, rng=rng),
    )


@register("lenet-binary")
def lenet_binary(num_classes: int = 10, in_channels: int = 1, image_size: int = 28, act_bit: int = 1,
                 weight_bit: int = 1, seed=None) -> nn.Sequential:
    """Binary LeNet in BMXNet's layout: the first convolution and the last dense layer stay in
    full precision; the middle ones are quantized (``act_bit`` / ``weight_bit``, binary by default)::

        conv 5x5x64 -> BN -> tanh -> max-pool 2
        QActivation -> QConv2d 5x5x64 -> BN -> max-pool 2
        flatten -> QActivation -> QDense 1000 -> BN -> tanh -> dense 10
    """
    rng = as_generator(seed)
    side = ((image_size - 4) // 2 - 4) // 2
    if side < 1:
        raise ValueError(f"lenet-binary needs images of at least 16x16 pixels, got {image_size}x{image_size}")
    q = dict(act_bit=act_bit, weight_bit=weight_bit)
    return nn.Sequential(
        nn.Conv2d(in_channels, 64, 5, rng=rng), nn.BatchNorm2d(64), nn.Tanh(), nn.MaxPool2d(2),
        nn.QActivation(act_bit), nn.QConv2d(64, 64, 5, rng=rng, **q), nn.BatchNorm2d(64), nn.MaxPool2d(2),
        nn.Flatten(), nn.QActivation(act_bit), nn.QDense(64 * side * side, 1000, rng=rng, **q),
        nn.BatchNorm1d(1000), nn.Tanh(),
        nn.Dense(1000, num_classes, rng=rng),
    )
