"""Float PyTorch twins of the benchmarked networks (same layers and shapes as bitnet's zoo
entries, all float32): the 'PyTorch float' column of ``bitnet bench model``. Needs torch."""
from __future__ import annotations

import torch
from torch import nn


class _Block(nn.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Identity()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        y = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(y)) + self.shortcut(x))


def resnet18(num_classes=10):
    layers, cin = [nn.Conv2d(3, 64, 3, 1, 1, bias=False), nn.BatchNorm2d(64), nn.ReLU()], 64
    for i in range(4):
        cout = 64 * 2 ** i
        for j in range(2):
            layers.append(_Block(cin, cout, 2 if (j == 0 and i > 0) else 1))
            cin = cout
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(cin, num_classes)]
    return nn.Sequential(*layers)


def lenet(num_classes=10):
    return nn.Sequential(
        nn.Conv2d(1, 64, 5), nn.BatchNorm2d(64), nn.Tanh(), nn.MaxPool2d(2),
        nn.Conv2d(64, 64, 5), nn.BatchNorm2d(64), nn.Tanh(), nn.MaxPool2d(2), nn.Flatten(),
        nn.Linear(1024, 1000), nn.BatchNorm1d(1000), nn.Tanh(), nn.Linear(1000, num_classes))


def float_twin(name):
    return {"lenet-binary": lenet, "resnet18-binary": resnet18}[name]()
