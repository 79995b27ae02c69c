"""The training state of checkpoints: ``load_training_state`` and ``TrainingState.restore``.

    state = bitnet.load_training_state("ckpt.h5")    # optimizer state, epoch, RNG and schedule state
    opt = bitnet.optim.Adam(model.parameters(), lr=1e-3); state.restore(opt, rng, scheduler)

The optimizer is one optimizer (``training/optimizer``) or a ``MultiOptimizer``'s inner optimizers
(``training/optimizers/0``, ``1``, ..., each laid out as a single optimizer; ``optimizer_classes``
names them). ``module_rngs`` holds the states of the generators the model's modules own (every
``Dropout``'s ``rng``): ``bitnet.load`` gives them back to the model it builds, ``restore(model=...)``
to a model of yours.

``load_training_state`` checks every field before returning, each failure a ``BitnetFileError``
naming the key:

- ``epoch``: an integer in 0..2^31;
- ``rng``: the state of one of numpy's bit generators (PCG64, PCG64DXSM, Philox, SFC64, MT19937),
  non-negative integers only, accepted as is by a fresh generator of that kind;
- ``scheduler``, ``param_groups``: JSON of plain values (finite numbers, integers within +-2^53),
  ``param_groups`` a list of objects whose ``params`` are distinct indices of the model's parameters;
- ``module_rngs``: an object ``{"generators": [bit-generator states], "attributes": {"drop.rng": index}}``
  naming exactly the generator attributes of the model the file builds, each state checked as ``rng``;
- ``optimizers`` (a MultiOptimizer): groups ``0`` .. ``n-1``, at most one per model parameter, their
  ``params`` together at most the model's parameters, their state within one budget;
- the optimizer's state datasets: plain numeric dtypes (no strings, complex, compound, array,
  object or variable-length types), in chunks no larger than themselves (``h5.dataset``), each
  0-d or shaped as one of the model's parameters, together at most ``STATE_FACTOR`` times the
  model's parameter bytes, checksums matching, values finite, and, for bitnet's optimizers, what
  their ``state_spec`` asks (Adam: ``step`` >= 1, ``exp_avg_sq`` >= 0, nothing missing).

``restore`` is all or nothing: the optimizer's, the schedule's and the generators' own
``load_state_dict`` / state setter check the state against the objects (shapes, hyperparameter
ranges); if any refuses, the ones already restored are put back and a ``BitnetFileError`` names
the part.
"""
from __future__ import annotations

import math
import numbers
from dataclasses import dataclass

import numpy as np

from bitnet.io import h5, limits
from bitnet.io.h5 import BitnetFileError, short
from bitnet.io.generators import RESTORE_ERRORS, _check_rng, check_module_rngs, set_module_generators

H5_ERRORS = (KeyError, OSError, RuntimeError, TypeError, ValueError)
OPTIMIZERS = ("SGD", "Adam", "AdamW", "Bop")   # bitnet's optimizers whose state is checked by name
MAX_EPOCH = 1 << 31
MAX_JSON_INT = 1 << 53
MAX_STATE_NAMES = 8       # state entries per parameter (Adam has 4)
STATE_FACTOR = 4          # optimizer state bytes <= this x the model's parameter bytes (+ 1 MiB)


