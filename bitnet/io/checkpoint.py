"""Model files and training checkpoints: ``save`` / ``load`` and the training state of checkpoints.

    bitnet.save(model, "ckpt.h5", optimizer=opt, epoch=3, rng=rng)
    model = bitnet.load("ckpt.h5")
    state = bitnet.load_training_state("ckpt.h5")    # optimizer state, epoch, RNG state
    opt = bitnet.optim.Adam(model.parameters(), lr=1e-3); state.restore(opt, rng)

A file holds the model's architecture (every module's class and config, ``bitnet.io.config``) and
every parameter and buffer as a named dataset; no pickle, no eval, no import of names taken from the
file. Any model whose classes are registered (``bitnet.nn.register``; bitnet's layers and the zoo
are) can be saved; ``save`` checks first that its architecture builds again. Every dataset's dtype
and shape is compared with the model the config builds before its data is read, float weights must
be finite, and every problem raises ``BitnetFileError`` (``bitnet.io.h5``).
"""
from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np

from bitnet.io import h5
from bitnet.io.config import build, check_config, model_config, verify_rebuild, zoo_input_shape
from bitnet.io.h5 import BitnetFileError

# h5py's and HDF5's errors on a damaged structure, converted to BitnetFileError
H5_ERRORS = (KeyError, OSError, RuntimeError, TypeError, ValueError)


def save(model, path, optimizer=None, epoch=None, rng=None, scheduler=None, input_shape=None,
         trained_on=None) -> None:
    """Write ``model`` (its architecture and every parameter and buffer) to the HDF5 file ``path``; with
    ``optimizer`` / ``epoch`` / ``rng`` (a ``np.random.Generator``) / ``scheduler`` (a learning-rate
    schedule) a training checkpoint. ``input_shape`` (C, H, W), recorded for ``bitnet summary`` and
    ``predict``, is known already for zoo models. ``trained_on``: a JSON-able dict saying what the
    model was trained on (``bitnet train`` records the dataset, input shape, classes and its
    options), returned by ``describe``."""
    if epoch is not None and (not isinstance(epoch, (int, np.integer)) or epoch < 0):
        raise ValueError(f"save: epoch must be a non-negative int, got {epoch!r}")
    if rng is not None and not isinstance(rng, np.random.Generator):
        raise TypeError(f"save: rng must be a numpy.random.Generator, got {type(rng).__name__}")
    config = model_config(model, input_shape)
    verify_rebuild(model)
    state = model.state_dict()
    opt_state = optimizer.state_dict() if optimizer is not None else None

    record = None if trained_on is None else json.dumps(trained_on, sort_keys=True, allow_nan=False)

    def write(f):
        h5.write_header(f, "checkpoint", config)
        if record is not None:
            h5.set_text(f, "trained_on", record)
        h5.write_weights(f, state)
        if opt_state is not None or epoch is not None or rng is not None or scheduler is not None:
            train = f.create_group("training")
            if scheduler is not None:
                h5.set_text(train, "scheduler", json.dumps(scheduler.state_dict()))
            if epoch is not None:
                train.attrs["epoch"] = int(epoch)
            if rng is not None:
                h5.set_text(train, "rng", json.dumps(rng.bit_generator.state))
            if opt_state is not None:
                og = train.create_group("optimizer")
                h5.set_text(og, "class", type(optimizer).__name__)
                h5.set_text(og, "param_groups", json.dumps(opt_state["param_groups"]))
                for index, entries in opt_state["state"].items():
                    g = og.create_group(f"state/{int(index)}")
                    for name, value in entries.items():
                        h5.create_dataset(g, name, np.asarray(value))
    h5.atomic_write(path, write)


def describe(path) -> dict:
    """What a bitnet file is, from its header alone (nothing built): ``{"kind": "checkpoint" |
    "packed" | "state_dict", "zoo": (name, kwargs) or None, "input_shape": list or None,
    "architecture": NODE or None, "trained_on": dict or None}`` (``trained_on`` as given to ``save``,
    absent from older files)."""
    with h5.open_file(path) as f:
        try:
            version, kind, config = h5.read_header(f, path)
            if kind not in ("checkpoint", "packed", "state_dict"):
                raise BitnetFileError(path, "attribute 'kind'", "'checkpoint', 'packed' or 'state_dict'", repr(kind))
            spec = check_config(config, path, version) if kind != "state_dict" else \
                {"architecture": None, "zoo": None, "input_shape": None, "verify": False}
            trained_on = h5.json_attr(f, path, "trained_on") if "trained_on" in f.attrs else None
            if trained_on is not None and not isinstance(trained_on, dict):
                raise BitnetFileError(path, "attribute 'trained_on'", "a JSON object", h5.short(trained_on))
        except BitnetFileError:
            raise
        except H5_ERRORS as e:
            raise BitnetFileError(path, "(file)", "a readable bitnet file", f"{type(e).__name__}: {e}") from None
    if spec["input_shape"] is None and spec["zoo"] is not None:
        spec["input_shape"] = zoo_input_shape({"name": spec["zoo"][0], "kwargs": spec["zoo"][1]})
    return dict(spec, kind=kind, trained_on=trained_on)


