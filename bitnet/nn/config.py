"""JSON descriptions of ``Sequential`` models built from bitnet's layers, for model files.

``layers_config(model)`` gives ``[{"class": NAME, "args": {...}}, ...]`` for a ``Sequential`` (nested
``Sequential``s as ``{"class": "Sequential", "layers": [...]}``); ``build(config)`` rebuilds it. Only the
classes in ``LAYERS`` can appear: a file names a class, this module decides what that means (no import
of names taken from a file). ``param_count(config)`` bounds the size of what a config would allocate,
so that a file can be refused before anything is built.
"""
from __future__ import annotations

from bitnet.nn import layers as L
from bitnet.nn import quantized as Qz
from bitnet.nn.container import Sequential


def _pair(v):
    return [int(v[0]), int(v[1])]


def _conv(m):
    return dict(in_channels=m.in_channels, out_channels=m.out_channels, kernel_size=_pair(m.kernel_size),
                stride=_pair(m.stride), padding=_pair(m.padding), dilation=_pair(m.dilation), groups=m.groups,
                bias=m.bias is not None)


def _quant(m):
    q = lambda v: None if v is None else v.get_config()  # noqa: E731
    return dict(act_bit=32, weight_bit=32, input_quantizer=q(m.input_quantizer),
                kernel_quantizer=q(m.kernel_quantizer), kernel_clip=m.kernel_clip)


def _bn(m):
    return dict(num_features=m.num_features, eps=m.eps, momentum=m.momentum, affine=m.affine,
                track_running_stats=m.track_running_stats)


def _pool(m):
    return dict(kernel_size=_pair(m.kernel_size), stride=_pair(m.stride), padding=_pair(m.padding))


# class name -> (class, constructor arguments of an instance, parameter count of the arguments)
LAYERS = {
    "Dense": (L.Dense, lambda m: dict(in_features=m.in_features, out_features=m.out_features, bias=m.bias is not None),
              lambda a: a["in_features"] * a["out_features"] + a["out_features"]),
    "Conv2d": (L.Conv2d, _conv, lambda a: _conv_params(a)),
    "QDense": (Qz.QDense, lambda m: dict(in_features=m.in_features, out_features=m.out_features,
                                         bias=m.bias is not None, **_quant(m)),
               lambda a: a["in_features"] * a["out_features"] + a["out_features"]),
    "QConv2d": (Qz.QConv2d, lambda m: dict(_conv(m), pad_value=m.pad_value, **_quant(m)), lambda a: _conv_params(a)),
    "QActivation": (Qz.QActivation, lambda m: dict(act_bit=32, quantizer=None if m.quantizer is None
                                                   else m.quantizer.get_config()), lambda a: 0),
    "BatchNorm1d": (L.BatchNorm1d, _bn, lambda a: 4 * a["num_features"]),
    "BatchNorm2d": (L.BatchNorm2d, _bn, lambda a: 4 * a["num_features"]),
    "MaxPool2d": (L.MaxPool2d, _pool, lambda a: 0),
    "AvgPool2d": (L.AvgPool2d, _pool, lambda a: 0),
    "GlobalAvgPool2d": (L.GlobalAvgPool2d, lambda m: {}, lambda a: 0),
    "Flatten": (L.Flatten, lambda m: dict(start_dim=m.start_dim), lambda a: 0),
    "ReLU": (L.ReLU, lambda m: {}, lambda a: 0),
    "Tanh": (L.Tanh, lambda m: {}, lambda a: 0),
    "Sigmoid": (L.Sigmoid, lambda m: {}, lambda a: 0),
    "Identity": (L.Identity, lambda m: {}, lambda a: 0),
    "HardTanh": (L.HardTanh, lambda m: dict(min_val=m.min_val, max_val=m.max_val), lambda a: 0),
    "Dropout": (L.Dropout, lambda m: dict(p=m.p), lambda a: 0),
}


def _conv_params(a):
    k = a["kernel_size"]
    k = (k, k) if isinstance(k, int) else k
    return a["out_channels"] * (a["in_channels"] // max(1, a.get("groups", 1))) * k[0] * k[1] + a["out_channels"]


def layers_config(model) -> list:
    """The JSON description of a ``Sequential`` of registered layers; TypeError for anything else."""
    if type(model) is not Sequential:
        raise TypeError(f"only Sequential models of bitnet layers (or zoo models) can be described, got "
                        f"{type(model).__name__}")
    out = []
    for name, m in model._modules.items():
        if type(m) is Sequential:
            out.append({"class": "Sequential", "layers": layers_config(m)})
        elif type(m).__name__ in LAYERS and LAYERS[type(m).__name__][0] is type(m):
            out.append({"class": type(m).__name__, "args": LAYERS[type(m).__name__][1](m)})
        else:
            raise TypeError(f"layer {name} is a {type(m).__name__}, which model files cannot describe; "
                            f"describable layers: {', '.join(sorted(LAYERS))} and Sequential")
    return out


def build(config: list) -> Sequential:
    """The ``Sequential`` a ``layers_config`` describes (fresh parameters)."""
    mods = []
    for entry in config:
        if entry["class"] == "Sequential":
            mods.append(build(entry["layers"]))
        else:
            cls = LAYERS[entry["class"]][0]
            mods.append(cls(**entry["args"]))
    return Sequential(*mods)


def param_count(config: list) -> int:
    """The number of parameter and buffer values ``build(config)`` would allocate (upper estimate)."""
    total = 0
    for entry in config:
        if entry["class"] == "Sequential":
            total += param_count(entry["layers"])
        else:
            total += int(LAYERS[entry["class"]][2](entry["args"]))
    return total
