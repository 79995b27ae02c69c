"""Float layers: Dense, Conv2d, batch norm, pooling, activations, Flatten, Dropout, Identity.

Each checks the shape of its input and says what it received and what it expected, naming the
layer, so a wrong shape fails at the layer that cannot take it. A layer with hyperparameters
reports them in ``get_config()`` from its current attributes (what model files store), so a
change made after construction (``layer.p = 0.2``) is saved as well where the layer is a part the
file describes by its own config (a ``Sequential`` of layers, such as the zoo's LeNets). Inside a module
of your own that the file rebuilds from its constructor's arguments, ``save`` refuses such a change
(the rebuilt model would differ): give the value to the constructor instead.
"""
from __future__ import annotations

import numpy as np

from bitnet import functional as F
from bitnet.nn import args as A
from bitnet.nn.init import as_generator, fan_in_bias, filled, uniform_fan_in
from bitnet.nn.module import Module
from bitnet.ops.dtypes import float_operand
from bitnet.tensor import Parameter, Tensor

FLOAT32 = 4  # bytes per parameter / buffer value


def _pair(v) -> list:
    return [int(v[0]), int(v[1])]


class Dense(Module):
    """y = x W^T + b with W of shape (out_features, in_features) (PyTorch's Linear); both sizes >= 1."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True, rng=None):
        super().__init__()
        owner = type(self).__name__
        in_features, out_features = A.size(owner, "in_features", in_features), A.size(owner, "out_features", out_features)
        gen = as_generator(rng)
        self.in_features, self.out_features = in_features, out_features
        self.weight = Parameter(uniform_fan_in((out_features, in_features), gen))
        self.bias = Parameter(fan_in_bias((out_features, in_features), gen)) if bias else None

    @classmethod
    def state_bytes(cls, config):
        a = cls._arguments(config)
        i, o = A.size(cls.__name__, "in_features", a["in_features"]), A.size(cls.__name__, "out_features", a["out_features"])
        return FLOAT32 * (o * i + (o if a["bias"] else 0))

    def forward(self, x):
        if x.ndim < 1 or x.shape[-1] != self.in_features:
            raise ValueError(f"{self!r} expects inputs with {self.in_features} features in the last "
                             f"axis, got shape {x.shape}; flatten conv features with Flatten() first")
        return F.linear(x, self.weight, self.bias)

    def extra_repr(self):
        return f"{self.in_features}, {self.out_features}, bias={self.bias is not None}"

    def get_config(self) -> dict:
        return dict(in_features=self.in_features, out_features=self.out_features, bias=self.bias is not None)


class Conv2d(Module):
    """2-D convolution on NCHW input; weight (out, in/groups, KH, KW). See ``bitnet.ops.conv``; the
    arguments are checked by ``bitnet.nn.args.conv_geometry``."""

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, dilation=1,
                 groups=1, bias=True, rng=None):
        super().__init__()
        g = A.conv_geometry(type(self).__name__, in_channels, out_channels, kernel_size, stride, padding, dilation,
                            groups)
        gen = as_generator(rng)
        self.in_channels, self.out_channels, self.groups = g["in_channels"], g["out_channels"], g["groups"]
        self.kernel_size, self.stride = g["kernel_size"], g["stride"]
        self.padding, self.dilation = g["padding"], g["dilation"]
        shape = (self.out_channels, self.in_channels // self.groups) + self.kernel_size
        self.weight = Parameter(uniform_fan_in(shape, gen))
        self.bias = Parameter(fan_in_bias(shape, gen)) if bias else None

    @classmethod
    def state_bytes(cls, config):
        a = cls._arguments(config)
        g = A.conv_geometry(cls.__name__, *(a[k] for k in ("in_channels", "out_channels", "kernel_size", "stride",
                                                             "padding", "dilation", "groups")))
        o = g["out_channels"]
        weights = o * (g["in_channels"] // g["groups"]) * g["kernel_size"][0] * g["kernel_size"][1]
        return FLOAT32 * (weights + (o if a["bias"] else 0))

    def check_input(self, x):
        if x.ndim != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"{self!r} expects input (N, {self.in_channels}, H, W), got shape "
                             f"{x.shape}")

    def forward(self, x):
        self.check_input(x)
        return F.conv2d(x, self.weight, self.bias, self.stride, self.padding, self.dilation, self.groups)

    def extra_repr(self):
        s = f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}"
        if self.padding != (0, 0):
            s += f", padding={self.padding}"
        if self.dilation != (1, 1):
            s += f", dilation={self.dilation}"
        if self.groups != 1:
            s += f", groups={self.groups}"
        return s + f", bias={self.bias is not None}"

    def get_config(self) -> dict:
        return dict(in_channels=self.in_channels, out_channels=self.out_channels, kernel_size=_pair(self.kernel_size),
                    stride=_pair(self.stride), padding=_pair(self.padding), dilation=_pair(self.dilation),
                    groups=self.groups, bias=self.bias is not None)


class _BatchNorm(Module):
    """Batch norm (``F.batch_norm``) with PyTorch's options.

    ``momentum``: running = (1 - m) running + m batch statistic; ``None`` gives the cumulative
    average (m = 1 / num_batches_tracked, counting this batch), with a ``num_batches_tracked``
    buffer (only then: with a number the state_dict keys are those of earlier files).
    ``affine=False``: no weight and bias (none in ``parameters()`` or the state_dict), gamma = 1,
    beta = 0. ``track_running_stats=False``: no running buffers; batch statistics in eval mode too.
    """
    input_ndims = ()

    def __init__(self, num_features: int, eps: float = 1e-5, momentum=0.1, affine: bool = True,
                 track_running_stats: bool = True):
        super().__init__()
        num_features, eps = self._check(type(self).__name__, num_features, eps, momentum)
        self.num_features, self.eps = num_features, eps
        self.momentum = None if momentum is None else float(momentum)
        self.affine, self.track_running_stats = bool(affine), bool(track_running_stats)
        if affine:
            self.weight = Parameter(filled(num_features, 1.0))
            self.bias = Parameter(filled(num_features, 0.0))
        else:
            self.weight = self.bias = None
        if track_running_stats:
            self.register_buffer("running_mean", filled(num_features, 0.0))
            self.register_buffer("running_var", filled(num_features, 1.0))
            if momentum is None:
                self.register_buffer("num_batches_tracked", filled((), 0, np.int64))
        else:
            self.register_buffer("running_mean", None)
            self.register_buffer("running_var", None)

    @staticmethod
    def _check(owner, num_features, eps, momentum) -> tuple:
        """(num_features, eps) checked: num_features >= 1, eps a finite number >= 0, momentum in [0, 1] or None."""
        if momentum is not None:
            A.real(owner, "momentum (None: the cumulative average)", momentum, 0.0, 1.0)
        return A.size(owner, "num_features", num_features), A.real(owner, "eps", eps, 0.0)

    @classmethod
    def state_bytes(cls, config):
        a = cls._arguments(config)
        n, _ = cls._check(cls.__name__, a["num_features"], a["eps"], a["momentum"])
        counter = 8 if a["track_running_stats"] and a["momentum"] is None else 0
        return FLOAT32 * n * (2 * bool(a["affine"]) + 2 * bool(a["track_running_stats"])) + counter

    def _factor(self):
        """The running-average factor of this forward (and the batch count when momentum is None)."""
        if not (self.training and self.track_running_stats):
            return 0.0 if self.momentum is None else self.momentum
        if self.momentum is not None:
            return self.momentum
        if self._buffers.get("num_batches_tracked") is None:  # momentum set to None after construction
            self.register_buffer("num_batches_tracked", np.array(0, np.int64))
        self.num_batches_tracked = self.num_batches_tracked + 1
        return 1.0 / float(self.num_batches_tracked)

    def forward(self, x):
        if x.ndim not in self.input_ndims or x.shape[1] != self.num_features:
            layouts = {2: "(N, C)", 3: "(N, C, L)", 4: "(N, C, H, W)"}
            want = " or ".join(layouts[d] for d in self.input_ndims)
            raise ValueError(f"{self!r} expects input {want} with C={self.num_features}, got shape {x.shape}")
        training = self.training or not self.track_running_stats
        return F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias,
                            training=training, momentum=self._factor(), eps=self.eps)

    def extra_repr(self):
        s = f"{self.num_features}, eps={self.eps}, momentum={self.momentum}"
        if not self.affine:
            s += ", affine=False"
        return s + ("" if self.track_running_stats else ", track_running_stats=False")

    def get_config(self) -> dict:
        return dict(num_features=self.num_features, eps=self.eps, momentum=self.momentum, affine=self.affine,
                    track_running_stats=self.track_running_stats)


class BatchNorm1d(_BatchNorm):
    """Batch norm over (N, C) features or (N, C, L) sequences (statistics over N and L)."""
    input_ndims = (2, 3)


class BatchNorm2d(_BatchNorm):
    """Batch norm per channel of (N, C, H, W) maps."""
    input_ndims = (4,)


class _Pool2d(Module):
    function = None

    def __init__(self, kernel_size, stride=None, padding=0, ceil_mode=False):
        super().__init__()
        self.kernel_size, self.stride, self.padding = A.pool_geometry(type(self).__name__, kernel_size, stride, padding)
        self.ceil_mode = bool(ceil_mode)

    @classmethod
    def state_bytes(cls, config):
        a = cls._arguments(config)
        A.pool_geometry(cls.__name__, a["kernel_size"], a["stride"], a["padding"])
        return 0

    def forward(self, x):
        return type(self).function(x, self.kernel_size, self.stride, self.padding, self.ceil_mode)

    def extra_repr(self):
        extra = ", ceil_mode=True" if self.ceil_mode else ""
        return f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}{extra}"

    def get_config(self) -> dict:
        return dict(kernel_size=_pair(self.kernel_size), stride=_pair(self.stride), padding=_pair(self.padding),
                    ceil_mode=self.ceil_mode)


class MaxPool2d(_Pool2d):
    """Max pooling (``F.max_pool2d``); ``ceil_mode`` is keyword-only (PyTorch puts ``dilation`` and
    ``return_indices`` before it, which bitnet does not have)."""
    function = staticmethod(F.max_pool2d)

    def __init__(self, kernel_size, stride=None, padding=0, *, ceil_mode=False):
        super().__init__(kernel_size, stride, padding, ceil_mode)

    state_bytes = _Pool2d.__dict__["state_bytes"]


class AvgPool2d(_Pool2d):
    """Average pooling (``F.avg_pool2d``), arguments in PyTorch's order."""

    def __init__(self, kernel_size, stride=None, padding=0, ceil_mode=False, count_include_pad=True):
        super().__init__(kernel_size, stride, padding, ceil_mode)
        self.count_include_pad = bool(count_include_pad)

    state_bytes = _Pool2d.__dict__["state_bytes"]

    def forward(self, x):
        return F.avg_pool2d(x, self.kernel_size, self.stride, self.padding, self.ceil_mode, self.count_include_pad)

    def extra_repr(self):
        return super().extra_repr() + ("" if self.count_include_pad else ", count_include_pad=False")

    def get_config(self) -> dict:
        return dict(super().get_config(), count_include_pad=self.count_include_pad)


