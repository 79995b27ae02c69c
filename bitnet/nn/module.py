"""``Module``: the base of every layer and model.

Assigning a ``Parameter`` or a ``Module`` to an attribute registers it; ``register_buffer``
registers an array that is state but not trained (batch-norm running averages). Names are
dotted paths (``features.0.weight``), used by ``state_dict`` / ``load_state_dict`` and by the
HDF5 files. ``to(device)`` moves every parameter, gradient and buffer to "cpu" or "cuda" in place
(the same ``Parameter`` objects, so an optimizer built before keeps working).

Configs: every module remembers the arguments of its constructor, and ``get_config()`` returns them
(without random sources: arguments named ``rng`` or ``seed`` and generator objects only choose the
initial weights, which a file replaces); ``cls.from_config(config)`` constructs it again. Model files
store the config of every module (``bitnet.io.config``). A module whose hyperparameters change after
construction, or whose arguments are not plain values (numbers, strings, lists, quantizers), overrides
both.
"""
from __future__ import annotations

import copy
import functools
import inspect
from collections import OrderedDict

import numpy as np

from bitnet.backend import check_device
from bitnet.gpu.arrays import device_of, is_device_array, to_device, to_host
from bitnet.tensor import Parameter, Tensor


class StateDictError(KeyError):
    """``load_state_dict`` found missing, unexpected or mis-shaped keys (all listed at once)."""

    def __str__(self):  # KeyError quotes its message; show it plainly
        return str(self.args[0])


_RANDOM_SOURCES = (np.random.Generator, np.random.BitGenerator, np.random.SeedSequence, np.random.RandomState)


class _Unrecorded:
    """Stands in for a constructor argument that is not a plain value (an array, a module, a
    function): not kept, so that it cannot keep memory alive; ``get_config`` reports it."""
    __slots__ = ("type_name",)

    def __init__(self, value):
        self.type_name = type(value).__name__


def _plain(value):
    """``value`` if it is a plain config value (numbers, strings, None, quantizers, random sources,
    and lists / tuples / dicts of them), else an ``_Unrecorded`` marker."""
    from bitnet.quantizers import Quantizer
    if value is None or isinstance(value, (bool, int, float, str, np.generic, Quantizer) + _RANDOM_SOURCES):
        return value
    if isinstance(value, (list, tuple)):
        items = [_plain(v) for v in value]
        return _Unrecorded(value) if any(isinstance(v, _Unrecorded) for v in items) else type(value)(items)
    if isinstance(value, dict):
        items = {k: _plain(v) for k, v in value.items()}
        plain = all(isinstance(k, str) and not isinstance(v, _Unrecorded) for k, v in items.items())
        return items if plain else _Unrecorded(value)
    return _Unrecorded(value)


def _records_arguments(init):
    """Wrap a subclass's ``__init__`` so that the outermost constructor call records its bound
    arguments in ``_constructor_arguments`` (the ``super().__init__`` calls inside it do not)."""
    signature = inspect.signature(init)

    @functools.wraps(init)
    def __init__(self, *args, **kwargs):
        if "_constructor_arguments" not in self.__dict__:
            try:
                bound = signature.bind(self, *args, **kwargs)
            except TypeError:
                pass  # the constructor itself reports the bad call
            else:
                bound.apply_defaults()
                arguments = {k: _plain(v) for k, v in list(bound.arguments.items())[1:]}  # [0] is self
                object.__setattr__(self, "_constructor_arguments", (signature, arguments))
        init(self, *args, **kwargs)
    __init__._records_arguments = True
    return __init__