@dataclass
class TrainingState:
    """What a checkpoint holds besides the model: ``optimizer`` (a state dict for
    ``Optimizer.load_state_dict``, or None; a MultiOptimizer's is ``{"optimizers": [...]}``),
    ``optimizer_class``, ``epoch`` (or None), ``rng`` (a bit-generator state for
    ``np.random.Generator``, or None), ``scheduler`` (a schedule's state, or None), ``path`` (the
    file, for error messages), ``optimizer_classes`` (a MultiOptimizer's inner classes, else None) and
    ``module_rngs`` (the states of the model's own generators, every Dropout's; None in files written
    before bitnet saved them)."""
    optimizer: dict | None
    optimizer_class: str | None
    epoch: int | None
    rng: dict | None
    scheduler: dict | None = None
    path: str | None = None
    optimizer_classes: list | None = None
    module_rngs: dict | None = None

    def restore(self, optimizer=None, rng=None, scheduler=None, model=None):
        """Load the optimizer state into ``optimizer`` (an optimizer, or a MultiOptimizer of the same
        inner classes), the RNG state into ``rng`` (a Generator), the schedule's state into
        ``scheduler`` and the generator states of the model's modules (every Dropout's) into ``model``
        (where given; a model from ``bitnet.load`` has them already; a checkpoint without them, from a
        model without generators or an older bitnet, leaves the model's as they are); all or nothing
        (module docstring). ``ValueError`` when a part asked for is not in the checkpoint or is of another
        kind, ``BitnetFileError`` when the checkpoint's state does not fit the objects."""
        if optimizer is not None:
            if self.optimizer is None:
                raise ValueError("this checkpoint has no optimizer state")
            saved, given = _optimizer_kind(self.optimizer_class, self.optimizer_classes), _optimizer_kind(
                type(optimizer).__name__, _inner_classes(optimizer))
            if saved != given:
                raise ValueError(f"the checkpoint's optimizer is a {saved}, got a {given}")
        if rng is not None:
            if self.rng is None:
                raise ValueError("this checkpoint has no RNG state")
            if not isinstance(rng, np.random.Generator):
                raise TypeError(f"rng must be a numpy.random.Generator, got {type(rng).__name__}")
            if type(rng.bit_generator).__name__ != self.rng["bit_generator"]:
                raise ValueError(f"the checkpoint's RNG is a {self.rng['bit_generator']}, got a generator of a "
                                 f"{type(rng.bit_generator).__name__}")
        if scheduler is not None and self.scheduler is None:
            raise ValueError("this checkpoint has no learning-rate schedule state")

        def state_part(obj, saved):  # apply a state dict; returns what puts the old one back
            old = obj.state_dict()
            try:
                obj.load_state_dict(saved)
            except RESTORE_ERRORS:
                obj.load_state_dict(old)  # a refusal changes nothing, but a setter might have half-applied
                raise
            return lambda: obj.load_state_dict(old)

        def rng_part():
            old = rng.bit_generator.state
            try:
                rng.bit_generator.state = self.rng
            except RESTORE_ERRORS:
                rng.bit_generator.state = old
                raise
            return lambda: setattr(rng.bit_generator, "state", old)

        optimizer_key = "training/optimizers" if self.optimizer_classes is not None else "training/optimizer"
        parts = [(optimizer_key, optimizer, lambda: state_part(optimizer, self.optimizer)),
                 ("training attribute 'scheduler'", scheduler, lambda: state_part(scheduler, self.scheduler)),
                 ("training attribute 'rng'", rng, rng_part),
                 ("training attribute 'module_rngs'", None if self.module_rngs is None else model,
                  lambda: set_module_generators(model, self.module_rngs))]
        undos = []  # in the order applied
        for key, target, apply in parts:
            if target is None:
                continue
            try:
                undos.append(apply())
            except RESTORE_ERRORS as e:
                for undo in reversed(undos):
                    undo()
                raise BitnetFileError(self.path or "<checkpoint>", key, f"a state that fits the "
                                      f"{type(target).__name__} given", f"{type(e).__name__}: {e}",
                                      "the checkpoint belongs to another model, optimizer or schedule") from None


def _inner_classes(optimizer):
    inner = getattr(optimizer, "optimizers", None)
    return [type(o).__name__ for o in inner] if isinstance(inner, (list, tuple)) else None


def _optimizer_kind(name, inner) -> str:
    """``"Adam"``, or ``"MultiOptimizer of Bop, Adam"``: what an optimizer is, for comparing and messages."""
    return name if inner is None else f"{name} of {', '.join(inner)}"


def _plain_json(path, key, value, depth=0):
    """JSON of plain values: finite numbers, integers within +-MAX_JSON_INT, strings, booleans, None,
    lists and objects of them nested at most 4 deep."""
    if depth > 4:
        raise BitnetFileError(path, key, "values nested at most 4 deep", short(value))
    if isinstance(value, dict):
        for k, v in value.items():
            _plain_json(path, f"{key}.{k}", v, depth + 1)
    elif isinstance(value, list):
        for i, v in enumerate(value):
            _plain_json(path, f"{key}[{i}]", v, depth + 1)
    elif isinstance(value, bool) or value is None or isinstance(value, str):
        return
    elif isinstance(value, int):
        if abs(value) > MAX_JSON_INT:
            raise BitnetFileError(path, key, f"an integer within +-2^53", short(value))
    elif not isinstance(value, float) or not math.isfinite(value):
        raise BitnetFileError(path, key, "a finite number", short(value))


