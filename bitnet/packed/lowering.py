"""One reading of a packed model's module tree, run by two executors (CPU and GPU).

``lower(packed)`` turns a packed model (``bitnet.pack``) into a flat list of ``Op``: what each module
computes, decided once, here, by its class (``bitnet.packed.kinds.computes_as``: a subclass with a
forward of its own is not read by its class). The CPU plans (``bitnet.packed.plan``) and the GPU
packed model (``bitnet.packed.cuda_model``) each map an op's ``kind`` to a step of their own
(``Activation -> Activation``); neither walks the module tree. A new layer needs one lowering rule
here and one step per executor.

Kinds (``Op.module`` is the module; ``Op.parts`` the sub-programs of composite ops):

=================  ======================================================================
binary_conv        ``PackedConv2d``: ``scale * dot(sign(x), W) + shift`` (+ residual)
binary_dense       ``PackedDense``: the same over (N, F) rows
residual_block     ``PackedResidualBlock``; parts ``conv1``, ``conv2`` (binary_conv ops) and
                   ``shortcut``: ``[]`` (identity), ``[cl_shortcut]``, ``[binary_conv]`` or the
                   lowered float shortcut (run on NCHW maps)
cl_conv            ``ChannelsLastConv2d`` (a packed ResNet's stem)
cl_shortcut        ``ChannelsLastShortcut``
float_conv         ``Conv2d``
dense              ``Dense``
batchnorm          ``BatchNorm2d`` with running statistics (eval: a per-channel affine map)
pool               ``MaxPool2d`` / ``AvgPool2d``
global_pool        ``GlobalAvgPool2d``
flatten            ``Flatten(1, -1)``
unary              ``ReLU``, ``Tanh``, ``HardTanh``, a sign ``QActivation``; ``params``:
                   ``{"op": name, ...}`` (``kernels.cuda_float.unary``'s arguments)
add                parts ``a`` and ``b``, both run on the op's input, their outputs added (a
                   residual connection; ``b`` empty: the input itself); ``Op.module`` None
sign_chain         ``bitnet.packed.sign_chains.SignChain`` (``Op.module``): layers read only
                   through the next binary layer's sign, run straight to its input bits;
                   parts ``layers``: the same layers lowered one by one (an executor without
                   the fused run runs them)
module             anything else: the module's own forward (the CPU runs it; the GPU has no
                   step for it and refuses the model, naming it)
=================  ======================================================================

``Identity``, ``Dropout`` in eval mode and a ``QActivation`` without quantizer are left out; a
batch norm or dropout in training mode is a "module" (a packed model is made in eval mode; one a user
put back in training mode runs these layers as their forward does). A "unary" op
whose ``module`` is None is a function of ``bitnet.functional`` (``params["op"]``).

Containers: a ``Sequential`` (its children in order, with its sign chains), a module that declares
``forward_chain`` (the names of the children whose composition is its forward, e.g. the ResNet), and
a module that declares ``forward_program``: its forward as a tuple of items run in order, each

- ``"name"``: the child of that name (a child set to None is skipped);
- ``("relu",)``, ``("tanh",)``: that function of ``bitnet.functional``;
- ``("add", items_a, items_b)``: both item tuples run on the same input, their outputs added.

(the float and the binary ResNet block: ``models/resnet.py``). Both declarations are read only where
the class that makes them also defines the forward they describe (``kinds.hook_trusted``).

The activations between steps are ``Activation(data, layout, bits)``: ``data`` a NumPy or device
array in ``layout`` "nchw" ``(N, C, H, W)``, "nhwc" ``(N, H, W, C)``, "flat" (``(N, F)`` or any
other array a layer returned), or "words" (a sign chain's packed words, its sink's input);
``bits``: the map's signs packed ``(N, H, W, 1, words)`` (bit = value < 0) where a binary layer
handed them over, else None.
"""
from __future__ import annotations

from bitnet.packed.kinds import computes_as, hook_trusted


class Activation:
    """An activation between two steps; see the module docstring."""
    __slots__ = ("data", "layout", "bits")

    def __init__(self, data, layout, bits=None):
        self.data, self.layout, self.bits = data, layout, bits

    @classmethod
    def of(cls, data):
        """A plain array as the activation a model's input is: "nchw" if 4-D, else "flat"."""
        return cls(data, "nchw" if data.ndim == 4 else "flat")


class Op:
    """One step of a lowered model: ``kind`` (module docstring), ``module``, its dotted ``name``,
    ``parts`` (name -> list of ops) and ``params``."""
    __slots__ = ("kind", "module", "name", "parts", "params")

    def __init__(self, kind, module, name, parts=None, params=None):
        self.kind, self.module, self.name = kind, module, name
        self.parts, self.params = parts or {}, params or {}

    def __repr__(self):
        return f"Op({self.kind}, {self.name or '(root)'})"


def lower(module, name: str = "") -> list:
    """The ops of ``module`` (a packed model or any part of one), in the order they run."""
    from bitnet.nn.container import Sequential
    if computes_as(module, Sequential):
        return _lower_sequential(module, name)
    for declared in ("forward_chain", "forward_program"):
        items = getattr(module, declared, None) if hook_trusted(module, declared) else None
        if items:
            return _lower_program(module, items, name)
    op = _lower_layer(module, name)
    return [] if op is None else [op]


