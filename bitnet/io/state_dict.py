"""Weights-only files: ``save_state_dict`` / ``load_state_dict``, PyTorch's ``torch.save(model.state_dict())``
habit without pickle.

    bitnet.save_state_dict(model, "weights.h5")          # or a state dict: model.state_dict()
    model.load_state_dict(bitnet.load_state_dict("weights.h5"))

The file holds one dataset per key (kind ``state_dict``) and no architecture: the code that loads it
builds the model. ``load_state_dict(path, like=model)`` checks every dataset against ``model``'s state
(keys, shapes, dtypes) before reading any; without ``like``, every dataset's storage and dtype (numbers
only) are checked, and their bytes together may not exceed what the file earned
(``bitnet.io.limits``: 8 x the file's size + 1 MiB, at most 1 GiB; ``max_bytes=`` to allow more),
before any is read. Checksums are compared, floats must be finite and within +-2^64.
"""
from __future__ import annotations

from collections import OrderedDict

import numpy as np

from bitnet.io import h5, limits
from bitnet.io.checkpoint import H5_ERRORS
from bitnet.io.h5 import BitnetFileError


def save_state_dict(model_or_state, path) -> None:
    """Write a module's ``state_dict()`` (or a mapping of names to arrays / tensors) to ``path``, atomically."""
    from bitnet.tensor import Tensor
    state = model_or_state.state_dict() if hasattr(model_or_state, "state_dict") else model_or_state
    if not hasattr(state, "items"):
        raise TypeError(f"save_state_dict: expected a Module or a mapping of names to arrays, got "
                        f"{type(model_or_state).__name__}")
    arrays = OrderedDict()
    for key, value in state.items():
        if not isinstance(key, str) or not key or "/" in key or key.startswith("."):
            raise ValueError(f"save_state_dict: keys are dotted names without '/', got {key!r}")
        arr = np.asarray(value.data if isinstance(value, Tensor) else value)
        if arr.dtype.kind not in "biuf":
            raise TypeError(f"save_state_dict: {key} has dtype {arr.dtype}; numbers only (bool, int, float)")
        arrays[key] = arr
    h5.check_values(arrays, "save_state_dict")

    def write(f):
        h5.write_header(f, "state_dict", {})
        h5.write_weights(f, arrays)
    h5.atomic_write(path, write)


def load_state_dict(path, like=None, max_bytes=None) -> "OrderedDict[str, np.ndarray]":
    """The arrays of a ``save_state_dict`` file, by name; with ``like`` (a Module) each is checked
    against that model's state before anything is read. Load them with ``model.load_state_dict``.
    ``max_bytes``: the most bytes to read without ``like`` (default: ``bitnet.io.limits``)."""
    with h5.open_file(path) as f:
        try:
            version, kind, _ = h5.read_header(f, path)
            h5.check_kind(path, kind, "state_dict", "a weights-only file of bitnet.save_state_dict; a checkpoint "
                                                    "loads with bitnet.load (its state: bitnet.load(path).state_dict())")
            if like is not None:
                from bitnet.io.checkpoint import live_state
                return OrderedDict(h5.read_weights(f, path, live_state(like)))
            g = h5.weights_group(f, path)
            found, total = OrderedDict(), 0
            for key in g:
                ds = h5.dataset(h5.member(g, key, path, f"weights/{key}"), path, f"weights/{key}")
                if not h5.plain_number_dtype(ds.dtype):
                    raise BitnetFileError(path, f"weights/{key}", "numbers (bool, int, float)", f"dtype {ds.dtype}")
                found[key] = ds
                total += ds.size * ds.dtype.itemsize
            limits.check_bytes(path, "group 'weights'", total, limits.allowed_bytes(path, "state_dict", max_bytes))
            return OrderedDict((key, h5.read_data(ds, path, f"weights/{key}")) for key, ds in found.items())
        except BitnetFileError:
            raise
        except H5_ERRORS as e:
            raise BitnetFileError(path, "(file)", "a readable bitnet weights file", f"{type(e).__name__}: {e}") from None