class Module:
    """Base class: subclasses set attributes in ``__init__`` and implement ``forward``."""

    # containers (Sequential, ModuleList) are described by their children, not by a config
    config_children = False

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        init = cls.__dict__.get("__init__")
        if init is not None and not getattr(init, "_records_arguments", False):
            cls.__init__ = _records_arguments(init)

    def __init__(self):
        object.__setattr__(self, "_parameters", OrderedDict())
        object.__setattr__(self, "_buffers", OrderedDict())
        object.__setattr__(self, "_modules", OrderedDict())
        object.__setattr__(self, "training", True)
        object.__setattr__(self, "_forward_hooks", [])

    # -- registration ---------------------------------------------------------------------------
    def __setattr__(self, name, value):
        if "_parameters" not in self.__dict__:
            raise RuntimeError(f"{type(self).__name__}.__init__ must call super().__init__() "
                               "before assigning attributes")
        params, buffers, modules = self._parameters, self._buffers, self._modules
        replaced = name in params or name in buffers  # a state array replaced: caches derived from it go
        if isinstance(value, (Parameter, Module)):
            for store in (params, buffers, modules):
                store.pop(name, None)
            self.__dict__.pop(name, None)
            (params if isinstance(value, Parameter) else modules)[name] = value
        elif name in params or name in modules:
            if value is not None:
                kind = "Parameter" if name in params else "Module"
                raise TypeError(f"cannot assign {type(value).__name__} to {name!r}: it is a "
                                f"registered {kind}; assign a {kind} or None")
            (params if name in params else modules)[name] = None
        elif name in buffers:
            buffers[name] = _buffer(value, name)
        else:
            object.__setattr__(self, name, value)
        if replaced:  # (a packed layer's prepared calls, the plans of the packed containers above it)
            state_changed(self)

    def __getattr__(self, name):
        d = self.__dict__
        for store in ("_parameters", "_buffers", "_modules"):
            if store in d and name in d[store]:
                return d[store][name]
        raise AttributeError(f"'{type(self).__name__}' object has no attribute '{name}'")

    def __delattr__(self, name):
        for store in (self._parameters, self._buffers, self._modules):
            if name in store:
                del store[name]
                return
        object.__delattr__(self, name)

    def register_buffer(self, name: str, array):
        """Register a non-trainable array (saved in ``state_dict``); ``None`` is allowed."""
        if "." in name or not name:
            raise ValueError(f"buffer name must be a non-empty name without '.', got {name!r}")
        self.__dict__.pop(name, None)
        self._buffers[name] = _buffer(array, name)

    def add_module(self, name: str, module):
        if not isinstance(module, Module):
            raise TypeError(f"add_module({name!r}): expected a Module, got {type(module).__name__}")
        setattr(self, name, module)

    # -- traversal --------------------------------------------------------------------------------
    def named_modules(self, prefix: str = ""):
        """(dotted name, module) for self and every descendant, depth first, each once."""
        seen, stack = set(), [(prefix, self)]
        while stack:
            name, mod = stack.pop()
            if id(mod) in seen:
                continue
            seen.add(id(mod))
            yield name, mod
            children = [(f"{name}.{k}" if name else k, m) for k, m in mod._modules.items() if m is not None]
            stack.extend(reversed(children))

    def modules(self):
        return (m for _, m in self.named_modules())

    def named_children(self):
        return ((k, m) for k, m in self._modules.items() if m is not None)

    def children(self):
        return (m for _, m in self.named_children())

    def apply(self, fn):
        """Call ``fn(module)`` on every submodule (recursively, children first) and then on self, as
        PyTorch's ``Module.apply`` (e.g. to initialize weights); returns self."""
        for child in self.children():
            child.apply(fn)
        fn(self)
        return self

    def _named(self, attr, recurse=True):
        seen = set()
        mods = self.named_modules() if recurse else [("", self)]
        for prefix, mod in mods:
            for k, v in getattr(mod, attr).items():
                if v is None or id(v) in seen:
                    continue
                seen.add(id(v))
                yield (f"{prefix}.{k}" if prefix else k), v

    def named_parameters(self, recurse: bool = True):
        return self._named("_parameters", recurse)

    def parameters(self, recurse: bool = True):
        return (p for _, p in self.named_parameters(recurse))

    def named_buffers(self, recurse: bool = True):
        return self._named("_buffers", recurse)

    def buffers(self, recurse: bool = True):
        return (b for _, b in self.named_buffers(recurse))

    def num_parameters(self) -> int:
        return int(sum(p.size for p in self.parameters()))

    # -- modes and gradients -----------------------------------------------------------------------
    def train(self, mode: bool = True):
        for m in self.modules():
            object.__setattr__(m, "training", bool(mode))
        return self

    def eval(self):
        return self.train(False)

    def zero_grad(self):
        for p in self.parameters():
            p.grad = None

    # -- devices --------------------------------------------------------------------------------------
    def to(self, device: str):
        """Move every parameter (its data and gradient) and buffer of this module and its children to
        ``device`` ("cpu" or "cuda"), in place; returns ``self``."""
        check_device(device, "Module.to")
        for mod in self.modules():
            moved = False
            for p in mod._parameters.values():
                if p is not None and device_of(p.data) != device:
                    p.data, moved = to_device(p.data, device), True
                if p is not None and p.grad is not None:
                    p.grad = to_device(p.grad, device)
            for name, b in mod._buffers.items():
                if b is not None and device_of(b) != device:
                    mod._buffers[name], moved = to_device(b, device), True
            if moved:
                state_changed(mod)  # caches derived from the old arrays (packed weights) are stale
        return self

    def cpu(self):
        """``self.to("cpu")``."""
        return self.to("cpu")

    def cuda(self):
        """``self.to("cuda")``."""
        return self.to("cuda")

    @property
    def device(self) -> str:
        """Where the parameters and buffers are ("cpu" or "cuda"; "cpu" for a module without any); a
        module split across devices raises ``RuntimeError`` naming both."""
        found = {}
        for name, p in self.named_parameters():
            found.setdefault(p.device, name)
        for name, b in self.named_buffers():
            if b is not None:
                found.setdefault(device_of(b), name)
        if len(found) > 1:
            raise RuntimeError(f"{type(self).__name__} is split across devices: {found['cpu']!r} is on cpu, "
                               f"{found['cuda']!r} on cuda; move it whole with .to(device)")
        return next(iter(found), "cpu")

    # -- state ----------------------------------------------------------------------------------------
    def state_dict(self) -> "OrderedDict[str, np.ndarray]":
        """Copies of every parameter and buffer, keyed by dotted name."""
        out = OrderedDict()
        for prefix, mod in self.named_modules():
            for store in (mod._parameters, mod._buffers):
                for k, v in store.items():
                    if v is not None:
                        value = v.data if isinstance(v, Tensor) else v
                        out[f"{prefix}.{k}" if prefix else k] = np.array(to_host(value))
        return out

    def load_state_dict(self, state, strict: bool = True):
        """Copy arrays from ``state`` into the parameters and buffers of the same names.

        With ``strict`` every missing, unexpected and mis-shaped key is reported in one
        ``StateDictError`` and nothing is changed. Without ``strict`` the keys that match are
        loaded (mis-shaped ones are still an error) and ``(missing, unexpected)`` is returned.
        """
        targets = OrderedDict()
        for prefix, mod in self.named_modules():
            for store in (mod._parameters, mod._buffers):
                for k, v in store.items():
                    if v is not None:
                        targets[f"{prefix}.{k}" if prefix else k] = (mod, store, k, v)
        missing = [k for k in targets if k not in state]
        unexpected = [k for k in state if k not in targets]
        mismatched = []
        for k, (_, _, _, v) in targets.items():
            if k in state:
                shape = np.shape(state[k])
                if shape != v.shape:
                    mismatched.append(f"{k}: expected shape {v.shape}, got {shape}")
        problems = []
        if strict and missing:
            problems.append(f"missing keys ({len(missing)}): {', '.join(missing)}")
        if strict and unexpected:
            problems.append(f"unexpected keys ({len(unexpected)}): {', '.join(unexpected)}")
        if mismatched:
            problems.append(f"shape mismatches ({len(mismatched)}): {'; '.join(mismatched)}")
        if problems:
            raise StateDictError(
                f"load_state_dict into {type(self).__name__} failed, nothing was loaded:\n  "
                + "\n  ".join(problems)
                + "\nCheck that the state dict comes from the same architecture (and its "
                  "constructor arguments), or pass strict=False to load the matching keys only.")
        for k, (mod, store, name, v) in targets.items():
            if k not in state:
                continue
            src = np.asarray(to_host(state[k].data if isinstance(state[k], Tensor) else state[k]))
            here = device_of(v.data if isinstance(v, Tensor) else v)
            if isinstance(v, Tensor):
                v.data[...] = to_device(src.astype(v.dtype, copy=False), here)
            else:
                store[name] = to_device(np.array(src, dtype=v.dtype), here)
        for _, mod in self.named_modules():
            state_changed(mod)
        return missing, unexpected

    def _state_changed(self) -> None:
        """Called on every module after ``load_state_dict`` wrote new values into it, and when one of
        its parameters or buffers is replaced by assignment (``module.name = ...``): a module that
        keeps values derived from its state (caches of a packed model) drops them here."""

    # -- configs --------------------------------------------------------------------------------------
    def get_config(self) -> dict:
        """The constructor arguments this module was built with (keyword form), random sources
        left out; see the module docstring."""
        recorded = self.__dict__.get("_constructor_arguments")
        if recorded is None:
            return {}
        signature, arguments = recorded
        config = {}
        for name, value in arguments.items():
            kind = signature.parameters[name].kind
            if name in ("rng", "seed") or isinstance(value, _RANDOM_SOURCES):
                continue
            if isinstance(value, _Unrecorded):
                raise TypeError(f"{type(self).__name__}.get_config(): constructor argument {name!r} is a "
                                f"{value.type_name}, which a config cannot hold (plain values only: numbers, strings, "
                                f"lists, quantizers); define get_config() and from_config() on {type(self).__name__} "
                                "to describe it with plain values")
            if kind is inspect.Parameter.VAR_KEYWORD:
                config.update(value)
            else:
                config[name] = list(value) if kind is inspect.Parameter.VAR_POSITIONAL else value
        return config

    @classmethod
    def from_config(cls, config: dict):
        """A new module built from ``get_config()``'s dictionary (fresh parameters)."""
        params = list(inspect.signature(cls.__init__).parameters.values())[1:]
        config, args, kwargs = dict(config), [], {}
        star = next((p for p in params if p.kind is inspect.Parameter.VAR_POSITIONAL), None)
        for p in params:
            if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) and star is not None:
                if p.name in config:  # before *args: must be passed by position
                    args.append(config.pop(p.name))
            elif p.kind is p.VAR_POSITIONAL:
                args.extend(config.pop(p.name, ()))
        kwargs.update(config)
        return cls(*args, **kwargs)

    @classmethod
    def state_bytes(cls, config: dict):
        """The bytes of the parameters and buffers that ``cls.from_config(config)`` would allocate (the
        whole subtree it builds), computed from ``config`` alone without building anything, or None when
        the class cannot tell (the default; a model file's loader then counts the children the file lists,
        and bounds what the constructor allocates while it runs). Raises ``ValueError`` / ``TypeError``
        for arguments the constructor would refuse. Sizes are Python ints (no overflow)."""
        return None

    @classmethod
    def _arguments(cls, config: dict) -> dict:
        """``config`` bound to the constructor's parameters, defaults filled in (``TypeError`` for
        missing or unknown names)."""
        bound = inspect.signature(cls.__init__).bind(None, **config)
        bound.apply_defaults()
        return dict(list(bound.arguments.items())[1:])

    # -- calling --------------------------------------------------------------------------------------
    def forward(self, *args, **kwargs):  # pragma: no cover - abstract
        raise NotImplementedError(f"{type(self).__name__} does not implement forward()")

    def __call__(self, *args, **kwargs):
        out = self.forward(*args, **kwargs)
        for hook in self._forward_hooks:
            hook(self, args, out)
        return out

    def register_forward_hook(self, hook):
        """Call ``hook(module, inputs, output)`` after every forward of this module; returns a
        handle whose ``remove()`` unregisters it."""
        self._forward_hooks.append(hook)
        hooks = self._forward_hooks

        class _Handle:
            @staticmethod
            def remove():
                if hook in hooks:
                    hooks.remove(hook)
        return _Handle()

    def _repr_html_(self) -> str:
        """A notebook's view of the model: the ``bitnet.summary`` table where the input shape is known
        (a zoo model's, or an ``input_shape`` attribute without the batch axis), else a table of the
        layers and their parameter counts."""
        import html
        from bitnet.io.config import zoo_input_shape
        shape = getattr(self, "input_shape", None)
        if shape is None:
            try:
                shape = zoo_input_shape(getattr(self, "zoo_config", None))
            except Exception:
                shape = None
        if shape is not None:
            from bitnet.summary import summarize
            try:
                return summarize(self, tuple(shape))._repr_html_()
            except Exception:  # a model that does not run on that shape: the plain table below
                pass
        rows = []
        for name, mod in self.named_modules():
            if mod._modules:  # leaves only (the model itself when it is one layer)
                continue
            count = sum(p.size for p in mod._parameters.values() if p is not None)
            rows.append(f"<tr><td>{html.escape(name)}</td><td>{html.escape(type(mod).__name__)}</td>"
                        f"<td>{html.escape(mod.extra_repr())}</td><td>{count}</td></tr>")
        total = sum(p.size for p in self.parameters())
        return (f"<p>{html.escape(type(self).__name__)}: {total} parameters</p><table><thead><tr><th>layer</th>"
                f"<th>type</th><th>arguments</th><th>parameters</th></tr></thead><tbody>{''.join(rows)}</tbody></table>")

    def extra_repr(self) -> str:
        return ""

    def __repr__(self):
        lines = [f"{type(self).__name__}({self.extra_repr()}"]
        for name, mod in self.named_children():
            child = repr(mod).replace("\n", "\n  ")
            lines.append(f"  ({name}): {child}")
        return lines[0] + ")" if len(lines) == 1 else "\n".join(lines) + "\n)"


