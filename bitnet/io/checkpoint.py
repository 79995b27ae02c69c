"""Model files and training checkpoints: ``save`` / ``load`` and the training state of checkpoints.

    bitnet.save(model, "ckpt.h5", optimizer=opt, epoch=3, rng=rng)
    model = bitnet.load("ckpt.h5")                   # weights, and the Dropout generators' states
    state = bitnet.load_training_state("ckpt.h5")    # optimizer state, epoch, RNG state
    opt = bitnet.optim.Adam(model.parameters(), lr=1e-3); state.restore(opt, rng)

A file holds the model's architecture (every module's class and config, ``bitnet.io.config``) and
every parameter and buffer as a named dataset; no pickle, no eval, no import of names taken from the
file. Any model whose classes are registered (``bitnet.nn.register``; bitnet's layers and the zoo
are) can be saved; ``save`` checks first that its architecture builds again and that every value
will load (finite, within +-2^64). The model a file describes may take at most the bytes the file
earned (``bitnet.io.limits``; ``max_bytes=`` to allow more), every dataset's dtype and shape is
compared with the model the config builds before its data is read, its checksum after, float
weights must be finite and within +-2^64, and every problem raises ``BitnetFileError``
(``bitnet.io.h5``). The training state (``bitnet.io.training_state``): the optimizer's (one optimizer or a
``MultiOptimizer``'s), the schedule's, an RNG's, and the states of the generators the model's modules
own (Dropout's), which ``load`` gives back to the model it builds.
"""
from __future__ import annotations

import json

import numpy as np

from bitnet.io import h5, limits
from bitnet.io.config import build, check_config, model_config, verify_rebuild, wrong_kind_hint, zoo_input_shape
from bitnet.io.h5 import BitnetFileError
from bitnet.io.generators import check_module_rngs, check_storable, module_generators_state, set_module_generators

# h5py's and HDF5's errors on a damaged structure, converted to BitnetFileError
H5_ERRORS = (KeyError, OSError, RuntimeError, TypeError, ValueError)


def save(model, path, optimizer=None, epoch=None, rng=None, scheduler=None, input_shape=None,
         trained_on=None) -> None:
    """Write ``model`` (its architecture and every parameter and buffer) to the HDF5 file ``path``; with
    ``optimizer`` (one optimizer, or a ``MultiOptimizer``) / ``epoch`` / ``rng`` (a ``np.random.Generator``)
    / ``scheduler`` (a learning-rate schedule) a training checkpoint, which also holds the states of the
    generators the model's modules own (every ``Dropout``'s), so that training resumes bit-identically.
    ``input_shape`` (C, H, W), recorded for ``bitnet summary`` and ``predict``, is known already for zoo
    models. ``trained_on``: a JSON-able dict saying what the model was trained on (``bitnet train``
    records the dataset, input shape, classes and its options), returned by ``describe``."""
    config, state, training = _prepare(model, optimizer, epoch, rng, scheduler, input_shape, "save")
    record = None if trained_on is None else json.dumps(trained_on, sort_keys=True, allow_nan=False)

    def write(f):
        h5.write_header(f, "checkpoint", config)
        if record is not None:
            h5.set_text(f, "trained_on", record)
        h5.write_weights(f, state)
        if training is not None:
            train = f.create_group("training")
            for name in ("scheduler", "rng", "module_rngs"):
                if training[name] is not None:
                    h5.set_text(train, name, training[name])
            if epoch is not None:
                train.attrs["epoch"] = int(epoch)
            opt_state = training["optimizer"]
            if opt_state is not None and "optimizers" in opt_state:  # a MultiOptimizer: one group per optimizer
                multi = train.create_group("optimizers")
                h5.set_text(multi, "class", type(optimizer).__name__)
                for i, (inner, inner_state) in enumerate(zip(optimizer.optimizers, opt_state["optimizers"])):
                    _write_optimizer(multi.create_group(str(i)), inner, inner_state)
            elif opt_state is not None:
                _write_optimizer(train.create_group("optimizer"), optimizer, opt_state)
    h5.atomic_write(path, write)


