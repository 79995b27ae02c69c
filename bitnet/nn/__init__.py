"""Neural-network modules: ``Module``, containers and float layers."""
from bitnet.nn.container import ModuleList, Sequential  # noqa: F401
from bitnet.nn.layers import (  # noqa: F401
    AvgPool2d, BatchNorm1d, BatchNorm2d, Conv2d, Dense, Dropout, Flatten, GlobalAvgPool2d, HardTanh,
    Identity, MaxPool2d, ReLU, Sigmoid, Tanh)
from bitnet.nn.module import Module, StateDictError  # noqa: F401
from bitnet.tensor import Parameter  # noqa: F401

Linear = Dense  # PyTorch's name
from bitnet.nn.quantized import QActivation, QConv2d, QDense  # noqa: F401,E402
