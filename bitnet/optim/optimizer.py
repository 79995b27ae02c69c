"""The ``Optimizer`` base class: parameter groups, per-parameter state, checkpointable state.

An optimizer holds ``param_groups``, a list of dicts; each has ``"params"`` (a list of
Parameters) and the hyperparameters for them (``"lr"``, ...), taken from ``defaults`` unless the
group overrides them, PyTorch style::

    SGD(model.parameters(), lr=0.1)
    SGD([{"params": body}, {"params": head, "lr": 0.01}], lr=0.1, momentum=0.9)

``step()`` updates, in place and without recording any autograd graph, every parameter whose
``.grad`` is not ``None``; a parameter without a gradient is left untouched and gets no state.
The update is computed in the parameter's dtype (float32 stays float32, float64 stays float64).
Subclasses implement ``_update(data, grad, state, group)`` for one parameter and
``_check_group(group)`` for their hyperparameters.

Devices: a parameter on "cuda" (``model.to("cuda")``: ``.data`` and ``.grad`` are device arrays,
``bitnet.gpu.arrays``) is updated in place on the device, by the same formulas in the same dtype (each
optimizer's ``_update`` runs its array math through the parameter's array module), and its state is
created there. State follows its parameter: when a model moves after some steps, the state arrays
are moved to the parameter's device by the next ``step()`` (one copy, once), with or without a
gradient. A gradient on another device than its parameter is a ``RuntimeError``. ``constraint`` is
called with the device array. On a device, an optimizer whose update is elementwise
(``elementwise_update = True``: SGD, Adam, AdamW, Bop) updates each group's parameters together, over
their concatenation, in a few kernel launches (``bitnet.optim.flat``; the same bits), and keeps each
array of their state as a view of one flat array.

``state_dict()`` holds only plain data (dicts, lists, Python numbers, bools, NumPy arrays),
with parameters named by their position in the optimizer (0, 1, ... in group order), so that it
can be written to HDF5 without pickle (state on "cuda" is copied to the host: a checkpoint has one
format whatever the device; ``load_state_dict()`` puts each array on its parameter's current device).
``load_state_dict()`` checks it against this optimizer first (structure, types, shapes, and every
state value against the class's ``state_spec``: finite arrays of the parameter's shape, step counts
>= 1, second moments >= 0) and reports every difference in one ``ValueError``, changing nothing.
"""
from __future__ import annotations

import numbers

import numpy as np

from bitnet.gpu.arrays import array_module, device_of, is_device_array, to_device, to_host
from bitnet.tensor import Tensor, enable_grad, no_grad
from bitnet.optim._checks import check_number
from bitnet.optim.flat import FlatUpdates

__all__ = ["Optimizer"]

MAX_STEP = 1 << 62  # step counts beyond this are not a training run's

# what a per-parameter state value may be (``Optimizer.state_spec``)
STATE_KINDS = {
    "array": "a finite float array of the parameter's shape",
    "nonnegative": "a finite float array of the parameter's shape, every value >= 0",
    "count": f"an integer step count in 1..{MAX_STEP}",
}