def check_saveable(model, optimizer=None, epoch=None, rng=None, scheduler=None, input_shape=None,
                   owner="save") -> None:
    """Raise what ``save(model, path, optimizer, epoch, rng, scheduler, input_shape)`` would raise
    before writing, writing nothing: an architecture that does not build again, values that would not
    load, an optimizer, schedule or generator a checkpoint cannot hold. For checking before training
    (``ModelCheckpoint`` does, so that a run does not fail after its first epoch)."""
    _prepare(model, optimizer, epoch, rng, scheduler, input_shape, owner)


def _write_optimizer(group, optimizer, opt_state) -> None:
    """One optimizer's state: attributes ``class`` and ``param_groups``, datasets ``state/I/NAME``."""
    h5.set_text(group, "class", type(optimizer).__name__)
    h5.set_text(group, "param_groups", json.dumps(opt_state["param_groups"]))
    for index, entries in opt_state["state"].items():
        g = group.create_group(f"state/{int(index)}")
        for name, value in entries.items():
            h5.create_dataset(g, name, np.asarray(value))


def _prepare(model, optimizer, epoch, rng, scheduler, input_shape, owner):
    """``(config, state, training)`` to write, everything checked first (``check_saveable``);
    ``training`` is None or a dict: ``optimizer`` (its state dict), and the JSON texts ``scheduler``,
    ``rng`` and ``module_rngs`` (each None when absent)."""
    if epoch is not None and (not isinstance(epoch, (int, np.integer)) or epoch < 0):
        raise ValueError(f"{owner}: epoch must be a non-negative int, got {epoch!r}")
    if rng is not None:
        if not isinstance(rng, np.random.Generator):
            raise TypeError(f"{owner}: rng must be a numpy.random.Generator, got {type(rng).__name__}")
        check_storable(rng, "rng", owner)
    config = model_config(model, input_shape)
    verify_rebuild(model)
    state = model.state_dict()
    h5.check_values(state, owner)
    if optimizer is None and epoch is None and rng is None and scheduler is None:
        return config, state, None
    opt_state = _optimizer_state(optimizer, owner) if optimizer is not None else None
    sched = None
    if scheduler is not None:
        try:
            sched = json.dumps(scheduler.state_dict(), allow_nan=False)
        except (TypeError, ValueError) as e:
            raise TypeError(f"{owner}: the schedule's state_dict() is not plain JSON ({e}); a checkpoint stores "
                            "a schedule's state as JSON of finite numbers, strings and lists") from None
    generators = module_generators_state(model, owner)
    return config, state, {"optimizer": opt_state, "scheduler": sched,
                           "rng": None if rng is None else json.dumps(rng.bit_generator.state),
                           "module_rngs": None if generators is None else json.dumps(generators)}


def _optimizer_state(optimizer, owner) -> dict:
    """``optimizer.state_dict()``, checked: a single optimizer's (``state`` and ``param_groups``), or a
    MultiOptimizer's (``optimizers``: one such dict per inner optimizer), of finite values."""
    opt_state = optimizer.state_dict()
    inner = getattr(optimizer, "optimizers", None)
    if isinstance(opt_state, dict) and set(opt_state) == {"optimizers"}:
        if not isinstance(inner, (list, tuple)) or len(inner) != len(opt_state["optimizers"]):
            raise TypeError(f"{owner}: the optimizer's state_dict() holds {{'optimizers': [...]}}, but the optimizer "
                            "has no matching list .optimizers; a checkpoint stores a bitnet MultiOptimizer's state")
        states = list(opt_state["optimizers"])
        names = [f"optimizer {i} ({type(o).__name__})" for i, o in enumerate(inner)]
    else:
        states, names = [opt_state], ["the optimizer's"]
    for what, sd in zip(names, states):
        if not isinstance(sd, dict) or not {"state", "param_groups"} <= set(sd):
            found = sorted(sd) if isinstance(sd, dict) else type(sd).__name__
            raise TypeError(f"{owner}: {what} state_dict() has the keys {found}; a checkpoint holds an optimizer's "
                            "'state' and 'param_groups' (bitnet.optim.Optimizer.state_dict()), or a MultiOptimizer "
                            "of such optimizers")
        try:
            json.dumps(sd["param_groups"], allow_nan=False)
        except (TypeError, ValueError) as e:
            raise TypeError(f"{owner}: {what} param_groups are not plain JSON ({e}); hyperparameters must be "
                            "finite numbers, strings, booleans or lists of them") from None
        for index, entries in sd["state"].items():
            h5.check_values({f"optimizer state {index}.{k}": v for k, v in entries.items()}, owner, bound=False)
    return opt_state


