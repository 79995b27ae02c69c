"""Neural-network modules: ``Module``, containers, float layers and quantized layers.

``register`` makes a class of your own loadable from model files (``bitnet.nn.registry``); bitnet's
layers are registered under their class names.
"""
from bitnet.nn.container import ModuleList, Sequential  # noqa: F401
from bitnet.nn.layers import (  # noqa: F401
    AvgPool2d, BatchNorm1d, BatchNorm2d, Conv2d, Dense, Dropout, Flatten, GlobalAvgPool2d, HardTanh,
    Identity, MaxPool2d, ReLU, Sigmoid, Tanh)
from bitnet.nn.module import Module, StateDictError  # noqa: F401
from bitnet.nn.quantized import QActivation, QConv2d, QDense  # noqa: F401
from bitnet.nn.registry import register  # noqa: F401
from bitnet.nn.sync_batchnorm import SyncBatchNorm1d, SyncBatchNorm2d, convert_sync_batchnorm  # noqa: F401
from bitnet.tensor import Parameter  # noqa: F401

Linear = Dense  # PyTorch's name

for _cls in (Sequential, ModuleList, Dense, Conv2d, BatchNorm1d, BatchNorm2d, MaxPool2d, AvgPool2d, GlobalAvgPool2d,
             Flatten, ReLU, Tanh, Sigmoid, Identity, HardTanh, Dropout, QActivation, QDense, QConv2d, SyncBatchNorm1d,
             SyncBatchNorm2d):
    register(_cls)
del _cls
