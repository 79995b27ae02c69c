"""HDF5 model files: ``save`` / ``load`` (and the training state of checkpoints), written atomically and
checked completely before anything is built. The format is documented in docs/file-format.md.

    bitnet.save(model, "ckpt.h5", optimizer=opt, epoch=3, rng=rng)
    model = bitnet.load("ckpt.h5")
    state = bitnet.load_training_state("ckpt.h5")    # optimizer state, epoch, RNG state
    opt = bitnet.optim.Adam(model.parameters(), lr=1e-3); state.restore(opt, rng)

Safety: the architecture is a JSON config naming a model builder of ``bitnet.models`` and its
keyword arguments (no pickle, no eval, no import of names taken from the file); every dataset's
dtype and shape is compared with what the config's model expects before its data is read; float
weights must be finite; every problem raises ``BitnetFileError`` naming the file, the key, what was
expected and what was found. A save writes a temporary file in the same directory and renames it
over the target, so a crash or a kill leaves the previous file intact.
"""
from __future__ import annotations

import datetime
import inspect
import json
import os
import tempfile
from dataclasses import dataclass

import numpy as np

FORMAT_NAME = "bitnet-model"
FORMAT_VERSION = 1
MAX_CONFIG_BYTES = 1 << 20   # a JSON config larger than this is not a bitnet file
MAX_INT_ARGUMENT = 1 << 16   # builder arguments (classes, channels, image size) above this are refused


class BitnetFileError(ValueError):
    """A model file that cannot be read as one: says which file, which key, expected vs found."""

    def __init__(self, path, key, expected, found, hint=""):
        self.path, self.key, self.expected, self.found = str(path), key, expected, found
        msg = f"{path}: {key}: expected {expected}, found {found}"
        super().__init__(msg + (f"; {hint}" if hint else ""))


# -- writing ----------------------------------------------------------------------------------------

def model_config(model) -> dict:
    """The JSON-serializable description a file stores to rebuild ``model``: the zoo builder's name
    and keyword arguments (recorded by ``bitnet.models.get``), or for a ``Sequential`` of bitnet's
    layers their classes and constructor arguments (``bitnet.nn.config``)."""
    cfg = getattr(model, "zoo_config", None)
    if cfg is not None:
        return {"model": cfg["name"], "kwargs": dict(cfg["kwargs"])}
    from bitnet.nn.config import layers_config
    try:
        return {"layers": layers_config(model)}
    except TypeError as e:
        raise TypeError(f"cannot save this {type(model).__name__}: {e}. Files rebuild models from a zoo name "
                        "(bitnet.models.get) or from a Sequential of bitnet layers") from None


def create_dataset(group, name, data):
    """``group[name] = data`` (contiguous; HDF5's compact layout was measured to save nothing here)."""
    data = np.asarray(data)
    return group.create_dataset(name, data=data if data.ndim == 0 else np.ascontiguousarray(data))


def _atomic_h5(path, write):
    """Write an HDF5 file through ``write(h5file)`` into a temporary file beside ``path``, then
    rename it over ``path`` (atomic on POSIX): readers see the old file or the new one, never a part."""
    import h5py
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".bitnet-", suffix=".h5.tmp", dir=folder)
    os.close(fd)
    try:
        with h5py.File(tmp, "w", libver="latest") as f:
            write(f)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def set_text(obj, name, text: str) -> None:
    """A string attribute, stored as fixed-length bytes: its content sits inside the attribute
    message, so a reader knows its size before reading it (variable-length strings live in a heap
    that a damaged file can make a reader chase for ever)."""
    obj.attrs[name] = np.bytes_(text.encode("utf-8"))