class _Stateless(Module):
    """A layer without parameters or buffers."""

    @classmethod
    def state_bytes(cls, config):
        cls._arguments(config)
        return 0


class GlobalAvgPool2d(_Stateless):
    """(N, C, H, W) -> (N, C): the mean over each feature map."""

    def forward(self, x):
        if x.ndim != 4:
            raise ValueError(f"GlobalAvgPool2d expects (N, C, H, W), got shape {x.shape}")
        if x.data.dtype.char not in "fd":  # an average, as the float ops (bitnet.ops.dtypes): integers and
            x = Tensor(float_operand(x.data, "global_avg_pool2d"))  # bools in float32 (no gradient), others refused
        return F.mean(x, axis=(2, 3))


class Flatten(_Stateless):
    """Collapse axes ``start_dim .. end_dim`` into one (``F.flatten``); the default keeps the batch
    axis, as ``torch.nn.Flatten``."""

    def __init__(self, start_dim: int = 1, end_dim: int = -1):
        super().__init__()
        self.start_dim, self.end_dim = (A.size("Flatten", name, v, low=-64)
                                        for name, v in (("start_dim", start_dim), ("end_dim", end_dim)))

    state_bytes = _Stateless.__dict__["state_bytes"]  # no parameters or buffers

    def forward(self, x):
        return F.flatten(x, self.start_dim, self.end_dim)

    def extra_repr(self):
        return f"start_dim={self.start_dim}, end_dim={self.end_dim}"

    def get_config(self) -> dict:
        return dict(start_dim=self.start_dim, end_dim=self.end_dim)