def _buffer(value, name: str):
    """A buffer's array: device arrays as they are, a ``Tensor``'s array (its ``data``, not a copy:
    buffers are state outside the graph), anything else as a NumPy array; None stays None. An array
    that is not numbers or bools (object, strings, ...) is a TypeError: it cannot be saved."""
    if isinstance(value, Tensor):
        value = value.data
    if value is None or is_device_array(value):
        return value
    array = np.asarray(value)
    if array.dtype.kind not in "biufc":
        raise TypeError(f"buffer {name!r}: expected an array of numbers (e.g. float32), got {type(value).__name__} "
                        f"giving dtype {array.dtype}; assign a NumPy array such as np.zeros(n, np.float32)")
    return array


class _Watchers(dict):
    """``id(owner) -> weakref(owner)`` of the modules to tell when this module's state changes; a copy
    of the module starts with none (its owners are the copy's, which register themselves)."""

    def __deepcopy__(self, memo):
        return _Watchers()


def watch_state(module, owner) -> None:
    """Call ``owner._state_changed()`` whenever ``module``'s state is changed by ``load_state_dict`` or
    ``to`` (on ``module`` or on any module above it): a container whose caches read the arrays of
    modules below it (a packed model's plans) registers itself on each of them. Holds ``owner``
    weakly."""
    import weakref
    watchers = module.__dict__.get("_state_watchers")
    if watchers is None:
        watchers = module.__dict__["_state_watchers"] = _Watchers()
    watchers[id(owner)] = weakref.ref(owner)


