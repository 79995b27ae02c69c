"""What a model file may make bitnet allocate (bitnet.io.limits): layer arguments checked by the layers
themselves, the model's bytes computed from the config before anything is built, datasets' chunks
bounded, and every refusal a BitnetFileError naming the file and the key. Memory is measured with
tracemalloc (NumPy reports its allocations to it) or bounded with RLIMIT_AS in a child process."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tracemalloc
import zlib

import h5py
import numpy as np
import pytest

import bitnet
from bitnet import nn
from bitnet.io import BitnetFileError, limits
from bitnet.io.config import architecture
from bitnet.models.resnet import BasicBlock, ResNet

MB = 1 << 20


# -- layers refuse bad arguments themselves, saying what they got and what they expect -------------

@pytest.mark.parametrize("make,match", [
    (lambda: nn.Dense(0, 3), "in_features must be an integer >= 1, got 0"),
    (lambda: nn.Dense(4, -2), "out_features must be an integer >= 1, got -2"),
    (lambda: nn.Dense(4.0, 2), "in_features must be an integer >= 1, got 4.0"),
    (lambda: nn.Conv2d(0, 4, 3), "in_channels must be an integer >= 1, got 0"),
    (lambda: nn.Conv2d(1, 4, 0), "kernel_size must be an integer >= 1, got 0"),
    (lambda: nn.Conv2d(1, 4, (3, 0)), r"kernel_size\[1\] must be an integer >= 1, got 0"),
    (lambda: nn.Conv2d(2, 4, 3, groups=0), "groups must be an integer >= 1, got 0"),
    (lambda: nn.Conv2d(3, 4, 3, groups=2), "groups=2 must divide in_channels=3"),
    (lambda: nn.Conv2d(1, 4, 3, stride=0), "stride must be an integer >= 1, got 0"),
    (lambda: nn.Conv2d(1, 4, 3, dilation=0), "dilation must be an integer >= 1, got 0"),
    (lambda: nn.Conv2d(1, 4, 3, padding=-1), "padding must be an integer >= 0, got -1"),
    (lambda: nn.Conv2d(1, 4, 3, padding=3), r"padding \(3, 3\) exceeds the kernel's reach"),
    (lambda: nn.QConv2d(1, 4, 3, groups=0), "QConv2d: groups must be an integer >= 1"),
    (lambda: nn.QDense(3, 0), "QDense: out_features must be an integer >= 1, got 0"),
    (lambda: nn.BatchNorm2d(0), "num_features must be an integer >= 1, got 0"),
    (lambda: nn.BatchNorm1d(4, eps=-1.0), r"eps must be in \[0.0, None\], got -1.0"),
    (lambda: nn.MaxPool2d(0), "kernel_size must be an integer >= 1, got 0"),
    (lambda: nn.MaxPool2d(2, stride=0), "stride must be an integer >= 1, got 0"),
    (lambda: nn.AvgPool2d(2, padding=2), "padding .* must be at most half the kernel size"),
    (lambda: nn.HardTanh(1.0, -1.0), "min_val must be below max_val"),
    (lambda: nn.Flatten("x"), "start_dim must be an integer"),
    (lambda: ResNet(blocks=[2, -1]), r"blocks\[1\] must be an integer >= 0, got -1"),
    (lambda: ResNet(blocks=[1] * 9), "blocks must list the blocks of 1 to 8 stages"),
    (lambda: ResNet(num_classes=0), "num_classes must be an integer >= 1, got 0"),
])
def test_layers_refuse_bad_sizes_with_what_they_got(make, match):
    with pytest.raises((ValueError, TypeError), match=match):
        make()


def _actual_bytes(module):
    return sum(v.nbytes for v in module.state_dict().values())


@pytest.mark.parametrize("module", [
    nn.Dense(7, 3), nn.Dense(7, 3, bias=False), nn.QDense(70, 5, scaling="channel"),
    nn.Conv2d(6, 4, (3, 1), groups=2), nn.QConv2d(3, 8, 3, bias=False, padding=2, dilation=2),
    nn.BatchNorm1d(5), nn.BatchNorm2d(5, momentum=None), nn.BatchNorm2d(5, affine=False),
    nn.BatchNorm2d(5, track_running_stats=False), nn.MaxPool2d(3, 1, 1), nn.QActivation(2), nn.Dropout(0.1),
    BasicBlock(16, 32, 2, binary=True), BasicBlock(16, 32, 2, binary=True, binary_shortcut=True), BasicBlock(8, 8),
    ResNet(blocks=[1, 0, 2], num_classes=3, in_channels=2, binary_stages=[1, 3]),
] + [bitnet.models.get(n, seed=0) for n in bitnet.models.registry.names()], ids=lambda m: type(m).__name__)
def test_state_bytes_is_what_the_constructor_allocates(module):
    # a file's model is sized from its config alone: the formula must agree with the layers, exactly
    node = architecture(module)
    assert limits.model_bytes(node, "<test>")[0] == _actual_bytes(module)


# -- a file's layer arguments: BitnetFileError naming the node, before anything is built ------------

def _with_architecture(path, arch):
    with h5py.File(path, "r+") as f:
        f.attrs["architecture"] = np.void(zlib.compress(json.dumps(arch).encode()))
    return path


def _edited(path, edit):
    with h5py.File(path, "r+") as f:
        arch = json.loads(zlib.decompress(bytes(f.attrs["architecture"])))
        edit({c["name"]: c for c in arch["children"]}, arch)
        f.attrs["architecture"] = np.void(zlib.compress(json.dumps(arch).encode()))
    return path


@pytest.mark.parametrize("node,arg,value", [
    ("5", "groups", 0), ("5", "kernel_size", [0, 0]), ("0", "in_channels", 0), ("0", "stride", [1, 0]),
    ("0", "padding", [100, 100]), ("0", "dilation", -1), ("5", "out_channels", -64), ("1", "num_features", 0),
    ("3", "kernel_size", [0, 2]), ("9", "in_features", 0), ("13", "out_features", -10), ("1", "eps", "x"),
])
@pytest.mark.parametrize("kind", ["checkpoint", "packed"])
def test_bad_layer_arguments_in_a_file_are_file_errors(node, arg, value, kind, tmp_path):
    model = bitnet.models.get("lenet-binary", seed=0)
    path = tmp_path / "m.h5"
    (bitnet.save if kind == "checkpoint" else bitnet.convert)(model, path)
    _edited(path, lambda nodes, arch: nodes[node]["config"].__setitem__(arg, value))
    with pytest.raises(BitnetFileError) as err:
        (bitnet.load if kind == "checkpoint" else bitnet.load_packed)(path)
    msg = str(err.value)
    assert str(path) in msg and f"config.architecture.{node}.config" in msg and arg in msg, msg


def test_negative_sizes_cannot_cancel(tmp_path):
    # Dense(65536, 65536) + Dense(-65536, 65536) summed to nothing in a parameter count
    path = tmp_path / "m.h5"
    bitnet.save(nn.Sequential(nn.Dense(2, 2)), path)
    dense = lambda name, i: {"name": name, "class": "Dense", "config": {"in_features": i, "out_features": 65536}}  # noqa: E731
    _with_architecture(path, {"class": "Sequential", "children": [dense("0", 65536), dense("1", -65536)]})
    with pytest.raises(BitnetFileError, match=r"config\.architecture\.1\.config: .*in_features must be an integer "
                                              r">= 1, got -65536"):
        bitnet.load(path)


def _peak_bytes(fn):
    tracemalloc.start()
    try:
        fn()
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    return peak


def test_a_file_cannot_describe_a_model_it_did_not_earn(tmp_path):
    # Dense(16384, 8192) is 512 MiB of float32: refused before any of it is allocated, naming the layer
    path = tmp_path / "m.h5"
    bitnet.save(nn.Sequential(nn.Dense(2, 2)), path)
    big = {"name": "0", "class": "Dense", "config": {"in_features": 16384, "out_features": 8192, "bias": True}}
    _with_architecture(path, {"class": "Sequential", "children": [big]})

    def load():
        with pytest.raises(BitnetFileError) as err:
            bitnet.load(path)
        msg = str(err.value)
        assert "config.architecture: expected a model of at most" in msg and "536903680 bytes" in msg, msg
        assert "the largest layer: config.architecture.0 (536903680 bytes)" in msg and "max_bytes" in msg, msg
    assert _peak_bytes(load) < 8 * MB
    with pytest.raises(BitnetFileError, match="at most"):
        bitnet.io.describe(path)  # the header alone tells
    with pytest.raises(BitnetFileError, match="at most"):
        bitnet.io.load_architecture(path)


def test_the_byte_bound_can_be_set(tmp_path, monkeypatch):
    path = tmp_path / "m.h5"
    bitnet.save(nn.Sequential(nn.Dense(20, 20)), path)   # 1,680 bytes of parameters
    assert bitnet.load(path, max_bytes=1680)
    with pytest.raises(BitnetFileError, match=r"at most 1679 bytes .*\(max_bytes\), found 1680 bytes"):
        bitnet.load(path, max_bytes=1679)
    monkeypatch.setenv(limits.ENV, "1000")
    with pytest.raises(BitnetFileError, match=r"at most 1000 bytes .*BITNET_MAX_MODEL_BYTES"):
        bitnet.load(path)
    monkeypatch.setenv(limits.ENV, "lots")
    with pytest.raises(ValueError, match="BITNET_MAX_MODEL_BYTES='lots': expected a number of bytes"):
        bitnet.load(path)
    monkeypatch.delenv(limits.ENV)
    # the default: at most 1 GiB, and at most 8 x the file's own size (+ 1 MiB) for a checkpoint
    size = os.path.getsize(path)
    assert limits.allowed_bytes(path, "checkpoint")[0] == 8 * size + MB
    assert limits.allowed_bytes(path, "packed")[0] == 64 * size + MB


@pytest.mark.parametrize("kwargs", [{"image_size": 150}, {"num_classes": 65536}, {"image_size": 65536},
                                    {"in_channels": 16384}])
def test_zoo_arguments_are_sized_before_allocating(kwargs, tmp_path):
    # a version 1 file names a zoo builder and its arguments: the builder runs under the byte bound
    path = tmp_path / "m.h5"
    bitnet.save(bitnet.models.get("lenet", seed=0), path)
    with h5py.File(path, "r+") as f:
        f.attrs["format_version"] = 1
        f.attrs["config"] = np.bytes_(json.dumps({"model": "lenet", "kwargs": kwargs}))
        del f.attrs["architecture"]

    def load():
        with pytest.raises(BitnetFileError) as err:
            bitnet.load(path)
        assert str(path) in str(err.value) and "at most" in str(err.value), str(err.value)
    assert _peak_bytes(load) < 16 * MB  # lenet itself is 4.6 MB; image_size=150 would be 296 MB


def test_declared_input_shapes_are_bounded(tmp_path):
    path = tmp_path / "m.h5"
    bitnet.save(bitnet.models.get("lenet", seed=0), path)
    with h5py.File(path, "r+") as f:
        config = json.loads(f.attrs["config"])
        f.attrs["config"] = np.bytes_(json.dumps(dict(config, input_shape=[3, 65536, 65536])))
    with pytest.raises(BitnetFileError, match=r"config\.input_shape: expected an input of at most 16777216 values"):
        bitnet.io.describe(path)
    with h5py.File(path, "r+") as f:
        config.pop("input_shape")
        config["zoo"]["kwargs"]["image_size"] = 65536
        f.attrs["config"] = np.bytes_(json.dumps(config))
    with pytest.raises(BitnetFileError, match=r"config\.zoo\.kwargs \(in_channels, image_size\): expected an input"):
        bitnet.io.describe(path)


# -- storage: a correctly shaped dataset in one huge chunk ------------------------------------------

def _zeros_deflated(nbytes):
    out, z, piece = zlib.compressobj(9), [], bytes(MB)
    for _ in range(nbytes // MB):
        z.append(out.compress(piece))
    return b"".join(z) + out.flush()


def _huge_chunk(path, key, chunk_bytes=256 * MB):
    """Replace ``key`` by its own values in one chunk of ``chunk_bytes`` (gzip; the file stays small)."""
    with h5py.File(path, "r+") as f:
        data = f["weights"][key][()]
        del f["weights"][key]
        cols = 8192
        ds = f["weights"].create_dataset(key, shape=data.shape, dtype=data.dtype, maxshape=(None, None),
                                         chunks=(chunk_bytes // 4 // cols, cols), compression="gzip")
        ds.id.write_direct_chunk((0, 0), _zeros_deflated(chunk_bytes))
    return path


def test_a_dataset_in_one_huge_chunk_is_refused_before_reading(tmp_path):
    path = tmp_path / "m.h5"
    bitnet.save(bitnet.models.get("lenet-binary", seed=0), path)
    _huge_chunk(path, "10.weight")  # (1000, 1024) float32, 4 MB, in one 256 MiB chunk
    assert os.path.getsize(path) < 6 * MB

    def load():
        with pytest.raises(BitnetFileError) as err:
            bitnet.load(path)
        msg = str(err.value)
        assert "weights/10.weight: expected chunks of at most the dataset's 4096000 bytes" in msg, msg
        assert "(268435456 bytes)" in msg, msg
    assert _peak_bytes(load) < 16 * MB


def test_huge_chunks_under_a_memory_limit(tmp_path):
    # the same attack with a 1 GiB chunk, loaded in a child process that may allocate 600 MB more than
    # it holds after importing bitnet: refused cleanly, never a MemoryError
    path = tmp_path / "m.h5"
    bitnet.save(bitnet.models.get("lenet-binary", seed=0), path)
    _huge_chunk(path, "10.weight", 1 << 30)
    code = ("import resource, sys, bitnet\n"
            "rss = int(open('/proc/self/statm').read().split()[0]) * resource.getpagesize()\n"
            "resource.setrlimit(resource.RLIMIT_AS, (rss + (600 << 20), resource.RLIM_INFINITY))\n"
            "try:\n"
            "    bitnet.load(sys.argv[1])\n"
            "except bitnet.BitnetFileError as e:\n"
            "    print('refused:', e)\n")
    out = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and "refused:" in out.stdout and "expected chunks of at most" in out.stdout, \
        out.stdout + out.stderr


def test_ordinary_chunked_datasets_still_load(tmp_path):
    path = tmp_path / "m.h5"
    model = bitnet.models.get("lenet-binary", seed=0)
    bitnet.save(model, path)
    with h5py.File(path, "r+") as f:  # chunks as h5py picks them, extendible, compressed: HDF5's usual choices
        data = f["weights"]["10.weight"][()]
        del f["weights"]["10.weight"]
        f["weights"].create_dataset("10.weight", data=data, maxshape=(None, None), chunks=True, compression="gzip")
    assert np.array_equal(bitnet.load(path).state_dict()["10.weight"], model.state_dict()["10.weight"])


# -- values: checksums, magnitude; bitnet writes only what it would load ----------------------------

def test_files_without_checksums_still_load(tmp_path):
    path = tmp_path / "m.h5"
    model = bitnet.models.get("lenet-binary", seed=0)
    bitnet.save(model, path)
    with h5py.File(path, "r+") as f:
        for ds in f["weights"].values():
            del ds.attrs["crc32"]
    back = bitnet.load(path)
    assert all(np.array_equal(a, b) for a, b in zip(back.state_dict().values(), model.state_dict().values()))


def test_a_flipped_bit_in_weight_data_is_caught(tmp_path):
    path = tmp_path / "m.h5"
    bitnet.save(bitnet.models.get("lenet-binary", seed=0), path)
    with h5py.File(path, "r") as f:
        offset = f["weights"]["10.weight"].id.get_offset()
    data = bytearray(path.read_bytes())
    data[offset + 12345] ^= 0x04  # one bit of one weight's mantissa: still a finite, plausible value
    path.write_bytes(bytes(data))
    with pytest.raises(BitnetFileError, match=r"weights/10\.weight: expected data whose CRC-32 is the stored"):
        bitnet.load(path)


@pytest.mark.parametrize("value,match", [(np.nan, "NaN or infinite"), (3e38, "beyond")])
def test_saving_what_would_not_load_is_refused(value, match, tmp_path):
    model = nn.Sequential(nn.Dense(3, 2))
    model[0].weight.data[0, 0] = value
    for save in (lambda p: bitnet.save(model, p), lambda p: bitnet.save_state_dict(model, p)):
        with pytest.raises(ValueError, match=match):
            save(tmp_path / "m.h5")
    assert not os.listdir(tmp_path)


def test_a_subclass_with_a_constructor_of_its_own_is_not_sized_by_its_base(tmp_path):
    # Dense's formula reads in_features / out_features: a subclass taking other arguments (or making
    # other arrays) counts as a class that cannot tell, sized by its children and the allocation limit
    @bitnet.nn.register("tests.Square")
    class Square(nn.Dense):
        def __init__(self, n=3, rng=None):
            super().__init__(n, n, rng=rng)
            self.n = n

        def get_config(self):
            return {"n": self.n}
    try:
        path = tmp_path / "m.h5"
        model = nn.Sequential(Square(4, rng=0))
        bitnet.save(model, path)
        assert np.array_equal(bitnet.load(path)[0].weight.data, model[0].weight.data)
        assert limits.model_bytes(architecture(model), path)[0] == 0  # unknown: no children listed
    finally:
        bitnet.nn.registry._CLASSES.pop("tests.Square")
