"""The command line's files: reading model files with every failure one clear error, checking where
files will be written before any work, and what a model file records about its training.

- ``printable(text)``: control characters and terminal escape sequences from files shown escaped;
- ``reading(path)``: any error of a model-file reader becomes a ``BitnetFileError`` naming the file;
- ``check_destination(path, option)``: the file can be written (its folder exists and takes files),
  checked before training or converting; ``writing(path, what)``: a write that still fails (disk
  full) becomes one message naming the file the user gave;
- ``trained_on(...)``, ``record_of(path, info)``: the record ``bitnet train`` saves in its files
  (dataset, input shape, classes, the options of the run), checked when read; ``resume_checks``
  (``--resume`` against it), ``choose_dataset`` (``eval`` / ``predict`` against it);
- ``running(path, what, expects)``, ``not_finite(...)``: a model run (inputs it cannot take, with what
  the file expects), and its NaN or infinite outputs, as one message; ``check_pixels``: ``predict``'s
  images (uint8, or finite floats in [0, 1]; at least one).
"""
from __future__ import annotations

import contextlib
import os
import re
import sys
import tempfile
import unicodedata
import warnings

import numpy as np

from bitnet.io import BitnetFileError

#: The options that define a training run, with their defaults; ``bitnet train --resume`` takes the
#: saved run's values for those not given and refuses given ones that differ (``--epochs`` may).
RUN_OPTIONS = {"model": "lenet", "dataset": "mnist", "epochs": 3, "batch_size": 128, "seed": 0,
               "optimizer": "adam", "lr": 1e-3, "weight_decay": 0.0, "schedule": "cosine",
               "warmup_steps": 0, "limit_train": None}
# The images of each dataset (C, H, W) and its number of classes.
DATASET_SHAPES = {"mnist": (1, 28, 28), "fashion-mnist": (1, 28, 28), "cifar10": (3, 32, 32)}
DATASET_CLASSES = {"mnist": 10, "fashion-mnist": 10, "cifar10": 10}


class CommandError(Exception):
    """A command that cannot go on: one message, the exit status ``code`` (2: the user's input)."""

    def __init__(self, message: str, code: int = 2):
        super().__init__(message)
        self.code = code


def printable(text, newlines: bool = False) -> str:
    """``text`` with control and format characters (terminal escapes, bidi overrides, newlines unless
    ``newlines``) written as Python escapes, so a string from a file cannot drive the terminal."""
    out = []
    for ch in str(text):
        if ch == "\n" and newlines:
            out.append(ch)
        elif unicodedata.category(ch) in ("Cc", "Cf", "Cs", "Co", "Zl", "Zp"):
            out.append(ch.encode("unicode_escape", "backslashreplace").decode("ascii"))
        else:
            out.append(ch)
    return "".join(out)


@contextlib.contextmanager
def reading(path, expected="a readable bitnet model file"):
    """Errors of the model-file readers that are not already ``BitnetFileError`` (h5py's and HDF5's
    ``KeyError`` / ``RuntimeError`` on damaged metadata, a layer rebuilt from absurd arguments) become
    a ``BitnetFileError`` naming ``path``."""
    from bitnet.backend import CudaUnavailableError
    try:
        yield
    except (BitnetFileError, FileNotFoundError, IsADirectoryError, NotADirectoryError, CudaUnavailableError,
            CommandError, MemoryError):  # (a folder given for a file: bitnet.io.h5.not_a_file)
        raise
    except (KeyError, IndexError, ZeroDivisionError, AttributeError, OverflowError, RuntimeError, OSError,
            TypeError, RecursionError, UnicodeError) as e:
        raise BitnetFileError(path, "(file)", expected, f"{type(e).__name__}: {e}") from None


def check_destination(path, option: str) -> None:
    """Refuse at once a file that cannot be written: a folder, a missing folder, a folder that takes
    no files (read-only, immutable, a read-only file system); tried with a temporary file."""
    from bitnet.io.h5 import check_destination as checked
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    try:
        checked(path)
    except PermissionError:
        pass  # the probe below says why, in the system's words
    except OSError as e:
        prefix = f"cannot save {path}: "  # bitnet.io.h5.check_destination's words
        raise CommandError(f"{option} {path}: {str(e).removeprefix(prefix)}") from None
    try:
        fd, probe = tempfile.mkstemp(prefix=".bitnet-check-", dir=folder)
        os.close(fd)
        os.remove(probe)
    except OSError as e:
        raise CommandError(f"{option} {path}: cannot write into the folder {folder} ({e.strerror or e}); "
                           "choose a writable folder") from None


