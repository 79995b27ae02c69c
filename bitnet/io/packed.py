"""Deployment files: ``convert`` a trained model (or its file) to a packed HDF5 file where every binary
kernel is stored at 1 bit per weight, and ``load_packed`` it back as the packed model of
``bitnet.pack``, ready to run.

A packed file holds the float model's architecture (as a checkpoint does, ``bitnet.io.config``) and the
packed model's state: for each binary layer its filters as ``uint64`` words (row-major
``(out_channels, KH * KW * words per tap)``, the bit convention of ``bitnet.kernels.bits`` written in
the dataset's attributes) and its folded ``scale`` / ``shift`` (batch norm, bias and magnitude scaling
in one float32 affine per channel); the float layers' parameters as float32, with the batch norms of
the channels-last stem and shortcuts folded into their weights. Folded batch norms are absent. The
layout is the same on every CPU: the kernels' filter panels (whose width depends on the vector unit)
are made at load time.

``load_packed`` builds the packed model's structure from the config (``bitnet.packed.pack_structure``:
the packed layers' shapes, no packing of weights) and checks every dataset against it (shapes,
dtypes, no missing or extra keys) before reading any, and every one's checksum, finite floats within
+-2^64 and padding bits 0 after, before loading.
"""
from __future__ import annotations

import json
import os

import numpy as np

from bitnet.io import h5
from bitnet.io.checkpoint import H5_ERRORS, read_model
from bitnet.io.config import model_config, verify_rebuild
from bitnet.io.h5 import BitnetFileError

# on every filters dataset: bit 1 = -1, LSB first, padding bits 0 (bitnet.kernels.bits); "k" = the true
# length of a row's dot product, (C / groups) * KH * KW; rows are (out_channels, kh, kw, channel words)
WORD_ATTRS = {"bit1": -1, "order": "lsb", "pad": 0}

# HDF5's own bytes in a packed file, measured with h5py 3.16 / HDF5 1.14 (libver "latest"): about
# 1.4 kB of superblock, root attributes and group structures besides the config and architecture
# (h5.header_bytes), and 356 bytes per dataset (object header, datatype, dataspace, layout);
# tests/test_convert.py checks the prediction.
FILE_HEADER_BYTES = 1436
FILE_BYTES_PER_DATASET = 356


def _packed_layers(packed):
    from bitnet.packed.layers import PackedConv2d
    return {name: m for name, m in packed.named_modules() if isinstance(m, PackedConv2d)}


def _filters_key(name):
    return f"{name}.filters" if name else "filters"


def _file_state(packed) -> dict:
    """The packed model's state with every binary layer's filters as row-major words."""
    from bitnet.kernels.xnor_conv import unpanel_words
    state = packed.state_dict()
    for name, layer in _packed_layers(packed).items():
        state[_filters_key(name)] = unpanel_words(layer.filters, layer.out_channels // layer.groups).reshape(
            layer.out_channels, -1)
    return state


def predicted_file_bytes(model, input_shape=None) -> int | None:
    """The size of the file ``convert(model, ...)`` writes: payload, config and HDF5 overhead
    (estimated); None for a model that cannot be saved (a class not registered for files)."""
    from bitnet.packed import pack
    try:
        header = h5.header_bytes(model_config(model, input_shape))
    except (TypeError, ValueError):
        return None
    state = _file_state(pack(model, micro_batch=None, device="cpu"))
    return sum(v.nbytes for v in state.values()) + header + FILE_HEADER_BYTES + FILE_BYTES_PER_DATASET * len(state)


def same_file(a, b) -> bool:
    """Whether paths ``a`` and ``b`` name one file: the same path, or a symbolic or hard link to it."""
    try:
        return os.path.samefile(a, b)
    except (OSError, ValueError):  # one of them does not exist (yet)
        return os.path.abspath(a) == os.path.abspath(b)


