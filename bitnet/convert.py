"""Deployment files: ``convert`` a trained model (or its file) to a packed HDF5 file where every binary
kernel is stored at 1 bit per weight, and ``load_packed`` it back as the packed model of
``bitnet.pack``, ready to run.

A packed file holds the packed model's state: for each binary layer its filters as ``uint64`` words
(row-major ``(out_channels, KH * KW * words per tap)``, the bit convention of
``bitnet.kernels.bits`` written in the dataset's attributes) and its folded ``scale`` / ``shift``
(batch norm, bias and magnitude scaling in one float32 affine per channel); the float layers'
parameters as float32, with the batch norms of the channels-last stem and shortcuts folded into
their weights. Folded batch norms are absent. The layout is the same on every CPU: the kernels'
filter panels (whose width depends on the vector unit) are made at load time.
"""
from __future__ import annotations

import os

import numpy as np

from bitnet.files import (BitnetFileError, _atomic_h5, _build, _check_config, _check_header, _check_kind, _open,
                          _read_weights, _write_header, create_dataset, model_config, set_text)

# on every filters dataset: bit 1 = -1, LSB first, padding bits 0 (bitnet.kernels.bits); "k" = the true
# length of a row's dot product, (C / groups) * KH * KW; rows are (out_channels, kh, kw, channel words)
WORD_ATTRS = {"bit1": -1, "order": "lsb", "pad": 0}


def _packed_layers(packed):
    from bitnet.packed.layers import PackedConv2d
    return {name: m for name, m in packed.named_modules() if isinstance(m, PackedConv2d)}


def _file_state(packed) -> dict:
    """The packed model's state with every binary layer's filters as row-major words."""
    from bitnet.kernels.xnor_conv import unpanel_words
    state = packed.state_dict()
    for name, layer in _packed_layers(packed).items():
        key = f"{name}.filters" if name else "filters"
        g = layer.groups
        state[key] = unpanel_words(layer.filters, layer.out_channels // g).reshape(layer.out_channels, -1)
    return state


# HDF5's own bytes in a packed file, measured with h5py 3.16 / HDF5 1.14 (libver "latest"): about
# 1.5 kB of superblock, root attributes and group structures, and 356 bytes per dataset
# (object header, datatype, dataspace, layout); tests/test_convert.py checks the prediction.
FILE_HEADER_BYTES = 1475
FILE_BYTES_PER_DATASET = 356


def predicted_file_bytes(model) -> int:
    """The size of the file ``convert(model, ...)`` writes: payload + HDF5 overhead (estimated)."""
    from bitnet.packed import pack
    state = _file_state(pack(model, micro_batch=None, device="cpu"))
    return sum(v.nbytes for v in state.values()) + FILE_HEADER_BYTES + FILE_BYTES_PER_DATASET * len(state)


def convert(model_or_path, out_path, micro_batch: int | None = 32) -> None:
    """Write the packed deployment file of a zoo model (or of the model file at that path)."""
    from bitnet.files import load
    from bitnet.packed import pack
    model = load(model_or_path) if isinstance(model_or_path, (str, os.PathLike)) else model_or_path
    config = model_config(model)
    packed = pack(model, micro_batch=micro_batch, device="cpu")
    state = _file_state(packed)
    layers = _packed_layers(packed)

    def write(f):
        _write_header(f, "packed", config)
        weights = f.create_group("weights")
        for key, value in state.items():
            ds = create_dataset(weights, key, value)
            name = key[:-len(".filters")] if key.endswith(".filters") else None
            if name in layers:
                layer = layers[name]
                for k, v in WORD_ATTRS.items():
                    if isinstance(v, str):
                        set_text(ds, k, v)
                    else:
                        ds.attrs[k] = v
                ds.attrs["k"] = (layer.in_channels // layer.groups) * layer.kernel_size[0] * layer.kernel_size[1]
    _atomic_h5(out_path, write)


def load_packed(path, micro_batch: int | None = 32, device: str | None = None):
    """The packed model stored by ``convert``; every dataset is checked against the model its config
    describes before anything is read (shapes, dtypes, finite floats, no missing or extra keys).
    ``device="cuda"`` (or inside ``with bitnet.device("cuda"):``) returns it on the GPU, as
    ``bitnet.pack`` does."""
    from bitnet.backend import resolve_device
    device = resolve_device(device)
    from bitnet.kernels.xnor_conv import panel_words
    from bitnet.packed import pack
    with _open(path) as f:
        try:
            config = _check_header(f, path)
            _check_kind(f, path, "packed", "a file of bitnet.convert; load a checkpoint with bitnet.load")
            packed = pack(_build(_check_config(config, path), path), micro_batch=micro_batch, device="cpu")
            state = _read_weights(f, path, _file_state(packed))
        except BitnetFileError:
            raise
        except (KeyError, OSError, RuntimeError, TypeError, ValueError) as e:
            raise BitnetFileError(path, "(file)", "a readable bitnet packed file", f"{type(e).__name__}: {e}") from None
    for lname, layer in _packed_layers(packed).items():
        key = f"{lname}.filters" if lname else "filters"
        g = layer.groups
        words = state[key]
        if not np.array_equal(words, _masked(words, layer)):
            raise BitnetFileError(path, f"weights/{key}", "padding bits 0 beyond each tap's channels",
                                  "set padding bits")
        state[key] = panel_words(words.reshape(g, layer.out_channels // g, -1), layer.filters.shape[3])
    packed.load_state_dict(state)
    from bitnet.packed.model import on_device
    return on_device(packed, device)


def _masked(words, layer):
    """``words`` with the bits beyond each tap's channels cleared (the convention's padding bits)."""
    cg = layer.in_channels // layer.groups
    cwg = -(-cg // 64)
    mask = np.full(cwg, np.uint64(2**64 - 1), np.uint64)
    if cg % 64:
        mask[-1] = np.uint64((1 << (cg % 64)) - 1)
    taps = words.reshape(words.shape[0], -1, cwg)
    return (taps & mask).reshape(words.shape)