_TEMPORARY = re.compile(r"[^'\" ]*\.bitnet-[A-Za-z0-9_]+\.h5\.tmp")


@contextlib.contextmanager
def writing(path, what: str, code: int = 2, hint: str = ""):
    """A failed write (disk full, a folder gone read-only) as one ``CommandError`` naming ``path``
    (not the temporary file beside it), with the operating system's reason."""
    try:
        yield
    except (OSError, RuntimeError) as e:
        errno = getattr(e, "errno", None) or next((int(m) for m in re.findall(r"errno = (\d+)", str(e))), None)
        reason = os.strerror(errno) if errno else _TEMPORARY.sub(os.fspath(path), str(e))
        raise CommandError(f"cannot write {what} {path}: {reason}" + (f"; {hint}" if hint else ""), code) from None


def trained_on(dataset, input_shape, num_classes, options) -> dict:
    """The record ``bitnet train`` saves with its model (``bitnet.save(..., trained_on=...)``)."""
    return {"dataset": dataset, "input_shape": [int(v) for v in input_shape], "num_classes": int(num_classes),
            "options": {k: options[k] for k in RUN_OPTIONS}}


def _is_int(v, low=0):
    return isinstance(v, int) and not isinstance(v, bool) and low <= v <= 2 ** 63


def record_of(path, info) -> dict | None:
    """The file's training record (``describe(path)["trained_on"]``), checked; None if it has none."""
    from bitnet import models
    record = info.get("trained_on")
    if record is None:
        return None
    options = record.get("options", {})
    problems = []
    if record.get("dataset") not in DATASET_SHAPES:
        problems.append(f"dataset {record.get('dataset')!r}")
    shape = record.get("input_shape")
    if not (isinstance(shape, list) and len(shape) == 3 and all(_is_int(v, 1) for v in shape)):
        problems.append(f"input_shape {shape!r}")
    if not _is_int(record.get("num_classes"), 1):
        problems.append(f"num_classes {record.get('num_classes')!r}")
    if not isinstance(options, dict) or set(options) - set(RUN_OPTIONS):
        problems.append(f"options {options!r}")
    else:
        for k, v in options.items():
            ok = {"model": lambda: v in models.names(), "dataset": lambda: v == record.get("dataset"),
                  "optimizer": lambda: v in ("adam", "adamw", "sgd"), "schedule": lambda: v in ("cosine", "constant"),
                  "lr": lambda: isinstance(v, float) and 0 < v <= 10, "limit_train": lambda: v is None or _is_int(v, 1),
                  "weight_decay": lambda: isinstance(v, (int, float)) and 0 <= v <= 1}.get(k, lambda: _is_int(v))()
            if not ok:
                problems.append(f"options.{k} {v!r}")
    if problems:
        from bitnet.io.h5 import short
        raise BitnetFileError(path, "attribute 'trained_on'", "the record of bitnet train (dataset, input_shape, "
                              "num_classes, options)", short("; ".join(problems), 200))
    return record


def flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def resume_options(args, given: set, path, record) -> list:
    """Fill ``args``' run options for ``--resume path``: those not ``given`` from the saved run's
    record (else their defaults); given ones must equal the saved run's (except ``--epochs``).
    Returns the names taken from the checkpoint."""
    saved = (record or {}).get("options")
    if saved is None:
        for k, v in RUN_OPTIONS.items():
            if k not in given:
                setattr(args, k, v)
        return []
    differ = [f"{flag(k)} {getattr(args, k)} (the saved run: {saved[k]})"
              for k in sorted(given) if k != "epochs" and k in saved and getattr(args, k) != saved[k]]
    if differ:
        raise CommandError(f"--resume {path}: the saved run used other options: {', '.join(differ)}; leave them out "
                           "(a resumed run takes them from its checkpoint) or start a new run without --resume")
    taken = [k for k in RUN_OPTIONS if k not in given and k in saved]
    for k in RUN_OPTIONS:
        if k not in given:
            setattr(args, k, saved.get(k, RUN_OPTIONS[k]))
    return taken


