"""Containers: ``Sequential`` (modules applied in order) and ``ModuleList``."""
from __future__ import annotations

from bitnet.nn.module import Module


class ModuleList(Module):
    """A list of modules, registered under the names "0", "1", ..."""

    config_children = True  # described by its children (model files), not by a config

    def get_config(self) -> dict:
        return {}

    def __init__(self, modules=()):
        super().__init__()
        for m in modules:
            self.append(m)

    def append(self, module):
        self.add_module(str(len(self._modules)), module)
        return self

    def __len__(self):
        return len(self._modules)

    def __iter__(self):
        return iter(self._modules.values())

    def __getitem__(self, i):
        items = list(self._modules.values())
        if isinstance(i, slice):
            return type(self)(items[i])
        return items[i]


class Sequential(ModuleList):
    """Applies its modules in order: ``Sequential(a, b, c)(x) == c(b(a(x)))``.

    Some runs of layers (batch norm -> [tanh ->] max pool, in training) run as one fused op, which
    computes the same values without the tensors in between (``bitnet.nn.fusion``); ``fuse =
    False`` turns that off."""

    fuse = True

    def __init__(self, *modules):
        if len(modules) == 1 and isinstance(modules[0], (list, tuple)):
            modules = modules[0]
        super().__init__(modules)

    def forward(self, x):
        modules = list(self._modules.values())
        if not self.fuse:
            for m in modules:
                x = m(x)
            return x
        from bitnet.nn.fusion import fused_step
        i = 0
        while i < len(modules):
            step = fused_step(modules, i, x)
            if step is None:
                x, i = modules[i](x), i + 1
            else:
                x, i = step
        return x
