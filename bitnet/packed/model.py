"""``bitnet.pack(model)``: the inference model whose binary layers run on packed bits.

Returns a copy of ``model`` in eval mode (the original is untouched) where

- every ``packable`` QConv2d / QDense (sign input quantizer, binary sign kernel) becomes a
  ``PackedConv2d`` / ``PackedDense`` holding its filters as uint64 words, packed once;
- every batch norm that folds into such a layer (``bitnet.packed.fold.batchnorm_pairs``) is folded
  into its ``scale`` / ``shift`` and replaced by ``Identity``;
- a module that defines ``to_packed(pack_layer)`` (e.g. the binary ResNet block, which fuses its
  residual additions into the packed layers' epilogue) builds its own packed version; it receives
  a function ``pack_layer(layer, bn)`` and returns the packed module, or None to be packed
  layer by layer like any other (the hook runs on the copy: the root model's hook may first
  replace some of its own children, e.g. the ResNet's float stem by a channels-last one);
- everything else (float layers, k-bit layers, binary layers with other quantizers) stays as it was.

The packed model computes what ``model.eval()`` computes: binary dot products exactly, the rest
within float rounding (folding batch norm reorders float32 operations; a value that lands within
rounding of 0 can take the other sign in the next binary layer; the tests count such cases).
"""
from __future__ import annotations

import copy

from bitnet.nn.layers import Identity
from bitnet.nn.quantized import QConv2d
from bitnet.packed.fold import batchnorm_pairs
from bitnet.packed.layers import PackedConv2d, PackedDense, packable


def pack_layer(layer, bn=None):
    """The packed twin of one packable layer, with ``bn`` folded in."""
    cls = PackedConv2d if isinstance(layer, QConv2d) else PackedDense
    return cls.from_layer(layer, bn)


def _set_child(root, dotted, new):
    *path, leaf = dotted.split(".")
    parent = root
    for part in path:
        parent = parent._modules[part]
    parent._modules[leaf] = new  # in place: a Sequential keeps its order


def pack(model):
    """A packed inference copy of ``model``; see the module docstring. The copy's ``packed_layers``
    attribute lists the dotted names of the layers that run on bits."""
    packed = copy.deepcopy(model)
    packed.eval()
    if hasattr(packed, "to_packed"):
        new = packed.to_packed(pack_layer)
        if new is not None:
            new.packed_layers = [n for n, m in new.named_modules() if isinstance(m, (PackedConv2d, PackedDense))]
            return new
    pairs = dict(batchnorm_pairs(packed))
    modules = dict(packed.named_modules())
    names, replaced = [], []
    for name, mod in list(modules.items()):
        if _inside(name, replaced):
            continue
        new = mod.to_packed(pack_layer) if name and hasattr(mod, "to_packed") else None
        if new is not None:
            _set_child(packed, name, new)
            replaced.append(name)
            names += [f"{name}.{sub}" for sub, m in new.named_modules() if isinstance(m, (PackedConv2d, PackedDense))]
        elif packable(mod):
            bn_name = pairs.get(name)
            _set_child(packed, name, pack_layer(mod, modules[bn_name] if bn_name else None))
            if bn_name:
                _set_child(packed, bn_name, Identity())
            names.append(name)
            replaced.append(name)
    packed.packed_layers = names
    return packed


def _inside(name, prefixes):
    return any(name.startswith(p + ".") for p in prefixes)
