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


def get(name: str, **kwargs):
    """Build the model registered under ``name`` with the builder's keyword arguments."""
    try:
        builder = _BUILDERS[name]
    except KeyError:
        raise ValueError(f"unknown model {name!r}; available models: {', '.join(names())}") from None
    return builder(**kwargs)