def state_changed(module) -> None:
    """``module._state_changed()``, then that of every live owner watching it (``watch_state``)."""
    module._state_changed()
    for ref in list(module.__dict__.get("_state_watchers", {}).values()):
        owner = ref()
        if owner is not None:
            owner._state_changed()


def deepcopy_without(obj, memo, caches):
    """A deep copy of ``obj`` (an object with a ``__dict__``) whose attributes named in ``caches`` start
    as empty dicts: per-shape caches holding functions and prepared kernel calls bound to ``obj``'s
    own arrays (a copy would run the original's), and locks (which cannot be copied)."""
    import copy
    cls = obj.__class__
    new = cls.__new__(cls)
    memo[id(obj)] = new
    for key, value in obj.__dict__.items():
        new.__dict__[key] = {} if key in caches else copy.deepcopy(value, memo)
    return new


def host_copy(module):
    """A deep copy of ``module`` on the CPU, ``module`` untouched: each of its parameters, gradients and
    buffers on the GPU is copied to the host once, straight into the copy (no second copy on the GPU);
    a module on the CPU is simply deep-copied. What ``bitnet.pack`` / ``convert`` start from."""
    memo = {}
    for mod in module.modules():
        arrays = [b for b in mod._buffers.values()]
        for p in mod._parameters.values():
            if p is not None:
                arrays += [p.data, p.grad]
        for a in arrays:
            if a is not None and is_device_array(a):
                memo[id(a)] = to_host(a)
    return copy.deepcopy(module, memo)