def _write_header(f, kind, config):
    from bitnet import __version__
    set_text(f, "format", FORMAT_NAME)
    f.attrs["format_version"] = FORMAT_VERSION
    set_text(f, "bitnet_version", __version__)
    set_text(f, "created", datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"))
    set_text(f, "kind", kind)
    set_text(f, "config", json.dumps(config, sort_keys=True))


def save(model, path, optimizer=None, epoch=None, rng=None, scheduler=None) -> None:
    """Write ``model`` (its zoo config and every parameter and buffer) to the HDF5 file ``path``; with
    ``optimizer`` / ``epoch`` / ``rng`` (a ``np.random.Generator``) / ``scheduler`` (a learning-rate
    schedule) a training checkpoint."""
    config = model_config(model)
    state = model.state_dict()
    opt_state = optimizer.state_dict() if optimizer is not None else None
    if epoch is not None and (not isinstance(epoch, (int, np.integer)) or epoch < 0):
        raise ValueError(f"save: epoch must be a non-negative int, got {epoch!r}")
    if rng is not None and not isinstance(rng, np.random.Generator):
        raise TypeError(f"save: rng must be a numpy.random.Generator, got {type(rng).__name__}")

    def write(f):
        _write_header(f, "checkpoint", config)
        weights = f.create_group("weights")
        for key, value in state.items():
            create_dataset(weights, key, value)
        if opt_state is not None or epoch is not None or rng is not None or scheduler is not None:
            train = f.create_group("training")
            if scheduler is not None:
                set_text(train, "scheduler", json.dumps(scheduler.state_dict()))
            if epoch is not None:
                train.attrs["epoch"] = int(epoch)
            if rng is not None:
                set_text(train, "rng", json.dumps(rng.bit_generator.state))
            if opt_state is not None:
                og = train.create_group("optimizer")
                set_text(og, "class", type(optimizer).__name__)
                set_text(og, "param_groups", json.dumps(opt_state["param_groups"]))
                for index, entries in opt_state["state"].items():
                    g = og.create_group(f"state/{int(index)}")
                    for name, value in entries.items():
                        create_dataset(g, name, np.asarray(value))
    _atomic_h5(path, write)


# -- reading ----------------------------------------------------------------------------------------

def _open(path):
    import h5py
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: no such model file")
    try:
        return h5py.File(path, "r")
    except OSError as e:
        raise BitnetFileError(path, "(file)", "an HDF5 file", f"unreadable data ({e})") from None


def _attr(f, path, name, kind):
    """Attribute ``name`` of ``f`` as a ``"string"`` or an ``"int"``; its type and size are checked
    from the attribute's header before its value is read."""
    if name not in f.attrs:
        raise BitnetFileError(path, f"attribute {name!r}", f"a {kind}", "nothing", "not a bitnet model file?")
    aid = f.attrs.get_id(name)
    dtype, shape = aid.dtype, aid.shape
    if shape != ():
        raise BitnetFileError(path, f"attribute {name!r}", f"a single {kind}", f"shape {shape}")
    if kind == "string":
        if dtype.kind != "S":
            raise BitnetFileError(path, f"attribute {name!r}", "a fixed-length string", f"dtype {dtype}")
        if dtype.itemsize > MAX_CONFIG_BYTES:
            raise BitnetFileError(path, f"attribute {name!r}", f"at most {MAX_CONFIG_BYTES} bytes", f"{dtype.itemsize}")
        return bytes(f.attrs[name]).decode("utf-8", "replace")
    if dtype.kind not in "iu" or dtype.itemsize > 8:
        raise BitnetFileError(path, f"attribute {name!r}", "an integer", f"dtype {dtype}")
    return int(f.attrs[name])


def _check_header(f, path):
    fmt = _attr(f, path, "format", "string")
    if fmt != FORMAT_NAME:
        raise BitnetFileError(path, "attribute 'format'", repr(FORMAT_NAME), _short(fmt))
    version = int(_attr(f, path, "format_version", "int"))
    if version != FORMAT_VERSION:
        raise BitnetFileError(path, "attribute 'format_version'", f"{FORMAT_VERSION}", f"{version}",
                              "written by another bitnet version; convert it with that version")
    text = _attr(f, path, "config", "string")
    if len(text) > MAX_CONFIG_BYTES:
        raise BitnetFileError(path, "attribute 'config'", f"at most {MAX_CONFIG_BYTES} bytes of JSON", f"{len(text)}")
    try:
        config = json.loads(text)
    except ValueError as e:
        raise BitnetFileError(path, "attribute 'config'", "JSON", f"invalid JSON ({e})") from None
    return config


MAX_PARAMETERS = 1 << 30  # a layers config that would allocate more values than this is refused


def _check_value(path, key, value, depth=0):
    """Config values: numbers, strings, booleans, None, and lists / objects of them (quantizer
    configs), integers within +-MAX_INT_ARGUMENT, nothing nested deeply."""
    if depth > 3:
        raise BitnetFileError(path, key, "values nested at most 3 deep", _short(value))
    if isinstance(value, (list, dict)):
        items = value.items() if isinstance(value, dict) else enumerate(value)
        for k, v in items:
            if not isinstance(k, (str, int)):
                raise BitnetFileError(path, key, "string keys", _short(k))
            _check_value(path, f"{key}.{k}", v, depth + 1)
        return
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return
    if not isinstance(value, (int, float)) or isinstance(value, float) and not np.isfinite(value):
        raise BitnetFileError(path, key, "numbers, strings, booleans or lists of them", _short(value))
    if isinstance(value, int) and not -MAX_INT_ARGUMENT <= value <= MAX_INT_ARGUMENT:
        raise BitnetFileError(path, key, f"an integer within +-{MAX_INT_ARGUMENT}", f"{value}")


def _check_layers(layers, path, key="config.layers"):
    from bitnet.nn.config import LAYERS
    if not isinstance(layers, list) or not layers:
        raise BitnetFileError(path, key, "a non-empty list of layers", _short(layers))
    for i, entry in enumerate(layers):
        where = f"{key}[{i}]"
        if not isinstance(entry, dict) or not isinstance(entry.get("class"), str):
            raise BitnetFileError(path, where, "an object with a 'class'", _short(entry))
        if entry["class"] == "Sequential":
            if set(entry) != {"class", "layers"}:
                raise BitnetFileError(path, where, "keys 'class' and 'layers'", _short(sorted(entry)))
            _check_layers(entry["layers"], path, f"{where}.layers")
            continue
        if entry["class"] not in LAYERS or set(entry) != {"class", "args"} or not isinstance(entry["args"], dict):
            raise BitnetFileError(path, where, f"{{'class': one of {sorted(LAYERS)} or 'Sequential', 'args': {{...}}}}",
                                  _short(entry))
        params = inspect.signature(LAYERS[entry["class"]][0].__init__).parameters
        for name, value in entry["args"].items():
            if name not in params or name in ("self", "rng"):
                raise BitnetFileError(path, f"{where}.args.{name}", f"an argument of {entry['class']}", "an unknown name")
            _check_value(path, f"{where}.args.{name}", value)


def _check_config(config, path):
    """What the config asks to build, checked against the registries and the constructors'
    signatures: ``("zoo", name, kwargs)`` or ``("layers", layers)``."""
    from bitnet.models import registry
    if isinstance(config, dict) and set(config) == {"layers"}:
        from bitnet.nn.config import param_count
        _check_layers(config["layers"], path)
        try:
            n = param_count(config["layers"])
        except (KeyError, TypeError, ValueError, IndexError) as e:
            raise BitnetFileError(path, "config.layers", "layer arguments that define sizes",
                                  f"{type(e).__name__}: {e}") from None
        if not 0 <= n <= MAX_PARAMETERS:
            raise BitnetFileError(path, "config.layers", f"at most {MAX_PARAMETERS} parameters", f"{n}")
        return ("layers", config["layers"])
    if not isinstance(config, dict) or set(config) != {"model", "kwargs"}:
        raise BitnetFileError(path, "config", "an object with keys 'model' and 'kwargs' (or 'layers')", _short(config))
    name, kwargs = config["model"], config["kwargs"]
    if not isinstance(name, str) or name not in registry.names():
        raise BitnetFileError(path, "config.model", f"one of {registry.names()}", _short(name))
    if not isinstance(kwargs, dict):
        raise BitnetFileError(path, "config.kwargs", "an object", _short(kwargs))
    params = inspect.signature(registry.builder(name)).parameters
    for key, value in kwargs.items():
        if key not in params or key == "seed":
            raise BitnetFileError(path, f"config.kwargs.{key}", f"an argument of {name} ({', '.join(params)})",
                                  "an unknown name")
        if isinstance(value, dict):
            raise BitnetFileError(path, f"config.kwargs.{key}", "numbers, strings or lists of them", _short(value))
        _check_value(path, f"config.kwargs.{key}", value)
    return ("zoo", name, kwargs)


def _value(data):
    """A dataset's content: 0-d arrays as Python scalars (optimizer step counts), others as arrays."""
    data = np.asarray(data)
    return data.item() if data.ndim == 0 else data


def _short(value, limit=80):
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


def _build(spec, path):
    """Build what ``_check_config`` accepted; a model the arguments cannot build is a file error."""
    from bitnet import models
    from bitnet.nn.config import build
    try:
        if spec[0] == "layers":
            return build(spec[1])
        model = models.get(spec[1], **spec[2])
    except (TypeError, ValueError, KeyError) as e:
        raise BitnetFileError(path, "config", "arguments that build a model", f"{type(e).__name__}: {e}") from None
    return model


def _member(group, name, path, key):
    """``group[name]`` (None if absent) when it is stored in this file under that name: soft and
    external links are refused, so a file never makes the reader open another file."""
    import h5py
    link = group.get(name, getlink=True)
    if link is None:
        return None
    if not isinstance(link, h5py.HardLink):
        raise BitnetFileError(path, key, "an object stored in this file", f"a {type(link).__name__}",
                              "bitnet files do not follow links")
    return group[name]


def _group(parent, name, path, key):
    """``parent[name]`` as a group stored in this file, or None if absent."""
    import h5py
    group = _member(parent, name, path, key)
    if group is not None and not isinstance(group, h5py.Group):
        raise BitnetFileError(path, key, "a group", type(group).__name__)
    return group


def _dataset(ds, path, key, max_size=None):
    """``ds`` if it is a dataset whose data lies in this file (no external raw-data files, no
    virtual dataset mapping other files) with at most ``max_size`` elements."""
    import h5py
    if not isinstance(ds, h5py.Dataset):
        raise BitnetFileError(path, key, "a dataset", type(ds).__name__)
    if ds.is_virtual or ds.external:
        raise BitnetFileError(path, key, "data stored in this file", "a virtual dataset" if ds.is_virtual
                              else "raw data in external files", "bitnet files do not read other files")
    if max_size is not None and ds.size > max_size:
        raise BitnetFileError(path, key, f"at most {max_size} elements (the model's largest parameter)",
                              f"{ds.size} (shape {ds.shape})")
    return ds


def _read_array(ds, path, key, shape, dtype, finite):
    ds = _dataset(ds, path, key)
    if ds.shape != tuple(shape):
        raise BitnetFileError(path, key, f"shape {tuple(shape)}", f"shape {ds.shape}")
    if ds.dtype != dtype:
        raise BitnetFileError(path, key, f"dtype {np.dtype(dtype)}", f"dtype {ds.dtype}")
    try:
        data = ds[()]
    except (OSError, ValueError, RuntimeError) as e:
        raise BitnetFileError(path, key, "readable data", f"a damaged dataset ({e})") from None
    data = np.asarray(data)
    if finite and data.dtype.kind == "f" and not np.all(np.isfinite(data)):
        raise BitnetFileError(path, key, "finite values", f"{int(np.sum(~np.isfinite(data)))} NaN or infinite values")
    return data


def _check_kind(f, path, want, hint):
    kind = _attr(f, path, "kind", "string")
    if kind != want:
        raise BitnetFileError(path, "attribute 'kind'", repr(want), repr(kind), hint)


def _read_weights(f, path, expected):
    """The ``/weights`` datasets, each checked against ``expected`` (key -> array of the right
    shape and dtype) before it is read; no key may be missing or extra."""
    group = _group(f, "weights", path, "group 'weights'")
    if group is None:
        raise BitnetFileError(path, "group 'weights'", "a group of datasets", "nothing")
    extra = sorted(set(group) - set(expected))
    if extra:
        raise BitnetFileError(path, f"weights/{extra[0]}", "only the keys of the model the config describes",
                              f"{len(extra)} unexpected key(s): {', '.join(extra[:5])}")
    state = {}
    for key, ref in expected.items():
        ds = _member(group, key, path, f"weights/{key}")
        if ds is None:
            raise BitnetFileError(path, f"weights/{key}", f"a dataset of shape {ref.shape}", "nothing")
        state[key] = _read_array(ds, path, f"weights/{key}", ref.shape, ref.dtype, finite=True)
    return state


def load(path):
    """The model stored in ``path``, rebuilt from its config with its weights loaded (training state
    aside: ``load_training_state``); see the module docstring for what is checked first."""
    with _open(path) as f:
        try:
            config = _check_header(f, path)
            _check_kind(f, path, "checkpoint", "a file of bitnet.save; load a packed file with bitnet.load_packed")
            model = _build(_check_config(config, path), path)
            state = _read_weights(f, path, model.state_dict())
        except BitnetFileError:
            raise
        except (KeyError, OSError, RuntimeError, TypeError, ValueError) as e:  # h5py on damaged structure
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
    with _open(path) as f:
        try:
            config = _check_header(f, path)
            train = _group(f, "training", path, "training")
            if train is None:
                return TrainingState(None, None, None, None)
            epoch = int(_attr(train, path, "epoch", "int")) if "epoch" in train.attrs else None
            rng = json.loads(_attr(train, path, "rng", "string")) if "rng" in train.attrs else None
            sched = json.loads(_attr(train, path, "scheduler", "string")) if "scheduler" in train.attrs else None
            opt = opt_class = None
            og = _group(train, "optimizer", path, "training/optimizer")
            if og is not None:
                opt_class = _attr(og, path, "class", "string")
                groups = json.loads(_attr(og, path, "param_groups", "string"))
                largest = max((p.size for p in _build(_check_config(config, path), path).state_dict().values()),
                              default=0)
                state = {}
                st = _group(og, "state", path, "training/optimizer/state")
                for index in (st or {}):
                    where = f"training/optimizer/state/{index}"
                    entries = _group(st, index, path, where)
                    state[int(index)] = {name: _value(_dataset(_member(entries, name, path, f"{where}/{name}"), path,
                                                               f"{where}/{name}", largest)[()])
                                         for name in entries}
                opt = {"state": state, "param_groups": groups}
        except BitnetFileError:
            raise
        except (KeyError, OSError, RuntimeError, TypeError, ValueError) as e:
            raise BitnetFileError(path, "training", "a readable training state", f"{type(e).__name__}: {e}") from None
    return TrainingState(opt, opt_class, epoch, rng, sched)