def _join(name, child):
    return f"{name}.{child}" if name else child


FUNCTIONS = ("relu", "tanh")  # the functions a forward_program may name (bitnet.functional)


def _lower_program(module, items, name):
    """The ops of a ``forward_chain`` / ``forward_program`` (module docstring)."""
    from bitnet.nn.module import Module
    ops = []
    for item in items:
        if isinstance(item, str):
            child = module._modules[item] if item in module._modules else getattr(module, item)
            if child is not None and not isinstance(child, Module):
                raise ValueError(f"{type(module).__name__}: {item!r} names a {type(child).__name__}, not a child module")
            if child is not None:
                ops += lower(child, _join(name, item))
        elif isinstance(item, tuple) and len(item) == 3 and item[0] == "add":
            ops.append(Op("add", None, name, {"a": _lower_program(module, item[1], name),
                                              "b": _lower_program(module, item[2], name)}))
        elif isinstance(item, tuple) and len(item) == 1 and item[0] in FUNCTIONS:
            ops.append(Op("unary", None, name, params={"op": item[0]}))
        else:
            raise ValueError(f"{type(module).__name__}.forward_program: cannot read {item!r}; an item is a "
                             f"child's name, one of {[(f,) for f in FUNCTIONS]}, or ('add', items, items)")
    return ops


def _lower_sequential(seq, name):
    from bitnet.packed.sign_chains import find_chains
    names = list(seq._modules)
    mods = list(seq._modules.values())
    chains = seq.__dict__.get("_sign_chains")
    if chains is None:
        chains = find_chains(seq)
    starts = {c.start: c for c in chains}
    ops, i = [], 0
    while i < len(mods):
        c = starts.get(i)
        if c is not None:
            layers = [op for j in range(c.start, c.stop) if mods[j] is not None
                      for op in lower(mods[j], _join(name, names[j]))]
            ops.append(Op("sign_chain", c, _join(name, names[i]), {"layers": layers}))
            i = c.stop
            continue
        if mods[i] is not None:
            ops += lower(mods[i], _join(name, names[i]))
        i += 1
    return ops


def _lower_layer(module, name):
    """The op of one layer (not a container); None for one that computes its input."""
    from bitnet.nn import layers as L
    from bitnet.nn.quantized import QActivation
    from bitnet.packed.blocks import ChannelsLastConv2d, ChannelsLastShortcut, PackedResidualBlock
    from bitnet.packed.layers import PackedConv2d, PackedDense
    is_ = computes_as  # the module's forward is its class's (a subclass's own forward is not read)
    if is_(module, L.Identity) or (is_(module, L.Dropout) and not module.training) or \
            (is_(module, QActivation) and module.quantizer is None):
        return None
    kinds = ((PackedConv2d, "binary_conv"), (PackedDense, "binary_dense"), (ChannelsLastConv2d, "cl_conv"),
             (ChannelsLastShortcut, "cl_shortcut"), (L.GlobalAvgPool2d, "global_pool"))
    for cls, kind in kinds:
        if is_(module, cls):
            return Op(kind, module, name)
    if is_(module, PackedResidualBlock):
        return Op("residual_block", module, name, {"conv1": [Op("binary_conv", module.conv1, _join(name, "conv1"))],
                                                   "conv2": [Op("binary_conv", module.conv2, _join(name, "conv2"))],
                                                   "shortcut": _lower_shortcut(module.shortcut, _join(name, "shortcut"))})
    if type(module) is L.Conv2d:
        return Op("float_conv", module, name)
    if type(module) is L.Dense:
        return Op("dense", module, name)
    if is_(module, L.BatchNorm2d) and module.track_running_stats and not module.training:
        return Op("batchnorm", module, name)
    if is_(module, L.MaxPool2d) or is_(module, L.AvgPool2d):
        return Op("pool", module, name)
    if is_(module, L.Flatten) and module.start_dim == 1 and module.end_dim == -1:
        return Op("flatten", module, name)
    if type(module) in (L.ReLU, L.Tanh):
        return Op("unary", module, name, params={"op": "relu" if type(module) is L.ReLU else "tanh"})
    if is_(module, L.HardTanh):
        return Op("unary", module, name, params={"op": "hardtanh", "min_val": module.min_val,
                                                  "max_val": module.max_val})
    if is_(module, QActivation) and module.quantizer.output == "sign":
        return Op("unary", module, name, params={"op": "sign"})
    return Op("module", module, name)


def _lower_shortcut(shortcut, name):
    """A residual block's shortcut (``residual_block`` in the module docstring)."""
    from bitnet.packed.blocks import ChannelsLastShortcut
    from bitnet.packed.layers import PackedConv2d
    if shortcut is None:
        return []
    if isinstance(shortcut, ChannelsLastShortcut):
        return [Op("cl_shortcut", shortcut, name)]
    first_name, first = next(iter(shortcut._modules.items()), (None, None))
    if isinstance(first, PackedConv2d):  # a binary shortcut: (packed conv, folded batch norm)
        return [Op("binary_conv", first, _join(name, first_name))]
    return lower(shortcut, name)