def _state_value_problem(kind, value, shape):
    """Why ``value`` is not a state value of ``kind`` (``STATE_KINDS``; None: any finite number or
    numeric array), or None if it is."""
    if kind == "count":
        ok = isinstance(value, (numbers.Integral, np.integer)) and not isinstance(value, (bool, np.bool_)) \
            and 1 <= int(value) <= MAX_STEP
        return None if ok else repr(value)
    if shape is not None and tuple(shape) == () and kind is not None and isinstance(value, (float, np.floating)):
        value = np.asarray(value)  # the state of a 0-d parameter, read back as a scalar
    if isinstance(value, np.ndarray) and (value.ndim or kind is not None):
        if value.dtype.kind not in "biuf":
            return f"an array of dtype {value.dtype}"
        if shape is not None and value.shape != tuple(shape):
            return f"shape {value.shape} (the parameter has shape {tuple(shape)})"
        if kind is not None and value.dtype.kind != "f":
            return f"an array of dtype {value.dtype}"
        if value.dtype.kind == "f" and not np.all(np.isfinite(value)):
            return f"{int(np.sum(~np.isfinite(value)))} NaN or infinite values"
        if kind == "nonnegative" and np.any(value < 0):
            return f"{int(np.sum(value < 0))} negative values (smallest {float(value.min()):.3g})"
        return None
    if kind is not None:
        return f"a {type(value).__name__} ({value!r})"[:200]
    if isinstance(value, np.ndarray):
        value = value.item() if value.dtype.kind in "biuf" else value
    if isinstance(value, (bool, np.bool_)) or isinstance(value, (numbers.Integral, np.integer)):
        return None
    if isinstance(value, (numbers.Real, np.floating)) and np.isfinite(value):
        return None
    return f"a {type(value).__name__} ({value!r})"[:200]


def _follow(state: dict, data) -> None:
    """Move the arrays of one parameter's ``state`` to the device of its ``data``, in place (state
    created, or loaded, before the parameter moved)."""
    if type(data) is np.ndarray:
        for key, value in state.items():
            kind = type(value)
            if kind is not np.ndarray and kind is not int and is_device_array(value):  # fast on the CPU path
                state[key] = to_host(value)
    else:
        for key, value in state.items():
            if isinstance(value, np.ndarray) and not is_device_array(value):
                state[key] = to_device(value, "cuda")


def _plain(value):
    """A copy of ``value`` made of plain data: arrays copied (device arrays to the host), tuples to
    lists, NumPy scalars out."""
    if type(value) is not np.ndarray and is_device_array(value):
        return to_host(value)  # a copy on the host
    if isinstance(value, np.ndarray):
        return value.copy()
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, (tuple, list)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


