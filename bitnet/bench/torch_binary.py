"""The binary networks of bitnet's zoo written in plain PyTorch, for ``bitnet bench train``.

Layer for layer as ``models/lenet.py`` (``lenet-binary``) and ``models/resnet.py``
(``resnet18-binary``, Bi-Real shortcuts), with the same parameter names, so that
``copy_from_bitnet`` starts both frameworks from the same weights. The binary layers quantize
input and weights with a hand-written straight-through sign (``SignSTE``): forward
sign(x) = -1 where x < 0 else +1 (sign(0) = +1, bitnet's convention), backward grad * (|x| <= 1)
(bitnet's ``ste_sign``). Binary convolutions pad their +-1 input with +1, as bitnet's
``QConv2d`` (``pad_value`` +1 for a 1-bit input). ``clip_binary_weights`` is the kernel
constraint bitnet applies after every optimizer step (latent weights clipped to [-1, 1]).
Needs torch.
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


class SignSTE(torch.autograd.Function):
    """sign with sign(0) = +1; the gradient passes where |x| <= 1."""

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        one = torch.ones((), dtype=x.dtype, device=x.device)
        return torch.where(x < 0, -one, one)

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        return g * (x.abs() <= 1).to(g.dtype)


sign_ste = SignSTE.apply


class BinaryActivation(nn.Module):
    """bitnet's ``QActivation(1)``."""

    def forward(self, x):
        return sign_ste(x)


class BinaryConv2d(nn.Conv2d):
    """bitnet's ``QConv2d`` with 1-bit input and kernel: conv(pad(sign(x), +1), sign(W)) + b."""

    def forward(self, x):
        xq = sign_ste(x)
        ph, pw = self.padding
        if ph or pw:
            xq = F.pad(xq, (pw, pw, ph, ph), value=1.0)
        return F.conv2d(xq, sign_ste(self.weight), self.bias, self.stride, 0, self.dilation, self.groups)


class BinaryLinear(nn.Linear):
    """bitnet's ``QDense`` with 1-bit input and kernel: sign(x) @ sign(W)^T + b."""

    def forward(self, x):
        return F.linear(sign_ste(x), sign_ste(self.weight), self.bias)


def lenet_binary(num_classes=10):
    return nn.Sequential(
        nn.Conv2d(1, 64, 5), nn.BatchNorm2d(64), nn.Tanh(), nn.MaxPool2d(2),
        BinaryActivation(), BinaryConv2d(64, 64, 5), nn.BatchNorm2d(64), nn.MaxPool2d(2),
        nn.Flatten(), BinaryActivation(), BinaryLinear(1024, 1000), nn.BatchNorm1d(1000), nn.Tanh(),
        nn.Linear(1000, num_classes))


def lenet(num_classes=10):
    from bitnet.bench.torch_models import lenet as float_lenet
    return float_lenet(num_classes)


class _BinaryBlock(nn.Module):
    """y = bn1(qconv1(x)) + shortcut(x); out = bn2(qconv2(y)) + y (Bi-Real Net)."""

    def __init__(self, cin, cout, stride):
        super().__init__()
        self.conv1 = BinaryConv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = BinaryConv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = None
        if stride != 1 or cin != cout:
            pool = nn.AvgPool2d(stride) if stride > 1 else nn.Identity()
            self.shortcut = nn.Sequential(pool, nn.Conv2d(cin, cout, 1, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        sc = x if self.shortcut is None else self.shortcut(x)
        y = self.bn1(self.conv1(x)) + sc
        return self.bn2(self.conv2(y)) + y


class ResNet18Binary(nn.Module):
    """bitnet's resnet18-binary; ``stem_relu`` as its argument (False: the zoo's default, the stem
    ends in batch norm; True: the layout before that, as in files written then)."""

    def __init__(self, num_classes=10, stem_relu=False):
        super().__init__()
        stem = [nn.Conv2d(3, 64, 3, padding=1, bias=False), nn.BatchNorm2d(64)]
        self.stem = nn.Sequential(*stem, *([nn.ReLU()] if stem_relu else []))
        blocks, cin = [], 64
        for i in range(4):
            cout = 64 * 2 ** i
            for j in range(2):
                blocks.append(_BinaryBlock(cin, cout, 2 if (j == 0 and i > 0) else 1))
                cin = cout
        self.stages = nn.Sequential(*blocks)
        self.fc = nn.Linear(cin, num_classes)

    def forward(self, x):
        return self.fc(self.stages(self.stem(x)).mean(dim=(2, 3)))


TWINS = {"lenet-binary": lenet_binary, "resnet18-binary": ResNet18Binary, "lenet": lenet}


def copy_from_bitnet(torch_model, bitnet_model) -> None:
    """Copy every parameter of ``bitnet_model`` into the same-named one of ``torch_model``."""
    ours = dict(bitnet_model.named_parameters())
    theirs = dict(torch_model.named_parameters())
    if set(ours) != set(theirs):
        raise ValueError(f"parameter names differ: {sorted(set(ours) ^ set(theirs))}")
    with torch.no_grad():
        for name, p in theirs.items():
            p.copy_(torch.from_numpy(ours[name].data.reshape(p.shape)))


def binary_weights(model) -> list:
    """The latent weights of the binary layers (those the kernel constraint clips)."""
    return [m.weight for m in model.modules() if isinstance(m, (BinaryConv2d, BinaryLinear))]


def clip_binary_weights(weights) -> None:
    with torch.no_grad():
        for w in weights:
            w.clamp_(-1.0, 1.0)
