"""A model's architecture as JSON, for model files: written from a model, checked, and built again.

A file's ``config`` attribute (format version 2) is::

    {"architecture": NODE, "zoo": {"model": NAME, "kwargs": {...}}, "input_shape": [C, H, W]}

(``zoo`` for models of ``bitnet.models.get``, ``input_shape`` when known; both optional), where
every module of the model is a NODE::

    {"class": REGISTERED NAME, "config": {...constructor arguments...}, "children": [{"name": ..., ...NODE}]}

Containers (``Sequential``, ``ModuleList``) have no config: they are built from their children.
Any other module is built by ``cls.from_config(config)``, whose constructor builds its children; the
children it builds must be the ones the file lists (same names, classes and configs), else the file
describes another version of that class and is refused. The classes come from
``bitnet.nn.registry``: a file names a class, the registry decides what that means.

Version 1 files (``{"model": NAME, "kwargs": ...}`` or ``{"layers": [...]}``) are read as well.

Before anything is built, every value is checked (plain JSON values, integers within
``MAX_INT_ARGUMENT``, nesting bounded), the bytes of the model's parameters and buffers are computed
from the architecture and compared with what the file may describe (``bitnet.io.limits``), and the
model is built under ``bitnet.nn.init.allocation_limit`` of the same bound, with zeros for weights
(the file's replace them): a config cannot make the loader allocate more than the file earned.
A constructor's refusal of its arguments is a ``BitnetFileError`` naming the node.
"""
from __future__ import annotations

import inspect
import json
import math

import numpy as np

from bitnet.io import limits
from bitnet.io.h5 import BitnetFileError, short

MAX_INT_ARGUMENT = 1 << 24   # constructor / builder integer arguments beyond +-this are refused
MAX_DEPTH = 64               # module nesting
MAX_MODULES = 100_000


# -- writing: model -> JSON -------------------------------------------------------------------------