def _check_scheduler(path, value):
    key = "training attribute 'scheduler'"
    if not isinstance(value, dict) or not isinstance(value.get("type"), str):
        raise BitnetFileError(path, key, "an object with the schedule's 'type' (LRScheduler.state_dict())", short(value))
    _plain_json(path, key, value)
    return value


def _check_groups(path, groups, n_params, where="training/optimizer"):
    key = f"{where} attribute 'param_groups'"
    if not isinstance(groups, list) or not all(isinstance(g, dict) for g in groups):
        raise BitnetFileError(path, key, "a list of parameter groups (objects)", short(groups))
    seen = set()
    for gi, group in enumerate(groups):
        where = f"{key}[{gi}]"
        params = group.get("params")
        if not isinstance(params, list) or not all(isinstance(i, int) and not isinstance(i, bool) for i in params):
            raise BitnetFileError(path, f"{where}.params", "a list of parameter indices", short(params))
        for i in params:
            if not 0 <= i < n_params or i in seen:
                raise BitnetFileError(path, f"{where}.params", f"distinct indices in 0..{n_params - 1} (the model "
                                      f"has {n_params} parameters)", short(i))
            seen.add(i)
        for name, v in group.items():
            if name != "params":
                _plain_json(path, f"{where}.{name}", v, 1)
    return groups


def _read_state(og, path, where, listed, shapes, budget, opt_class):
    """The optimizer's per-parameter state, every dataset checked (module docstring); ``budget``: a
    one-element list holding the state bytes still allowed (shared by a MultiOptimizer's optimizers)."""
    from bitnet import optim
    spec_class = getattr(optim, opt_class) if opt_class in OPTIMIZERS else None
    st = h5.group(og, "state", path, f"{where}/state")
    found = {}
    for index in (st or {}):
        key_i = f"{where}/state/{index}"
        if not index.isdigit() or int(index) not in listed:
            raise BitnetFileError(path, key_i, "the index of a parameter in 'param_groups'", repr(index))
        entries = h5.group(st, index, path, key_i)
        if entries is None or len(entries) > MAX_STATE_NAMES:
            raise BitnetFileError(path, key_i, f"a group of at most {MAX_STATE_NAMES} datasets",
                                  "nothing" if entries is None else f"{len(entries)} members")
        found[int(index)] = {}
        for name in entries:
            key = f"{key_i}/{name}"
            ds = h5.dataset(h5.member(entries, name, path, key), path, key)
            if not h5.plain_number_dtype(ds.dtype):
                raise BitnetFileError(path, key, "plain numbers (bool, int or float of at most 8 bytes)",
                                      f"dtype {ds.dtype}")
            if ds.shape != () and ds.shape not in shapes:
                raise BitnetFileError(path, key, "a scalar or an array shaped as one of the model's parameters",
                                      f"shape {ds.shape}")
            budget[0] -= int(ds.size) * ds.dtype.itemsize
            if budget[0] < 0:
                raise BitnetFileError(path, key, f"optimizer state of at most {STATE_FACTOR} x the model's "
                                      f"{budget[1]} parameter bytes (+ 1 MiB)", "more")
            found[int(index)][name] = ds
    state = {}
    for index, entries in found.items():
        state[index] = {}
        for name, ds in entries.items():
            data = h5.read_data(ds, path, f"{where}/state/{index}/{name}", bound=None)
            state[index][name] = data.item() if data.ndim == 0 else data
        if spec_class is not None:
            problems = spec_class.state_problems(state[index])
            if problems:
                name, expected, got = problems[0]
                raise BitnetFileError(path, f"{where}/state/{index}/{name}", expected, got, f"{opt_class}'s state")
        else:
            for name, value in state[index].items():
                if isinstance(value, numbers.Number) and not np.isfinite(value):
                    raise BitnetFileError(path, f"{where}/state/{index}/{name}", "a finite number", short(value))
    return state


def _read_optimizer(og, path, where, params, budget, n_params=None):
    """``(class name, state dict)`` of one optimizer's group ``where`` (``training/optimizer``, or
    ``training/optimizers/I``), every field checked; ``n_params``: the most parameters its groups may list."""
    opt_class = _class_attr(og, path, where)
    groups = _check_groups(path, h5.json_attr(og, path, "param_groups"), len(params) if n_params is None
                           else n_params, where)
    listed = {i for g in groups for i in g["params"]}
    if not listed:  # an optimizer is built over at least one parameter
        raise BitnetFileError(path, f"{where} attribute 'param_groups'", "at least one parameter", "none")
    state = _read_state(og, path, where, listed, {p.data.shape for p in params}, budget, opt_class)
    return opt_class, {"state": state, "param_groups": groups}