def describe(path, max_bytes=None) -> dict:
    """What a bitnet file is, from its header alone (nothing built): ``{"kind": "checkpoint" |
    "packed" | "state_dict", "zoo": (name, kwargs) or None, "input_shape": list or None,
    "architecture": NODE or None, "bytes": the parameters' and buffers' bytes or None, "trained_on": dict
    or None}`` (``trained_on`` as given to ``save``, absent from older files); a model larger than the
    file may describe (``bitnet.io.limits``) is refused here already."""
    with h5.open_file(path) as f:
        try:
            version, kind, config = h5.read_header(f, path)
            if kind not in ("checkpoint", "packed", "state_dict"):
                raise BitnetFileError(path, "attribute 'kind'", "'checkpoint', 'packed' or 'state_dict'", repr(kind))
            spec = check_config(config, path, version) if kind != "state_dict" else \
                {"architecture": None, "zoo": None, "input_shape": None, "verify": False, "bytes": None,
                 "largest": None}
            if spec["bytes"] is not None:
                limits.check_bytes(path, "config.architecture", spec["bytes"],
                                   limits.allowed_bytes(path, kind, max_bytes), spec["largest"])
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


def load_architecture(path, max_bytes=None):
    """The model a checkpoint or packed file describes, built with zero weights (none are read): for
    inspecting a file's architecture (``bitnet summary``)."""
    with h5.open_file(path) as f:
        try:
            version, kind, config = h5.read_header(f, path)
            if kind not in ("checkpoint", "packed"):
                raise BitnetFileError(path, "attribute 'kind'", "'checkpoint' or 'packed'", repr(kind),
                                      "a weights-only file has no architecture")
            return build(check_config(config, path, version), path, limits.allowed_bytes(path, kind, max_bytes))
        except BitnetFileError:
            raise
        except H5_ERRORS as e:
            raise BitnetFileError(path, "(file)", "a readable bitnet file", f"{type(e).__name__}: {e}") from None


def read_model(f, path, want_kind, hint, max_bytes=None):
    """``(model, spec)`` of an open file of kind ``want_kind``: header, kind and config checked, the
    model built (not yet loaded) within the bytes the file may describe."""
    version, kind, config = h5.read_header(f, path)
    h5.check_kind(path, kind, want_kind, wrong_kind_hint(want_kind, kind, hint))
    spec = check_config(config, path, version)
    return build(spec, path, limits.allowed_bytes(path, kind, max_bytes)), spec


def load(path, max_bytes=None):
    """The model stored in ``path``, rebuilt from its config with its weights loaded (training state
    aside: ``load_training_state``); see the module docstring for what is checked first. ``max_bytes``:
    the most bytes of parameters and buffers to accept (default: ``bitnet.io.limits``)."""
    with h5.open_file(path) as f:
        try:
            model, _ = read_model(f, path, "checkpoint",
                                  "a file of bitnet.save; load a packed file with bitnet.load_packed", max_bytes)
            live = live_state(model)
            h5.read_weights(f, path, live, sink=lambda key, data: np.copyto(live[key], data))
            train = h5.group(f, "training", path, "training")
            if train is not None and "module_rngs" in train.attrs:  # the Dropout streams go on where they were
                set_module_generators(model, check_module_rngs(path, h5.json_attr(train, path, "module_rngs"), model))
        except BitnetFileError:
            raise
        except H5_ERRORS as e:
            raise BitnetFileError(path, "(file)", "a readable bitnet model file", f"{type(e).__name__}: {e}") from None
    for m in model.modules():
        m._state_changed()
    return model


def live_state(model) -> dict:
    """The model's parameters and buffers by state-dict key, as the arrays themselves (no copies): what
    ``h5.read_weights`` compares shapes and dtypes with, and copies the file's values into."""
    from bitnet.tensor import Tensor
    out = {}
    for prefix, mod in model.named_modules():
        for store in (mod._parameters, mod._buffers):
            for k, v in store.items():
                if v is not None:
                    out[f"{prefix}.{k}" if prefix else k] = v.data if isinstance(v, Tensor) else v
    return out


from bitnet.io.training_state import TrainingState, load_training_state  # noqa: E402,F401  (their old home)
