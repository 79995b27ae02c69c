"""The model zoo registry: ``bitnet.models.get(name, **kwargs)`` builds a model by name.

A builder is registered with ``@register("name")``; the CLI's ``--model`` takes the same names.
"""
from __future__ import annotations

from typing import Callable, Dict

_BUILDERS: Dict[str, Callable] = {}


def register(name: str):
    """Decorator: register a model builder under ``name`` (lower-case, unique)."""
    def deco(fn):
        if name in _BUILDERS:
            raise ValueError(f"model name {name!r} is already registered")
        _BUILDERS[name] = fn
        return fn
    return deco


def names() -> list:
    """The registered model names, sorted."""
    return sorted(_BUILDERS)


def builder(name: str) -> Callable:
    """The builder registered under ``name``."""
    try:
        return _BUILDERS[name]
    except KeyError:
        raise ValueError(f"unknown model {name!r}; available models: {', '.join(names())}") from None


def get(name: str, pretrained: bool = False, **kwargs):
    """Build the model registered under ``name`` with the builder's keyword arguments. The model
    remembers them (``model.zoo_config``, without ``seed``) so that a model file can rebuild it.
    ``pretrained=True``: the weights shipped with bitnet (``bitnet.models.pretrained``)."""
    if pretrained:
        builder(name)  # an unknown name: the registry's message
        from bitnet.models.pretrained import load_pretrained
        return load_pretrained(name, **kwargs)
    model = builder(name)(**kwargs)
    model.zoo_config = {"name": name, "kwargs": plain({k: v for k, v in kwargs.items() if k != "seed"})}
    return model


def plain(value):
    """Tuples as lists (JSON has no tuples), recursively; other values as given."""
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    return [plain(v) for v in value] if isinstance(value, (tuple, list)) else value
