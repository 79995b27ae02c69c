"""The registry of module classes that model files may name.

A model file describes a network as a tree of ``{"class": NAME, "config": {...}, "children": [...]}``
(``bitnet.io.config``). Only classes registered here can be named: the file names a class, this
registry decides which Python class that means (a file never makes bitnet import a name it chose).
bitnet's own layers are registered under their class names (``Dense``, ``QConv2d``, ...), the zoo's
under ``bitnet.models.NAME``; register your own with the decorator::

    @bitnet.nn.register                  # as "MyNet" (its class name)
    class MyNet(bitnet.nn.Module): ...

    @bitnet.nn.register("my-net-v2")     # under a name of your choice
    class MyNet(bitnet.nn.Module): ...

Registering the same class again, or a class of the same module and name (a notebook cell run
twice), replaces the entry; another class under a taken name is an error.
"""
from __future__ import annotations

_CLASSES: dict = {}


def _redefinition(old, new) -> bool:
    return old.__module__ == new.__module__ and old.__qualname__ == new.__qualname__


def _add(cls, name):
    from bitnet.nn.module import Module
    if not (isinstance(cls, type) and issubclass(cls, Module)):
        raise TypeError(f"bitnet.nn.register registers Module subclasses, got {cls!r}")
    if not isinstance(name, str) or not name:
        raise TypeError(f"bitnet.nn.register: the name must be a non-empty string, got {name!r}")
    old = _CLASSES.get(name)
    if old is not None and old is not cls and not _redefinition(old, cls):
        raise ValueError(f"module name {name!r} is already registered for {old.__module__}.{old.__qualname__}; "
                         f"register {cls.__qualname__} under another name: @bitnet.nn.register('some-name')")
    _CLASSES[name] = cls
    return cls


def register(cls_or_name=None, *, name: str | None = None):
    """Register a ``Module`` subclass for model files: ``@register``, ``@register("name")``,
    ``@register(name="name")`` or ``register(MyNet)``; returns the class."""
    if isinstance(cls_or_name, type):
        return _add(cls_or_name, name or cls_or_name.__name__)
    if cls_or_name is not None and not isinstance(cls_or_name, str):
        raise TypeError(f"bitnet.nn.register takes a Module class or a name, got {cls_or_name!r}")
    chosen = cls_or_name or name

    def decorate(cls):
        return _add(cls, chosen or getattr(cls, "__name__", None))
    return decorate


def name_of(cls) -> str | None:
    """The name ``cls`` is registered under (the first, if several), or None."""
    for key, value in _CLASSES.items():
        if value is cls:
            return key
    return None


def lookup(name: str):
    """The class registered under ``name``; ``KeyError`` with the fix when there is none."""
    try:
        return _CLASSES[name]
    except KeyError:
        raise KeyError(f"no module class is registered as {name!r}: if it is your own class, import the module "
                       f"that defines it before loading the file (command line: --import MODULE), the class "
                       f"decorated with {register_hint(name)}") from None


def register_hint(name: str) -> str:
    """The decorator that registers a class under ``name``, as Python source: ``@bitnet.nn.register("name")``
    (the name quoted; and where it is an identifier, the plain decorator works for a class of that name)."""
    quoted = f"@bitnet.nn.register({name!r})"
    if name.isidentifier():
        return f"{quoted} (or plain @bitnet.nn.register if the class is named {name})"
    return quoted


def names() -> list:
    """The registered names, sorted."""
    return sorted(_CLASSES)
