"""The training state of checkpoints: ``load_training_state`` and ``TrainingState.restore``.

    state = bitnet.load_training_state("ckpt.h5")    # optimizer state, epoch, RNG and schedule state
    opt = bitnet.optim.Adam(model.parameters(), lr=1e-3); state.restore(opt, rng, scheduler)

``load_training_state`` checks every field before returning, each failure a ``BitnetFileError``
naming the key:

- ``epoch``: an integer in 0..2^31;
- ``rng``: the state of one of numpy's bit generators (PCG64, PCG64DXSM, Philox, SFC64, MT19937),
  non-negative integers only, accepted as is by a fresh generator of that kind;
- ``scheduler``, ``param_groups``: JSON of plain values (finite numbers, integers within +-2^53),
  ``param_groups`` a list of objects whose ``params`` are distinct indices of the model's parameters;
- the optimizer's state datasets: plain numeric dtypes (no strings, complex, compound, array,
  object or variable-length types), in chunks no larger than themselves (``h5.dataset``), each
  0-d or shaped as one of the model's parameters, together at most ``STATE_FACTOR`` times the
  model's parameter bytes, checksums matching, values finite, and, for bitnet's optimizers, what
  their ``state_spec`` asks (Adam: ``step`` >= 1, ``exp_avg_sq`` >= 0, nothing missing).

``restore`` is all or nothing: the optimizer's, the schedule's and the generator's own
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

H5_ERRORS = (KeyError, OSError, RuntimeError, TypeError, ValueError)
GENERATORS = ("PCG64", "PCG64DXSM", "Philox", "SFC64", "MT19937")
OPTIMIZERS = ("SGD", "Adam", "AdamW", "Bop")   # bitnet's optimizers whose state is checked by name
MAX_EPOCH = 1 << 31
MAX_JSON_INT = 1 << 53
MAX_STATE_NAMES = 8       # state entries per parameter (Adam has 4)
STATE_FACTOR = 4          # optimizer state bytes <= this x the model's parameter bytes (+ 1 MiB)
RESTORE_ERRORS = (ValueError, TypeError, KeyError, IndexError, OverflowError, AttributeError, ZeroDivisionError)


@dataclass
class TrainingState:
    """What a checkpoint holds besides the model: ``optimizer`` (a state dict for
    ``Optimizer.load_state_dict``, or None), ``optimizer_class``, ``epoch`` (or None), ``rng`` (a
    bit-generator state for ``np.random.Generator``, or None), ``scheduler`` (a schedule's state, or
    None) and ``path`` (the file, for error messages)."""
    optimizer: dict | None
    optimizer_class: str | None
    epoch: int | None
    rng: dict | None
    scheduler: dict | None = None
    path: str | None = None

    def restore(self, optimizer=None, rng=None, scheduler=None):
        """Load the optimizer state into ``optimizer``, the RNG state into ``rng`` (a Generator) and the
        schedule's state into ``scheduler`` (where given); all or nothing (module docstring).
        ``ValueError`` when a part asked for is not in the checkpoint or is of another kind,
        ``BitnetFileError`` when the checkpoint's state does not fit the objects."""
        if optimizer is not None:
            if self.optimizer is None:
                raise ValueError("this checkpoint has no optimizer state")
            if self.optimizer_class != type(optimizer).__name__:
                raise ValueError(f"the checkpoint's optimizer is a {self.optimizer_class}, got a "
                                 f"{type(optimizer).__name__}")
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
        backups = []  # (undo, ...) in the order applied
        parts = [("training/optimizer", optimizer, lambda: optimizer.load_state_dict(self.optimizer),
                  lambda: optimizer.state_dict(), lambda old: optimizer.load_state_dict(old)),
                 ("training attribute 'scheduler'", scheduler, lambda: scheduler.load_state_dict(self.scheduler),
                  lambda: scheduler.state_dict(), lambda old: scheduler.load_state_dict(old)),
                 ("training attribute 'rng'", rng, lambda: setattr(rng.bit_generator, "state", self.rng),
                  lambda: rng.bit_generator.state, lambda old: setattr(rng.bit_generator, "state", old))]
        for key, target, apply, save, undo in parts:
            if target is None:
                continue
            old = save()
            try:
                apply()
            except RESTORE_ERRORS as e:
                undo(old)  # a refusal changes nothing, but a state setter might have half-applied
                for undo_done, old_done in reversed(backups):
                    undo_done(old_done)
                raise BitnetFileError(self.path or "<checkpoint>", key, f"a state that fits the "
                                      f"{type(target).__name__} given", f"{type(e).__name__}: {e}",
                                      "the checkpoint belongs to another model, optimizer or schedule") from None
            backups.append((undo, old))


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