def convert(model_or_path, out_path, input_shape=None, trained_on=None) -> None:
    """Write the packed deployment file of a model (or of the checkpoint at that path); ``input_shape``
    (C, H, W) and ``trained_on`` as for ``bitnet.save`` (from a checkpoint path, its own unless given).
    ``out_path`` may not be the checkpoint itself (``ValueError``: writing it would lose the checkpoint)."""
    from bitnet.io.checkpoint import load, describe
    from bitnet.packed import pack
    if isinstance(model_or_path, (str, os.PathLike)):
        if same_file(model_or_path, out_path):  # refused before any work: the checkpoint would be lost
            raise ValueError(f"convert: the output {os.fspath(out_path)} is the same file as the checkpoint "
                             f"{os.fspath(model_or_path)}; the packed file would replace it (its float weights and "
                             "training state would be lost): give another output path, e.g. "
                             f"{os.path.splitext(os.fspath(model_or_path))[0]}.packed.h5")
        info = describe(model_or_path)
        model = load(model_or_path)
        input_shape = input_shape if input_shape is not None else info["input_shape"]
        trained_on = trained_on if trained_on is not None else info["trained_on"]
    else:
        model = model_or_path
    record = None if trained_on is None else json.dumps(trained_on, sort_keys=True, allow_nan=False)
    config = model_config(model, input_shape)
    verify_rebuild(model)
    packed = pack(model, micro_batch=None, device="cpu")
    state = _file_state(packed)
    h5.check_values(state, "convert")
    attrs = {}
    for name, layer in _packed_layers(packed).items():
        k = (layer.in_channels // layer.groups) * layer.kernel_size[0] * layer.kernel_size[1]
        attrs[_filters_key(name)] = dict(WORD_ATTRS, k=k)

    def write(f):
        h5.write_header(f, "packed", config)
        if record is not None:
            h5.set_text(f, "trained_on", record)
        h5.write_weights(f, state, attrs)
    h5.atomic_write(out_path, write)


def load_packed(path, micro_batch: int | None = 32, device: str | None = None, max_bytes=None,
                binary_kernels: str | None = None):
    """The packed model stored by ``convert`` (see the module docstring for what is checked first).
    ``device="cuda"`` (or inside ``with bitnet.device("cuda"):``) returns it on the GPU, as
    ``bitnet.pack`` does, with its ``binary_kernels``. ``max_bytes``: the most bytes of parameters and buffers the float model the
    file describes may take (default: ``bitnet.io.limits``)."""
    from bitnet.backend import resolve_device
    from bitnet.kernels.xnor_conv import panel_words
    from bitnet.packed.model import on_device, pack_structure
    device = resolve_device(device)
    with h5.open_file(path) as f:
        try:
            model, _ = read_model(f, path, "packed", "a file of bitnet.convert; load a checkpoint with bitnet.load",
                                  max_bytes)
            packed = pack_structure(model, micro_batch)
            state = h5.read_weights(f, path, _file_state(packed))
        except BitnetFileError:
            raise
        except H5_ERRORS as e:
            raise BitnetFileError(path, "(file)", "a readable bitnet packed file", f"{type(e).__name__}: {e}") from None
    for name, layer in _packed_layers(packed).items():
        key, g = _filters_key(name), layer.groups
        words = state[key]
        if not np.array_equal(words, masked(words, layer)):
            raise BitnetFileError(path, f"weights/{key}", "padding bits 0 beyond each tap's channels",
                                  "set padding bits")
        state[key] = panel_words(words.reshape(g, layer.out_channels // g, -1), layer.filters.shape[3])
    packed.load_state_dict(state)
    return on_device(packed, device, binary_kernels)


def masked(words, layer):
    """``words`` with the bits beyond each tap's channels cleared (the convention's padding bits)."""
    cg = layer.in_channels // layer.groups
    cwg = -(-cg // 64)
    mask = np.full(cwg, np.uint64(2**64 - 1), np.uint64)
    if cg % 64:
        mask[-1] = np.uint64((1 << (cg % 64)) - 1)
    taps = words.reshape(words.shape[0], -1, cwg)
    return (taps & mask).reshape(words.shape)