def load_architecture(path):
    """The model a checkpoint or packed file describes, built with fresh weights (none are read):
    for inspecting a file's architecture (``bitnet summary``)."""
    with h5.open_file(path) as f:
        try:
            version, kind, config = h5.read_header(f, path)
            if kind not in ("checkpoint", "packed"):
                raise BitnetFileError(path, "attribute 'kind'", "'checkpoint' or 'packed'", repr(kind),
                                      "a weights-only file has no architecture")
            return build(check_config(config, path, version), path, h5.claimed_values(f, path))
        except BitnetFileError:
            raise
        except H5_ERRORS as e:
            raise BitnetFileError(path, "(file)", "a readable bitnet file", f"{type(e).__name__}: {e}") from None


def read_model(f, path, want_kind, hint):
    """``(model, spec)`` of an open file of kind ``want_kind``: header, kind and config checked, the
    model built (not yet loaded)."""
    version, kind, config = h5.read_header(f, path)
    h5.check_kind(path, kind, want_kind, hint)
    spec = check_config(config, path, version)
    return build(spec, path, h5.claimed_values(f, path)), spec


def load(path):
    """The model stored in ``path``, rebuilt from its config with its weights loaded (training state
    aside: ``load_training_state``); see the module docstring for what is checked first."""
    with h5.open_file(path) as f:
        try:
            model, _ = read_model(f, path, "checkpoint",
                                     "a file of bitnet.save; load a packed file with bitnet.load_packed")
            state = h5.read_weights(f, path, model.state_dict())
        except BitnetFileError:
            raise
        except H5_ERRORS as e:
            raise BitnetFileError(path, "(file)", "a readable bitnet model file", f"{type(e).__name__}: {e}") from None
    model.load_state_dict(state)
    return model


@dataclass
class TrainingState:
    """What a checkpoint holds besides the model: ``optimizer`` (a state dict for
    ``Optimizer.load_state_dict``, or None), ``epoch`` (or None), ``rng`` (a bit-generator state
    for ``np.random.Generator``, or None)."""
    optimizer: dict | None
    optimizer_class: str | None
    epoch: int | None
    rng: dict | None
    scheduler: dict | None = None

    def restore(self, optimizer=None, rng=None, scheduler=None):
        """Load the optimizer state into ``optimizer``, the RNG state into ``rng`` and the schedule's
        state into ``scheduler`` (where given)."""
        if optimizer is not None:
            if self.optimizer is None:
                raise ValueError("this checkpoint has no optimizer state")
            if self.optimizer_class != type(optimizer).__name__:
                raise ValueError(f"the checkpoint's optimizer is a {self.optimizer_class}, got a "
                                 f"{type(optimizer).__name__}")
            optimizer.load_state_dict(self.optimizer)
        if rng is not None:
            if self.rng is None:
                raise ValueError("this checkpoint has no RNG state")
            rng.bit_generator.state = self.rng
        if scheduler is not None:
            if self.scheduler is None:
                raise ValueError("this checkpoint has no learning-rate schedule state")
            scheduler.load_state_dict(self.scheduler)


def load_training_state(path) -> TrainingState:
    """The optimizer state, epoch and RNG state saved with a checkpoint (each None if absent). Each
    optimizer state array may hold at most as many elements as the model's largest parameter."""
    with h5.open_file(path) as f:
        try:
            version, kind, config = h5.read_header(f, path)
            train = h5.group(f, "training", path, "training")
            if train is None:
                return TrainingState(None, None, None, None)
            epoch = h5.attr(train, path, "epoch", "int") if "epoch" in train.attrs else None
            rng = h5.json_attr(train, path, "rng") if "rng" in train.attrs else None
            sched = h5.json_attr(train, path, "scheduler") if "scheduler" in train.attrs else None
            opt = opt_class = None
            og = h5.group(train, "optimizer", path, "training/optimizer")
            if og is not None:
                opt_class = h5.attr(og, path, "class", "string")
                groups = h5.json_attr(og, path, "param_groups")
                model = build(check_config(config, path, version), path, h5.claimed_values(f, path))
                largest = max((p.size for p in model.state_dict().values()), default=0)
                state = {}
                st = h5.group(og, "state", path, "training/optimizer/state")
                for index in (st or {}):
                    where = f"training/optimizer/state/{index}"
                    entries = h5.group(st, index, path, where)
                    state[int(index)] = {name: _value(h5.dataset(h5.member(entries, name, path, f"{where}/{name}"),
                                                                 path, f"{where}/{name}", largest,
                                                                 " (the model's largest parameter)")[()])
                                         for name in entries}
                opt = {"state": state, "param_groups": groups}
        except BitnetFileError:
            raise
        except H5_ERRORS as e:
            raise BitnetFileError(path, "training", "a readable training state", f"{type(e).__name__}: {e}") from None
    return TrainingState(opt, opt_class, epoch, rng, sched)


def _value(data):
    """A dataset's content: 0-d arrays as Python scalars (optimizer step counts), others as arrays."""
    data = np.asarray(data)
    return data.item() if data.ndim == 0 else data