def resume_checks(args, given: set, warn) -> list:
    """Check ``--resume``'s file and fill the run options from it; returns those taken from it."""
    from bitnet.io import describe
    with reading(args.resume):
        info = describe(args.resume)
    if info["kind"] != "checkpoint":
        raise CommandError(f"--resume {args.resume}: a {info['kind']} file; expected a training checkpoint "
                           "(bitnet train --save)")
    record = record_of(args.resume, info)
    taken = resume_options(args, given, args.resume, record)
    if info["zoo"] is not None and info["zoo"][0] != args.model:
        raise CommandError(f"--resume {args.resume}: the checkpoint holds a {info['zoo'][0]}, not a {args.model}; "
                           f"pass --model {info['zoo'][0]} or start a new run without --resume")
    check_data_fits(args.resume, info, record, args.dataset)
    if record is None:
        warn(f"{args.resume} does not record the options of its run (an older bitnet): --model, --dataset, "
             "--lr, --batch-size and the others must be those of the saved run")
    return taken


def check_data_fits(path, info, record, dataset) -> None:
    """The model in ``path`` takes ``dataset``'s images and has as many classes (from its record, or
    the input shape the file records)."""
    shape = DATASET_SHAPES[dataset]
    wanted = tuple(record["input_shape"]) if record else (tuple(info["input_shape"]) if info.get("input_shape") else None)
    if wanted is not None and wanted != shape:
        raise CommandError(f"{path}: the model takes images of shape {wanted} (C, H, W), {dataset}'s are {shape}; "
                           "choose the dataset it was trained on with --dataset")
    if record and record["num_classes"] != DATASET_CLASSES[dataset]:
        raise CommandError(f"{path}: the model has {record['num_classes']} classes, {dataset} "
                           f"{DATASET_CLASSES[dataset]}; choose the dataset it was trained on with --dataset")


def choose_dataset(path, info, record, given, force: bool, warn) -> str:
    """The dataset ``eval`` / ``predict`` use: ``given`` (``--dataset``), else the one recorded in the
    file, else mnist. A given one other than the recorded one is refused unless ``force``."""
    recorded = record["dataset"] if record else None
    dataset = given or recorded or "mnist"
    if given is not None and recorded is not None and given != recorded and not force:
        raise CommandError(f"{path} was trained on {recorded} (recorded in the file), not on {given}: its "
                           f"results on {given} would mean nothing; leave out --dataset (the recorded one is "
                           "the default) or pass --force to run it anyway")
    check_data_fits(path, info, record, dataset)
    if given is None and recorded is None:
        warn(f"{path} does not record the dataset it was trained on (written by bitnet.save without "
             "trained_on=, or by an older bitnet): assuming mnist; pass --dataset to choose")
    elif given is not None and recorded is not None and given != recorded:
        warn(f"{path} was trained on {recorded}; running it on {given} because of --force")
    return dataset


def images_text(indices, total) -> str:
    """``"images 1, 4 (2 of 5)"``: which images of a batch (the first 10)."""
    shown = ", ".join(str(i) for i in indices[:10]) + (", ..." if len(indices) > 10 else "")
    return f"image{'s' if len(indices) > 1 else ''} {shown} ({len(indices)} of {total})"


def not_finite(path, model, where) -> CommandError:
    """The error for NaN or infinite outputs ``where``, with the largest float weight as the likely cause."""
    values = [np.abs(v).max() for v in model.state_dict().values() if v.dtype.kind == "f" and v.size]
    return CommandError(f"{path}: the model's outputs are NaN or infinite {where}: its weights are too large for "
                        f"float32 arithmetic (largest magnitude {float(max(values, default=0.0)):.3g}) or the file "
                        "is damaged")


