"""The random generators a checkpoint holds besides ``rng``: those of the model's modules
(``/training`` attribute ``module_rngs``, docs/file-format.md), and the check of a bit generator's
state that both use.

Every attribute of a module that holds a ``numpy.random.Generator`` (Dropout's ``rng``, and those of
modules of your own) is saved as its bit generator's state, one state per distinct generator, so a
resumed run draws the dropout masks the uninterrupted run would have drawn.
"""
from __future__ import annotations

import json

import numpy as np

from bitnet.io.h5 import BitnetFileError, short

GENERATORS = ("PCG64", "PCG64DXSM", "Philox", "SFC64", "MT19937")
RESTORE_ERRORS = (ValueError, TypeError, KeyError, IndexError, OverflowError, AttributeError, ZeroDivisionError)


def check_storable(gen, what: str, owner: str) -> None:
    """``TypeError`` for a Generator whose bit generator a checkpoint cannot hold (not one of ``GENERATORS``);
    ``what`` names it (``"rng"``, ``"2.rng"``)."""
    kind = type(gen.bit_generator).__name__
    if kind not in GENERATORS:
        raise TypeError(f"{owner}: {what} is a Generator of a {kind} bit generator; checkpoints store those of "
                        f"{', '.join(GENERATORS)}: use e.g. np.random.Generator(np.random.PCG64(seed))")


def generator_attributes(model) -> dict:
    """``{"drop.rng": (module, "rng"), ...}``: every attribute of the model's modules that holds a
    ``numpy.random.Generator`` (Dropout's ``rng``, and those of your own modules), in module order,
    keyed as state-dict keys are (the attribute of the model itself by its name alone)."""
    out = {}
    for prefix, module in model.named_modules():
        for name, value in vars(module).items():
            if isinstance(value, np.random.Generator):
                out[f"{prefix}.{name}" if prefix else name] = (module, name)
    return out


def module_generators_state(model, owner="save") -> dict | None:
    """The JSON-able ``module_rngs`` of ``model``: ``{"generators": [bit_generator.state, ...],
    "attributes": {key: index}}``, one state per distinct Generator (attributes sharing a Generator
    share its index); None when no module owns one. ``TypeError`` for a generator whose bit generator
    a checkpoint cannot hold (not one of ``GENERATORS``)."""
    states, index, attributes, rebuilt = [], {}, {}, {}
    for key, (module, name) in generator_attributes(model).items():
        gen = getattr(module, name)
        if id(module) not in rebuilt:  # the attribute must exist in the model that load builds
            rebuilt[id(module)] = _rebuilt_generator_names(module)
        if name not in rebuilt[id(module)]:
            raise TypeError(f"{owner}: {key} holds a Generator, but a {type(module).__name__} built from its config "
                            f"has no Generator {name!r}, so the checkpoint would not load; create it in the "
                            f"constructor (e.g. self.{name} = bitnet.nn.init.as_generator(rng))")
        if id(gen) not in index:
            check_storable(gen, key, owner)
            index[id(gen)] = len(states)
            states.append(gen.bit_generator.state)
        attributes[key] = index[id(gen)]
    return {"generators": states, "attributes": attributes} if states else None


def _rebuilt_generator_names(module) -> frozenset:
    """The names of the Generator attributes of ``module``'s class built from its config (as ``load``
    builds it); remembered on the module for its config, so that a save per epoch builds it once."""
    cls = type(module)
    children = getattr(cls, "config_children", False)
    config = None if children else json.dumps(module.get_config(), sort_keys=True, default=repr)
    known = module.__dict__.get("_rebuilt_generator_names")
    if known is not None and known[0] == config:
        return known[1]
    again = cls() if children else cls.from_config(module.get_config())
    names = frozenset(k for k, v in vars(again).items() if isinstance(v, np.random.Generator))
    object.__setattr__(module, "_rebuilt_generator_names", (config, names))
    return names