def _class_attr(group, path, where) -> str:
    if "class" not in group.attrs:
        raise BitnetFileError(path, f"{where} attribute 'class'", "the optimizer's class name", "nothing")
    return h5.attr(group, path, "class", "string")


def _read_optimizers(mg, path, params, budget):
    """A MultiOptimizer's ``training/optimizers``: ``(class, [inner classes], {"optimizers": [sd, ...]})``.
    Its groups ``0`` .. ``n-1``, at most one per model parameter; each inner optimizer numbers its own
    parameters from 0, and all of them together list at most the model's parameters."""
    where = "training/optimizers"
    opt_class = _class_attr(mg, path, where)
    n = len(mg)
    if not 1 <= n <= len(params) or set(mg) != {str(i) for i in range(n)}:
        raise BitnetFileError(path, where, f"groups '0'..'n-1', one per inner optimizer, n in 1..{len(params)} (the "
                              "model's parameters)", f"{n} members" if n > len(params) else short(sorted(mg)))
    classes, states, left = [], [], len(params)
    for i in range(n):
        inner = h5.group(mg, str(i), path, f"{where}/{i}")
        if inner is None:
            raise BitnetFileError(path, f"{where}/{i}", "a group", "another object")
        name, sd = _read_optimizer(inner, path, f"{where}/{i}", params, budget, n_params=left)
        left -= sum(len(g["params"]) for g in sd["param_groups"])
        classes.append(name)
        states.append(sd)
    return opt_class, classes, {"optimizers": states}


def load_training_state(path, max_bytes=None) -> TrainingState:
    """The optimizer state, epoch, RNG and schedule state and the states of the model's own generators
    saved with a checkpoint (each None if absent), every field checked (module docstring); ``max_bytes``
    as for ``bitnet.load`` (the model is built, with zero weights, to know its parameters' shapes)."""
    from bitnet.io.config import build, check_config
    with h5.open_file(path) as f:
        try:
            version, kind, config = h5.read_header(f, path)
            train = h5.group(f, "training", path, "training")
            if train is None:
                return TrainingState(None, None, None, None, None, str(path))
            epoch = h5.attr(train, path, "epoch", "int") if "epoch" in train.attrs else None
            if epoch is not None and not 0 <= epoch <= MAX_EPOCH:
                raise BitnetFileError(path, "training attribute 'epoch'", f"an integer in 0..{MAX_EPOCH}", str(epoch))
            rng = _check_rng(path, h5.json_attr(train, path, "rng")) if "rng" in train.attrs else None
            sched = _check_scheduler(path, h5.json_attr(train, path, "scheduler")) if "scheduler" in train.attrs \
                else None
            opt = opt_class = classes = module_rngs = None
            og = h5.group(train, "optimizer", path, "training/optimizer")
            mg = h5.group(train, "optimizers", path, "training/optimizers")
            if og is not None and mg is not None:
                raise BitnetFileError(path, "training/optimizers", "one optimizer's state: 'optimizer' or "
                                      "'optimizers' (a MultiOptimizer's)", "both")
            if og is not None or mg is not None or "module_rngs" in train.attrs:
                model = build(check_config(config, path, version), path, limits.allowed_bytes(path, kind, max_bytes))
                if "module_rngs" in train.attrs:
                    module_rngs = check_module_rngs(path, h5.json_attr(train, path, "module_rngs"), model)
                params = list(model.parameters())
                param_bytes = sum(p.data.nbytes for p in params)
                budget = [STATE_FACTOR * param_bytes + (1 << 20), param_bytes]
                del model
                if og is not None:
                    opt_class, opt = _read_optimizer(og, path, "training/optimizer", params, budget)
                elif mg is not None:
                    opt_class, classes, opt = _read_optimizers(mg, path, params, budget)
                del params
        except BitnetFileError:
            raise
        except H5_ERRORS as e:
            raise BitnetFileError(path, "training", "a readable training state", f"{type(e).__name__}: {e}") from None
    return TrainingState(opt, opt_class, epoch, rng, sched, str(path), classes, module_rngs)