class _Elementwise(_Stateless):
    function = None

    def forward(self, x):
        return type(self).function(x)


class ReLU(_Elementwise):
    function = staticmethod(F.relu)


class Tanh(_Elementwise):
    function = staticmethod(F.tanh)


class Sigmoid(_Elementwise):
    function = staticmethod(F.sigmoid)


class Identity(_Elementwise):
    function = staticmethod(lambda x: x)


class HardTanh(_Stateless):
    """Clip to [min_val, max_val] (finite, min_val < max_val)."""

    def __init__(self, min_val: float = -1.0, max_val: float = 1.0):
        super().__init__()
        A.real("HardTanh", "min_val", min_val), A.real("HardTanh", "max_val", max_val)
        if not min_val < max_val:
            raise ValueError(f"HardTanh: min_val must be below max_val, got min_val={min_val!r}, max_val={max_val!r}")
        self.min_val, self.max_val = min_val, max_val

    state_bytes = _Stateless.__dict__["state_bytes"]  # no parameters or buffers

    def forward(self, x):
        return F.hardtanh(x, self.min_val, self.max_val)

    def get_config(self) -> dict:
        return dict(min_val=float(self.min_val), max_val=float(self.max_val))


class Dropout(_Stateless):
    """Inverted dropout with probability p; its own Generator (from ``rng``: Generator or seed), whose
    state training checkpoints save and ``bitnet.load`` restores (docs/file-format.md, ``module_rngs``),
    so that a resumed run draws the masks the uninterrupted run would have drawn."""

    def __init__(self, p: float = 0.5, rng=None):
        super().__init__()
        if isinstance(p, bool) or not isinstance(p, (int, float, np.floating)) or not 0.0 <= p < 1.0:
            raise ValueError(f"Dropout probability must be a number in [0, 1), got {p!r}")
        self.p, self.rng = float(p), as_generator(rng)

    state_bytes = _Stateless.__dict__["state_bytes"]  # no parameters or buffers

    def forward(self, x):
        return F.dropout(x, self.p, self.training, self.rng)

    def extra_repr(self):
        return f"p={self.p}"

    def get_config(self) -> dict:
        return dict(p=self.p)