def _json_value(value, where):
    """A config value as plain JSON (quantizers as their configs, tuples as lists, NumPy scalars as
    Python numbers); TypeError / ValueError for what JSON cannot hold."""
    from bitnet.quantizers import Quantizer
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, (int, np.integer)) and not isinstance(value, np.bool_):
        return int(value)
    if isinstance(value, np.bool_):
        return bool(value)
    if isinstance(value, (float, np.floating)):
        if not math.isfinite(value):
            raise ValueError(f"{where}: {value} cannot be stored in a model file (finite numbers only)")
        return float(value)
    if isinstance(value, Quantizer):
        return _json_value(value.get_config(), where)
    if isinstance(value, (list, tuple)):
        return [_json_value(v, f"{where}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, dict) and all(isinstance(k, str) for k in value):
        return {k: _json_value(v, f"{where}.{k}") for k, v in value.items()}
    raise TypeError(f"{where} is a {type(value).__name__}, which a model file cannot hold (numbers, strings, "
                    "booleans, None, lists, dicts and quantizers only); override get_config() / from_config()")


def architecture(module, where="model") -> dict:
    """The NODE of ``module`` and all its descendants (module docstring)."""
    from bitnet.nn.registry import name_of
    name = name_of(type(module))
    if name is None:
        raise TypeError(f"{where} is a {type(module).__qualname__}, which is not registered for model files; "
                        f"decorate the class with @bitnet.nn.register (or call bitnet.nn.register("
                        f"{type(module).__name__})), and in the process that loads the file too")
    node = {"class": name}
    if not type(module).config_children:
        node["config"] = _json_value(module.get_config(), f"{where} ({type(module).__name__}) config")
    children = [dict(name=k, **architecture(m, f"{where}.{k}")) for k, m in module._modules.items() if m is not None]
    if children:
        node["children"] = children
    return node


def model_config(model, input_shape=None) -> dict:
    """What a file stores to rebuild ``model``: its architecture, its zoo name and arguments when it
    comes from ``bitnet.models.get``, and its input shape (C, H, W) when given or known."""
    config = {"architecture": architecture(model)}
    zoo = getattr(model, "zoo_config", None)
    if zoo is not None:
        config["zoo"] = {"model": zoo["name"], "kwargs": _json_value(dict(zoo["kwargs"]), "zoo arguments")}
    shape = input_shape if input_shape is not None else zoo_input_shape(zoo)
    if shape is not None:
        shape = [int(v) for v in shape]
        if len(shape) < 1 or min(shape) < 1:
            raise ValueError(f"input_shape must be positive sizes without the batch axis, e.g. (1, 28, 28); got {input_shape!r}")
        config["input_shape"] = shape
    return config


def zoo_input_shape(zoo):
    """(C, H, W) of a zoo model's input, from its recorded builder arguments and their defaults."""
    if zoo is None:
        return None
    from bitnet.models import registry
    params = inspect.signature(registry.builder(zoo["name"])).parameters
    value = {k: zoo["kwargs"].get(k, p.default) for k, p in params.items()}
    if "in_channels" not in value or "image_size" not in value:
        return None
    return [int(value["in_channels"]), int(value["image_size"]), int(value["image_size"])]


def verify_rebuild(model) -> None:
    """Check at save time that the file will load: building ``model``'s architecture from its configs
    gives the same architecture (a module changed after construction would not). Checked once per
    architecture and model object."""
    arch = json.dumps(architecture(model), sort_keys=True)
    if model.__dict__.get("_verified_architecture") == arch:
        return
    rebuilt = _build_node(json.loads(arch), "<save>", "architecture", saving=True)
    _compare(architecture(rebuilt), json.loads(arch), "<save>", "architecture", saving=True)
    object.__setattr__(model, "_verified_architecture", arch)


# -- error hints: a file of another kind --------------------------------------------------------------

# what each loader reads, and how a file of each kind is loaded (the hint when a loader finds another kind)
FILE_KINDS = {
    "checkpoint": "a file of bitnet.save",
    "packed": "a file of bitnet.convert",
    "state_dict": "a weights-only file of bitnet.save_state_dict",
}
LOAD_KIND = {
    "checkpoint": "load a checkpoint with bitnet.load (its state: bitnet.load(path).state_dict())",
    "packed": "load a packed file with bitnet.load_packed",
    "state_dict": ("load a weights-only file with bitnet.load_state_dict into a model built in code: "
                   "model.load_state_dict(bitnet.load_state_dict(path))"),
}


def wrong_kind_hint(want: str, found, default: str = "") -> str:
    """The hint for a file of kind ``found`` given to the loader of kind ``want``: what that loader reads
    and how to load what was found (``default`` for a kind bitnet does not write)."""
    if want not in FILE_KINDS or found not in LOAD_KIND or found == want:
        return default
    return f"{FILE_KINDS[want]}; {LOAD_KIND[found]}"


# -- reading: JSON -> checked -> model ----------------------------------------------------------------

def check_value(path, key, value, depth=0):
    """Config values: numbers, strings, booleans, None, and lists / objects of them (quantizer configs),
    integers within +-MAX_INT_ARGUMENT, nothing nested deeply."""
    if depth > 3:
        raise BitnetFileError(path, key, "values nested at most 3 deep", short(value))
    if isinstance(value, (list, dict)):
        items = value.items() if isinstance(value, dict) else enumerate(value)
        for k, v in items:
            check_value(path, f"{key}.{k}", v, depth + 1)
        return
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return
    if not isinstance(value, (int, float)) or isinstance(value, float) and not math.isfinite(value):
        raise BitnetFileError(path, key, "numbers, strings, booleans or lists of them", short(value))
    if isinstance(value, int) and not -MAX_INT_ARGUMENT <= value <= MAX_INT_ARGUMENT:
        raise BitnetFileError(path, key, f"an integer within +-{MAX_INT_ARGUMENT}", f"{value}")


def _check_node(node, path, where, depth, count):
    from bitnet.nn import registry
    if depth > MAX_DEPTH:
        raise BitnetFileError(path, where, f"modules nested at most {MAX_DEPTH} deep", "deeper nesting")
    count[0] += 1
    if count[0] > MAX_MODULES:
        raise BitnetFileError(path, where, f"at most {MAX_MODULES} modules", "more")
    if not isinstance(node, dict) or not isinstance(node.get("class"), str) \
            or not set(node) <= {"name", "class", "config", "children"}:
        raise BitnetFileError(path, where, "an object with a 'class' (and 'config', 'children')", short(node))
    try:
        cls = registry.lookup(node["class"])
    except KeyError as e:
        raise BitnetFileError(path, f"{where}.class", "a registered module class", repr(node["class"]),
                              str(e.args[0])) from None
    if cls.config_children and "config" in node:
        raise BitnetFileError(path, where, f"no config for a {node['class']} (built from its children)", "a config")
    config = node.get("config", {})
    if not isinstance(config, dict):
        raise BitnetFileError(path, f"{where}.config", "an object", short(config))
    params = inspect.signature(cls.__init__).parameters
    open_kwargs = any(p.kind is p.VAR_KEYWORD for p in params.values())
    for name, value in config.items():
        if name == "self" or name.startswith("_") or (name not in params and not open_kwargs):
            raise BitnetFileError(path, f"{where}.config.{name}", f"an argument of {node['class']}", "an unknown name")
        check_value(path, f"{where}.config.{name}", value)
    children = node.get("children", [])
    if not isinstance(children, list):
        raise BitnetFileError(path, f"{where}.children", "a list", short(children))
    names = set()
    for i, child in enumerate(children):
        name = child.get("name") if isinstance(child, dict) else None
        if not isinstance(name, str) or not name or "." in name or "/" in name or name in names:
            raise BitnetFileError(path, f"{where}.children[{i}].name", "a unique name without '.' or '/'", short(name))
        names.add(name)
        _check_node(child, path, f"{where}.{name}", depth + 1, count)


def _build_node(node, path, where, saving=False):
    from bitnet.nn import registry
    cls = registry.lookup(node["class"])
    if cls.config_children:
        module = cls()
        for child in node.get("children", []):
            module.add_module(child["name"], _build_node(child, path, f"{where}.{child['name']}", saving))
        return module
    if saving:
        return cls.from_config(node.get("config", {}))
    try:
        return cls.from_config(node.get("config", {}))
    except BitnetFileError:
        raise
    except limits.ARGUMENT_ERRORS as e:
        raise BitnetFileError(path, f"{where}.config", f"arguments that build a {node['class']}",
                              f"{type(e).__name__}: {e}") from None


def _compare(built, stored, path, where, saving=False):
    """Raise unless the built architecture is the stored one; name the first difference."""
    if built.get("class") != stored.get("class") or built.get("config") != stored.get("config"):
        b = {k: built.get(k) for k in ("class", "config")}
        s = {k: stored.get(k) for k in ("class", "config")}
        if saving:
            raise TypeError(f"cannot save: {where} is {short(s, 300)}, but building the model from its configs gives "
                            f"{short(b, 300)} there; the model was changed after construction. Describe it in its "
                            "constructor's arguments, or override get_config() / from_config()")
        raise BitnetFileError(path, where, short(s, 300), f"a constructor that builds {short(b, 300)}",
                              "the file was written with another version of this class")
    bc, sc = built.get("children", []), stored.get("children", [])
    if [c["name"] for c in bc] != [c["name"] for c in sc]:
        names = lambda cs: [c["name"] for c in cs]  # noqa: E731
        if saving:
            raise TypeError(f"cannot save: {where} has the children {names(sc)}, but building it from its config "
                            f"gives {names(bc)}; the model was changed after construction. Describe it in its "
                            "constructor's arguments, or override get_config() / from_config()")
        raise BitnetFileError(path, f"{where}.children", f"the children {names(sc)}", f"a constructor that builds "
                              f"{names(bc)}", "the file was written with another version of this class")
    for b, s in zip(bc, sc):
        _compare(b, s, path, f"{where}.{s['name']}", saving)


def _v1_layers(layers, path, key):
    """A version 1 ``layers`` list as a version 2 Sequential NODE."""
    if not isinstance(layers, list) or not layers:
        raise BitnetFileError(path, key, "a non-empty list of layers", short(layers))
    children = []
    for i, entry in enumerate(layers):
        where = f"{key}[{i}]"
        if isinstance(entry, dict) and entry.get("class") == "Sequential":
            if set(entry) != {"class", "layers"}:
                raise BitnetFileError(path, where, "keys 'class' and 'layers'", short(sorted(entry)))
            node = _v1_layers(entry["layers"], path, f"{where}.layers")
        elif isinstance(entry, dict) and set(entry) == {"class", "args"} and isinstance(entry["args"], dict) \
                and isinstance(entry["class"], str) and entry["class"] not in ("Sequential", "ModuleList"):
            node = {"class": entry["class"], "config": entry["args"]}
        else:
            raise BitnetFileError(path, where, "{'class': a layer class or 'Sequential', 'args': {...}}", short(entry))
        children.append(dict(name=str(i), **node))
    return {"class": "Sequential", "children": children}


def check_config(config, path, version) -> dict:
    """The file's config, checked against the registries and the constructors' signatures, as
    ``{"architecture": NODE or None, "zoo": (name, kwargs) or None, "input_shape": list or None,
    "verify": whether the built model's architecture must equal NODE}`` (a version 1 file's layers
    list holds constructor arguments, not the configs a model reports, so it builds unverified)."""
    verify = True
    if version == 1:
        verify = False
        if isinstance(config, dict) and set(config) == {"layers"}:
            config = {"architecture": _v1_layers(config["layers"], path, "config.layers")}
        elif isinstance(config, dict) and set(config) == {"model", "kwargs"}:
            config = {"zoo": config}
        else:
            raise BitnetFileError(path, "config", "an object with keys 'model' and 'kwargs' (or 'layers')", short(config))
    if not isinstance(config, dict) or not config or not set(config) <= {"architecture", "zoo", "input_shape"} \
            or ("architecture" not in config and version != 1):
        raise BitnetFileError(path, "config", "an object with 'architecture' (and 'zoo', 'input_shape')", short(config))
    spec = {"architecture": config.get("architecture"), "zoo": None, "input_shape": None, "verify": verify,
            "bytes": None, "largest": None}
    if spec["architecture"] is not None:
        _check_node(spec["architecture"], path, "config.architecture", 0, [0])
        spec["bytes"], spec["largest"] = limits.model_bytes(spec["architecture"], path)
    if "zoo" in config:
        spec["zoo"] = _check_zoo(config["zoo"], path, "config" if version == 1 else "config.zoo")
    shape = config.get("input_shape")
    if shape is not None:
        if not isinstance(shape, list) or not 1 <= len(shape) <= 4 or not all(
                isinstance(v, int) and not isinstance(v, bool) and 1 <= v <= MAX_INT_ARGUMENT for v in shape):
            raise BitnetFileError(path, "config.input_shape", "a list of positive sizes, e.g. [1, 28, 28]", short(shape))
        limits.check_input_shape(path, "config.input_shape", shape)
        spec["input_shape"] = shape
    return spec


def _check_zoo(zoo, path, key):
    from bitnet.models import registry
    if not isinstance(zoo, dict) or set(zoo) != {"model", "kwargs"}:
        raise BitnetFileError(path, key, "an object with keys 'model' and 'kwargs'", short(zoo))
    name, kwargs = zoo["model"], zoo["kwargs"]
    if not isinstance(name, str) or name not in registry.names():
        raise BitnetFileError(path, f"{key}.model", f"one of {registry.names()}", short(name))
    if not isinstance(kwargs, dict):
        raise BitnetFileError(path, f"{key}.kwargs", "an object", short(kwargs))
    params = inspect.signature(registry.builder(name)).parameters
    for arg, value in kwargs.items():
        if arg not in params or arg == "seed":
            raise BitnetFileError(path, f"{key}.kwargs.{arg}", f"an argument of {name} ({', '.join(params)})",
                                  "an unknown name")
        if isinstance(value, dict):
            raise BitnetFileError(path, f"{key}.kwargs.{arg}", "numbers, strings or lists of them", short(value))
        check_value(path, f"{key}.kwargs.{arg}", value)
    try:
        shape = zoo_input_shape({"name": name, "kwargs": kwargs})
    except (TypeError, ValueError) as e:
        raise BitnetFileError(path, f"{key}.kwargs", "integer in_channels and image_size", str(e)) from None
    if shape is not None:
        if min(shape) < 1:
            raise BitnetFileError(path, f"{key}.kwargs", "in_channels and image_size >= 1", short(shape))
        limits.check_input_shape(path, f"{key}.kwargs (in_channels, image_size)", shape)
    return name, kwargs


def _version1_zoo_kwargs(name, kwargs) -> dict:
    """A version 1 file's zoo arguments, with those of builder options added since then set to what
    the builder built when such files were written: resnet18-binary's stem ended in a ReLU."""
    if name == "resnet18-binary" and "stem_relu" not in kwargs:
        return {**kwargs, "stem_relu": True}
    return kwargs


def build(spec, path, allowed: tuple):
    """Build the model ``check_config`` accepted, if its parameters and buffers (``spec["bytes"]``) fit in
    ``allowed`` (``limits.allowed_bytes``), under an allocation limit of the same bytes, weights zeros
    (a loader replaces them); the built architecture must be the stored one. The architecture is built
    from its own classes (a change of the zoo's builders does not change what an old file loads); a
    version 1 file names only the zoo builder. A model the arguments cannot build is a file error."""
    from bitnet import models
    from bitnet.models.registry import plain
    from bitnet.nn.init import AllocationLimitError, allocation_limit
    if spec["bytes"] is not None:
        limits.check_bytes(path, "config.architecture", spec["bytes"], allowed, spec["largest"])
    try:
        with allocation_limit(allowed[0], zeros=True):
            if spec["architecture"] is None:
                model = models.get(spec["zoo"][0], **_version1_zoo_kwargs(*spec["zoo"]))
            else:
                model = _build_node(spec["architecture"], path, "config.architecture")
                if spec["zoo"] is not None:
                    object.__setattr__(model, "zoo_config", {"name": spec["zoo"][0], "kwargs": plain(spec["zoo"][1])})
    except AllocationLimitError as e:
        raise BitnetFileError(path, "config", f"a model of at most {allowed[0]} bytes of parameters and buffers "
                              f"({allowed[1]})", str(e), f"if you trust this file, pass max_bytes= or set "
                              f"{limits.ENV}") from None
    except BitnetFileError:
        raise
    except limits.ARGUMENT_ERRORS as e:
        key = "config.kwargs" if spec["architecture"] is None else "config"
        raise BitnetFileError(path, key, "arguments that build a model", f"{type(e).__name__}: {e}") from None
    if spec["architecture"] is not None and spec["verify"]:
        try:
            built = architecture(model)
        except (TypeError, ValueError) as e:
            raise BitnetFileError(path, "config.architecture", "a model whose configs can be described",
                                  f"{type(e).__name__}: {e}") from None
        _compare(built, spec["architecture"], path, "config.architecture")
    return model