def set_module_generators(model, saved) -> callable:
    """Give the model's generator attributes the states of ``saved`` (``module_rngs``, checked); returns
    a function that undoes it. A generator used by exactly the attributes that shared it when saved,
    of the saved kind, gets the state in place; otherwise those attributes get one new Generator of
    the saved kind (so sharing is as saved: a rebuilt model's separate generators, a shared one).
    ``ValueError`` (nothing changed) when the model's generator attributes are not the saved ones."""
    targets = generator_attributes(model)
    if set(targets) != set(saved["attributes"]):
        saved_keys = set(saved["attributes"])
        missing, extra = sorted(saved_keys - set(targets)), sorted(set(targets) - saved_keys)
        raise ValueError(f"the model's generator attributes differ from the checkpoint's: saved but not in the "
                         f"model {missing[:5]}, in the model but not saved {extra[:5]}")
    by_index = {}
    for key, i in saved["attributes"].items():
        by_index.setdefault(i, []).append(key)
    current = {key: getattr(module, name) for key, (module, name) in targets.items()}
    users = {}  # id(generator) -> the keys that hold it
    for key, gen in current.items():
        users.setdefault(id(gen), set()).add(key)
    undo = []

    def put_back():
        for obj, old, name in reversed(undo):
            if name is None:
                obj.bit_generator.state = old
            else:
                setattr(obj, name, old)

    try:
        for i, keys in sorted(by_index.items()):
            state = saved["generators"][i]
            gen = current[keys[0]]
            if users[id(gen)] == set(keys) and type(gen.bit_generator).__name__ == state["bit_generator"]:
                undo.append((gen, gen.bit_generator.state, None))
                gen.bit_generator.state = state
            else:
                new = np.random.Generator(getattr(np.random, state["bit_generator"])())
                new.bit_generator.state = state
                for key in keys:
                    module, name = targets[key]
                    undo.append((module, getattr(module, name), name))
                    setattr(module, name, new)
    except BaseException:
        put_back()
        raise
    return put_back


def _check_rng(path, value, key="training attribute 'rng'"):
    if not isinstance(value, dict) or value.get("bit_generator") not in GENERATORS:
        raise BitnetFileError(path, key, f"the state of a numpy bit generator, one of {GENERATORS}", short(value))

    def walk(v, where):
        if isinstance(v, dict):
            for k, x in v.items():
                walk(x, f"{where}.{k}")
        elif isinstance(v, list):
            for i, x in enumerate(v):
                walk(x, f"{where}[{i}]")
        elif not isinstance(v, str) and (isinstance(v, bool) or not isinstance(v, int) or v < 0):
            raise BitnetFileError(path, f"{key}: {where}", "a non-negative integer", short(v))
    walk(value, "rng")
    if value.get("has_uint32", 0) not in (0, 1):
        raise BitnetFileError(path, f"{key}: rng.has_uint32", "0 or 1", short(value["has_uint32"]))
    bits = getattr(np.random, value["bit_generator"])()
    try:
        bits.state = value
    except RESTORE_ERRORS as e:
        raise BitnetFileError(path, key, f"the state of a numpy {value['bit_generator']}",
                              f"{type(e).__name__}: {e}") from None
    return value


def check_module_rngs(path, value, model):
    """``module_rngs`` (JSON, see ``module_generators_state``) checked against ``model``, the model the
    file builds: its ``attributes`` exactly the model's generator attributes, each an index of
    ``generators``, every generator used, each a bit generator's state as ``rng`` is checked."""
    key = "training attribute 'module_rngs'"
    targets = generator_attributes(model)
    if not isinstance(value, dict) or set(value) != {"generators", "attributes"}:
        raise BitnetFileError(path, key, "an object with 'generators' and 'attributes'", short(value))
    gens, attrs = value["generators"], value["attributes"]
    if not isinstance(gens, list) or not 1 <= len(gens) <= max(1, len(targets)):
        raise BitnetFileError(path, f"{key}: generators", f"a list of 1..{max(1, len(targets))} generator states "
                              f"(the model has {len(targets)} generator attributes)", short(gens))
    if not isinstance(attrs, dict) or set(attrs) != set(targets):
        raise BitnetFileError(path, f"{key}: attributes", f"an object naming the model's generator attributes "
                              f"{short(sorted(targets))}", short(sorted(attrs) if isinstance(attrs, dict) else attrs))
    for name, i in attrs.items():
        if isinstance(i, bool) or not isinstance(i, int) or not 0 <= i < len(gens):
            raise BitnetFileError(path, f"{key}: attributes.{name}", f"an index in 0..{len(gens) - 1}", short(i))
    if set(attrs.values()) != set(range(len(gens))):
        raise BitnetFileError(path, f"{key}: attributes", "every generator held by an attribute",
                              f"generators {sorted(set(range(len(gens))) - set(attrs.values()))} unused")
    for i, state in enumerate(gens):
        _check_rng(path, state, f"{key}: generators[{i}]")
    return value