def _check_rng(path, value):
    key = "training attribute 'rng'"
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


def _check_scheduler(path, value):
    key = "training attribute 'scheduler'"
    if not isinstance(value, dict) or not isinstance(value.get("type"), str):
        raise BitnetFileError(path, key, "an object with the schedule's 'type' (LRScheduler.state_dict())", short(value))
    _plain_json(path, key, value)
    return value


def _check_groups(path, groups, n_params):
    key = "training/optimizer attribute 'param_groups'"
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


def _read_state(og, path, listed, shapes, param_bytes, opt_class):
    """The optimizer's per-parameter state, every dataset checked (module docstring)."""
    from bitnet import optim
    spec_class = getattr(optim, opt_class) if opt_class in OPTIMIZERS else None
    st = h5.group(og, "state", path, "training/optimizer/state")
    budget = STATE_FACTOR * param_bytes + (1 << 20)
    found = {}
    for index in (st or {}):
        where = f"training/optimizer/state/{index}"
        if not index.isdigit() or int(index) not in listed:
            raise BitnetFileError(path, where, "the index of a parameter in 'param_groups'", repr(index))
        entries = h5.group(st, index, path, where)
        if entries is None or len(entries) > MAX_STATE_NAMES:
            raise BitnetFileError(path, where, f"a group of at most {MAX_STATE_NAMES} datasets",
                                  "nothing" if entries is None else f"{len(entries)} members")
        found[int(index)] = {}
        for name in entries:
            key = f"{where}/{name}"
            ds = h5.dataset(h5.member(entries, name, path, key), path, key)
            if not h5.plain_number_dtype(ds.dtype):
                raise BitnetFileError(path, key, "plain numbers (bool, int or float of at most 8 bytes)",
                                      f"dtype {ds.dtype}")
            if ds.shape != () and ds.shape not in shapes:
                raise BitnetFileError(path, key, "a scalar or an array shaped as one of the model's parameters",
                                      f"shape {ds.shape}")
            budget -= int(ds.size) * ds.dtype.itemsize
            if budget < 0:
                raise BitnetFileError(path, key, f"optimizer state of at most {STATE_FACTOR} x the model's "
                                      f"{param_bytes} parameter bytes (+ 1 MiB)", "more")
            found[int(index)][name] = ds
    state = {}
    for index, entries in found.items():
        state[index] = {}
        for name, ds in entries.items():
            data = h5.read_data(ds, path, f"training/optimizer/state/{index}/{name}", bound=None)
            state[index][name] = data.item() if data.ndim == 0 else data
        if spec_class is not None:
            problems = spec_class.state_problems(state[index])
            if problems:
                name, expected, got = problems[0]
                raise BitnetFileError(path, f"training/optimizer/state/{index}/{name}", expected, got,
                                      f"{opt_class}'s state")
        else:
            for name, value in state[index].items():
                if isinstance(value, numbers.Number) and not np.isfinite(value):
                    raise BitnetFileError(path, f"training/optimizer/state/{index}/{name}", "a finite number",
                                          short(value))
    return state


def load_training_state(path, max_bytes=None) -> TrainingState:
    """The optimizer state, epoch, RNG and schedule state saved with a checkpoint (each None if absent),
    every field checked (module docstring); ``max_bytes`` as for ``bitnet.load`` (the model is built,
    with zero weights, to know its parameters' shapes)."""
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
            opt = opt_class = None
            og = h5.group(train, "optimizer", path, "training/optimizer")
            if og is not None:
                opt_class = h5.attr(og, path, "class", "string")
                model = build(check_config(config, path, version), path, limits.allowed_bytes(path, kind, max_bytes))
                params = list(model.parameters())
                groups = _check_groups(path, h5.json_attr(og, path, "param_groups"), len(params))
                listed = {i for g in groups for i in g["params"]}
                shapes = {p.data.shape for p in params}
                param_bytes = sum(p.data.nbytes for p in params)
                del model, params
                state = _read_state(og, path, listed, shapes, param_bytes, opt_class)
                opt = {"state": state, "param_groups": groups}
        except BitnetFileError:
            raise
        except H5_ERRORS as e:
            raise BitnetFileError(path, "training", "a readable training state", f"{type(e).__name__}: {e}") from None
    return TrainingState(opt, opt_class, epoch, rng, sched, str(path))