@contextlib.contextmanager
def running(path, what, expects=""):
    """A model run on ``what`` (e.g. "images of shape (1, 32, 32)"): the ``ValueError`` / ``TypeError``
    of a layer that cannot take its input becomes one message naming ``path``, what it was run on and
    ``expects`` (what the file expects: ``expected_input``); other errors as ``reading``'s. NumPy's
    overflow warnings silenced (non-finite outputs are reported once, by the caller)."""
    from bitnet.backend import CudaUnavailableError
    with reading(path, f"a model that runs on {what}"), np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        try:
            yield
        except (BitnetFileError, CudaUnavailableError, CommandError):
            raise
        except (ValueError, TypeError) as e:
            raise CommandError(f"{path}: the model cannot run on {what}: {e}" + (f"; {expects}" if expects else "")) \
                from None


def expected_input(info, given=None, option="") -> str:
    """What a model file expects as input, for ``running``'s messages: the input shape it records (and
    that ``option``'s ``given`` shape differs from it), or that it records none."""
    recorded = tuple(info["input_shape"]) if info.get("input_shape") else None
    if recorded is None:
        return ("the file does not record the input shape its model takes (saved without input_shape=): "
                + (f"give that shape with {option} C,H,W" if option else "give it images of the shape it was "
                   "trained on"))
    if given is not None and tuple(given) != recorded:
        return (f"the file records that its model takes inputs of shape {recorded} (C, H, W): leave out {option} "
                f"or give {option} {','.join(map(str, recorded))}")
    return f"the file records that its model takes inputs of shape {recorded} (C, H, W)"


def _hold(indices) -> str:
    return "hold" if len(indices) > 1 else "holds"


def check_pixels(path, x) -> None:
    """``bitnet predict``'s images: at least one; uint8, or floats that are finite and within [0, 1]
    (what ``Normalize`` takes as pixels); anything else is refused naming ``path``, the images and the
    values found, with the conversion that fixes it."""
    if x.size == 0:
        raise CommandError(f"{path}: no images (an array of shape {x.shape}); expected at least one image of at "
                           "least one pixel")
    if x.dtype == np.uint8:
        return
    flat = x.reshape(len(x), -1)
    if x.dtype.kind == "f":
        bad = np.flatnonzero(~np.isfinite(flat).all(axis=1))
        if len(bad):
            raise CommandError(f"{path}: {images_text(bad.tolist(), len(x))} {_hold(bad)} NaN or infinite values; "
                               "expected finite pixels (uint8 0-255, or floats in [0, 1])")
        lo, hi = float(x.min()), float(x.max())
        if lo >= 0 and hi <= 1:
            return
        bad = np.flatnonzero(((flat < 0) | (flat > 1)).any(axis=1))
        fix = ("they look like 0-255 pixels: divide them by 255 (x / 255) or save them as uint8"
               if lo >= 0 and hi <= 255 else "scale them to [0, 1]")
        raise CommandError(f"{path}: {images_text(bad.tolist(), len(x))} {_hold(bad)} pixel values outside [0, 1] "
                           f"(from {lo:.6g} to {hi:.6g}); expected uint8 pixels (0-255) or floats in [0, 1]: {fix}")
    lo, hi = int(x.min()), int(x.max())
    fix = ("save them as uint8: np.save(path, x.astype(np.uint8))" if 0 <= lo and hi <= 255 else
           "scale them to 0-255 and save them as uint8 (x.astype(np.uint8)), or as floats in [0, 1]")
    raise CommandError(f"{path}: images of dtype {x.dtype} (values from {lo} to {hi}); expected uint8 pixels "
                       f"(0-255) or floats in [0, 1]: {fix}")


def write_packed(model, out, input_shape, record) -> None:
    """``bitnet.convert(model, out)`` with the checkpoint's training record carried into the packed file."""
    import bitnet
    bitnet.convert(model, out, input_shape=input_shape, trained_on=record)


def warn(args, message) -> None:
    """A warning line on stderr (rank 0 only in a distributed run), its text escaped."""
    if getattr(args, "comm", None) is None or args.comm.is_main:
        print(f"bitnet {args.command}: warning: {printable(message)}", file=sys.stderr)


def describe_model(model) -> str:
    """A model in a few words: the zoo name and arguments, or its class."""
    cfg = getattr(model, "zoo_config", None)
    if cfg:
        return f"{cfg['name']} {cfg['kwargs'] or ''}".rstrip()
    return f"{type(model).__name__} of {len(model._modules)} modules"