class Optimizer:
    """Base class of all optimizers. ``params``: Parameters, or dicts ``{"params": [...], **hp}``.

    ``state_spec`` maps the names of a parameter's state to their kinds (``STATE_KINDS``), with the
    names in ``required_state`` always present; None (the default) accepts any names holding finite
    numbers or numeric arrays of the parameter's shape."""

    state_spec: dict | None = None
    required_state: tuple = ()
    elementwise_update = False  # True: ``_update`` may run on parameters concatenated (bitnet.optim.flat)

    def __init__(self, params, defaults: dict):
        self.defaults = dict(defaults)
        self.param_groups: list[dict] = []
        self.state: dict = {}  # Parameter -> dict of per-parameter state
        self._flat = FlatUpdates()  # parameters on a device: one update per bucket
        if isinstance(params, Tensor):
            raise TypeError(f"{self._name}: params must be an iterable of Parameters or of dicts, "
                            "got a single Tensor; wrap it in a list: [param]")
        from bitnet.nn.module import Module
        if isinstance(params, Module):
            raise TypeError(f"{self._name}: expected an iterable of Parameters (model.parameters()) or param "
                            f"groups, got a {type(params).__name__} module; pass model.parameters()")
        if isinstance(params, dict):
            params = [params]
        try:
            params = list(params)
        except TypeError:
            raise TypeError(f"{self._name}: expected an iterable of Parameters (model.parameters()) or param "
                            f"groups, got {type(params).__name__}") from None
        if not params:
            raise ValueError(f"{self._name}: got an empty parameter list; pass the parameters to "
                             "optimize, e.g. model.parameters()")
        if not isinstance(params[0], dict):
            params = [{"params": params}]
        for group in params:
            self.add_param_group(group)

    @property
    def _name(self) -> str:
        return type(self).__name__

    # -- groups -----------------------------------------------------------------------------
    def add_param_group(self, group: dict) -> None:
        """Append a group ``{"params": [...], **overrides}``; missing hyperparameters come from
        ``defaults``. Hyperparameters are checked; a parameter may belong to one group only."""
        if not isinstance(group, dict) or "params" not in group:
            raise TypeError(f"{self._name}: a parameter group must be a dict with a 'params' "
                            f"entry, got {type(group).__name__}")
        group = dict(group)
        params = group["params"]
        params = [params] if isinstance(params, Tensor) else list(params)
        for i, p in enumerate(params):
            if not isinstance(p, Tensor):
                raise TypeError(f"{self._name}: parameter {i} of a group is a "
                                f"{type(p).__name__}, expected a Parameter (bitnet Tensor)")
            if p.data.dtype.kind != "f":
                raise TypeError(f"{self._name}: can only optimize floating-point parameters, "
                                f"parameter {i} has dtype {p.data.dtype}")
        seen = {id(p) for g in self.param_groups for p in g["params"]}
        ids = [id(p) for p in params]
        if len(set(ids)) != len(ids) or seen.intersection(ids):
            raise ValueError(f"{self._name}: a parameter appears more than once (within a group "
                             "or in two groups); each parameter may be optimized by one group only")
        group["params"] = params
        for key, value in self.defaults.items():
            group.setdefault(key, value)
        self._check_group(group)
        self.param_groups.append(group)

    def _check_group(self, group: dict) -> None:
        """Check (and normalize in place) a group's hyperparameters; subclasses extend this."""
        if "lr" in group:
            group["lr"] = check_number(self._name, "lr", group["lr"], low=0.0)

    # -- stepping ---------------------------------------------------------------------------
    def zero_grad(self, set_to_none: bool = True) -> None:
        """Forget the gradients: ``p.grad = None`` (or fill with zeros if ``set_to_none=False``)."""
        for group in self.param_groups:
            for p in group["params"]:
                if set_to_none:
                    p.grad = None
                elif p.grad is not None:
                    p.grad = array_module(p.data).zeros_like(p.data)

    def step(self, closure=None):
        """Update every parameter that has a gradient. ``closure`` (optional) re-evaluates the
        model and returns the loss, which ``step`` returns."""
        loss = None
        if closure is not None:
            with enable_grad():
                loss = closure()
        with no_grad():
            self._flat.begin()
            for group in self.param_groups:
                on_device = []
                for p in group["params"]:
                    if p.grad is None:
                        if p in self.state:
                            _follow(self.state[p], p.data)
                        continue
                    grad = self._grad_of(p)
                    if grad.shape != p.data.shape:
                        raise ValueError(f"{self._name}.step: gradient shape {grad.shape} does "
                                         f"not match parameter shape {p.data.shape}")
                    state = self.state.setdefault(p, {})
                    if state:
                        _follow(state, p.data)
                    if self.elementwise_update and type(p.data) is not np.ndarray:
                        on_device.append((p, grad, state))  # updated together below
                        continue
                    self._update(p.data, grad, state, group)
                    constraint = getattr(p, "constraint", None)
                    if constraint is not None:
                        constraint(p.data)
                if on_device:
                    self._flat.run(self, group, on_device)
            self._flat.end()
        return loss

    def _grad_of(self, p):
        """``p.grad`` in ``p.data``'s dtype, on its device; a gradient on another device is an error."""
        data, grad = p.data, p.grad
        if type(data) is np.ndarray:
            if type(grad) is not np.ndarray and is_device_array(grad):
                raise RuntimeError(self._devices_differ(data, grad))
            return np.asarray(grad, dtype=data.dtype)
        if not is_device_array(grad):
            raise RuntimeError(self._devices_differ(data, grad))
        return grad if grad.dtype == data.dtype else grad.astype(data.dtype)

    def _devices_differ(self, data, grad) -> str:
        return (f"{self._name}.step: a parameter of shape {tuple(data.shape)} is on {device_of(data)} but its "
                f"gradient is on {device_of(grad)}; keep both on one device (model.to(device) moves both)")

    def _update(self, data: np.ndarray, grad: np.ndarray, state: dict, group: dict) -> None:
        """Update ``data`` in place from ``grad`` (never modify ``grad``: it is ``p.grad``); ``data``,
        ``grad`` and the state arrays are on one device (NumPy arrays, or device arrays). With
        ``elementwise_update``, on a device they may be flat concatenations of several parameters'."""
        raise NotImplementedError

    # -- checkpoints ------------------------------------------------------------------------
    def _ordered_params(self) -> list:
        return [p for g in self.param_groups for p in g["params"]]

    def state_dict(self) -> dict:
        """``{"state": {index: {name: value}}, "param_groups": [{hp..., "params": [index...]}]}``.

        Plain data only; arrays are copies, so later steps do not change a saved state dict."""
        index = {id(p): i for i, p in enumerate(self._ordered_params())}
        groups = []
        for g in self.param_groups:
            saved = {k: _plain(v) for k, v in g.items() if k != "params"}
            saved["params"] = [index[id(p)] for p in g["params"]]
            groups.append(saved)
        state = {index[id(p)]: _plain(s) for p, s in self.state.items() if id(p) in index}
        return {"state": dict(sorted(state.items())), "param_groups": groups}

    @classmethod
    def state_problems(cls, entry: dict, shape=None) -> list:
        """``(name, expected, found)`` for every value of one parameter's saved state ``entry`` that
        ``state_spec`` refuses (``shape``: the parameter's, when known), and every required name missing."""
        problems = []
        spec = cls.state_spec
        for key in cls.required_state:
            if key not in entry:
                problems.append((key, STATE_KINDS[spec[key]], "nothing"))
        for key, value in entry.items():
            if spec is not None and key not in spec:
                problems.append((key, f"one of the state names of {cls.__name__}: {sorted(spec)}", repr(key)))
                continue
            kind = None if spec is None else spec[key]
            found = _state_value_problem(kind, value, shape)
            if found is not None:
                problems.append((key, STATE_KINDS.get(kind, "a finite number or a numeric array"), found))
        return problems

    def load_state_dict(self, state_dict: dict) -> None:
        """Restore hyperparameters and per-parameter state saved by ``state_dict()``.

        Checks first (number of groups, parameters per group, hyperparameter names and values, state
        indices, every state value against ``state_spec``: kind, shape, finite, sign) and raises one
        ``ValueError`` listing every difference; nothing is changed unless all checks pass. Arrays are
        copied, cast to the parameter's dtype and put on the parameter's device.
        """
        name = f"{self._name}.load_state_dict"
        if not isinstance(state_dict, dict) or not {"state", "param_groups"} <= set(state_dict):
            raise ValueError(f"{name}: expected a dict with keys 'state' and 'param_groups' (from "
                             f"Optimizer.state_dict()), got {type(state_dict).__name__}"
                             + (f" with keys {sorted(map(str, state_dict))}"
                                if isinstance(state_dict, dict) else ""))
        saved_groups, saved_state = state_dict["param_groups"], state_dict["state"]
        if not isinstance(saved_groups, (list, tuple)) or not all(isinstance(g, dict) for g in saved_groups):
            raise ValueError(f"{name}: param_groups must be a list of dicts (one per parameter group), got "
                             f"{type(saved_groups).__name__}")
        if not isinstance(saved_state, dict) or not all(isinstance(e, dict) for e in saved_state.values()):
            raise ValueError(f"{name}: state must be a dict of parameter index -> dict of state values, got "
                             f"{type(saved_state).__name__}")
        if len(saved_groups) != len(self.param_groups):
            raise ValueError(f"{name}: the state dict has {len(saved_groups)} parameter group(s), "
                             f"this optimizer has {len(self.param_groups)}")
        problems, by_index = [], {}
        for gi, (saved, group) in enumerate(zip(saved_groups, self.param_groups)):
            indices = saved.get("params", [])
            if isinstance(indices, np.ndarray) and indices.ndim == 1 and indices.dtype.kind in "iu":
                indices = indices.tolist()  # as an HDF5 reader gives it back
            if not isinstance(indices, (list, tuple)) or not all(
                    isinstance(i, (numbers.Integral, np.integer)) and not isinstance(i, bool) and i >= 0
                    for i in indices):
                problems.append(f"group {gi}: params must be a list of parameter indices >= 0, got "
                                f"{indices!r}"[:300])
                continue
            indices = [int(i) for i in indices]
            if len(indices) != len(group["params"]):
                problems.append(f"group {gi}: {len(indices)} parameter(s) saved, "
                                f"{len(group['params'])} in this optimizer")
            missing = sorted(set(self.defaults) - set(saved))
            if missing:
                problems.append(f"group {gi}: hyperparameter(s) {missing} missing (state dict of "
                                f"another optimizer type?)")
            for i, p in zip(indices, group["params"]):
                if i in by_index:
                    problems.append(f"group {gi}: parameter index {i} listed twice")
                by_index[i] = p
        new_state = {}
        for key, entry in saved_state.items():
            try:
                i = int(key)
            except (TypeError, ValueError):
                problems.append(f"state key {key!r}: expected a parameter index")
                continue
            if i not in by_index:
                problems.append(f"state for parameter index {i}, but the groups list indices "
                                f"{sorted(by_index)[:20]}")
                continue
            p = by_index[i]
            entry = {k: to_host(v) if is_device_array(v) else v for k, v in entry.items()}
            misshaped = {k for k, v in entry.items()
                         if isinstance(v, np.ndarray) and v.ndim and v.shape != p.data.shape}
            for k in sorted(misshaped):
                problems.append(f"state[{i}][{k!r}]: shape {entry[k].shape} saved, the "
                                f"parameter has shape {p.data.shape}")
            for k, expected, found in self.state_problems(entry, p.data.shape):
                if k not in misshaped:
                    problems.append(f"state[{i}][{k!r}]: expected {expected}, found {found}")
            restored = {}
            for k, v in entry.items():
                if isinstance(v, np.ndarray) and v.ndim or p.data.ndim == 0 and (
                        isinstance(v, (float, np.floating)) or isinstance(v, np.ndarray) and v.dtype.kind == "f"):
                    restored[k] = np.array(v, dtype=p.data.dtype, copy=True)
                    if type(p.data) is not np.ndarray and is_device_array(p.data):
                        restored[k] = to_device(restored[k], "cuda")
                else:
                    restored[k] = _plain(v)  # "step" and other scalars
            new_state[p] = restored
        new_groups = []
        for gi, (saved, group) in enumerate(zip(saved_groups, self.param_groups)):
            new = {k: _plain(v) for k, v in saved.items() if k != "params"}
            for k, v in new.items():
                if isinstance(group.get(k), tuple) and isinstance(v, list):
                    new[k] = tuple(v)
            new["params"] = group["params"]
            try:
                self._check_group(new)  # raises before anything is changed
            except (TypeError, ValueError, KeyError) as e:
                problems.append(f"group {gi}: {e}")
            new_groups.append(new)
        if problems:
            raise ValueError(f"{name}: the state dict does not match this optimizer:\n  "
                             + "\n  ".join(problems))
        for group, new in zip(self.param_groups, new_groups):
            group.clear()
            group.update(new)
        self.state = new_state
        self._flat = FlatUpdates()  # the kept flat state arrays belong to the state replaced

    def __repr__(self):
        lines = [f"{self._name} ("]
        for i, g in enumerate(self.param_groups):
            hp = ", ".join(f"{k}={v!r}" for k, v in g.items() if k != "params")
            lines.append(f"  group {i}: {len(g['params'])} params, {hp}")
        return "\n".join(lines) + "\n)"
