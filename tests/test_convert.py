"""bitnet.convert / bitnet.load_packed: packed deployment files (1 bit per binary weight) that load as the
packed model and compute exactly what bitnet.pack computes; their sizes, as bitnet.summary predicts."""
from __future__ import annotations

import os

import h5py
import numpy as np
import pytest

import bitnet
from bitnet.io import BitnetFileError
from bitnet.tensor import Tensor, no_grad

CASES = [("lenet-binary", {}, (1, 28, 28)), ("binary-vgg-small", {}, (1, 28, 28)),
         ("resnet18-binary", {"image_size": 16, "shortcut": "binary"}, (3, 16, 16)),
         ("resnet18-binary", {"image_size": 16}, (3, 16, 16)),
         ("resnet18-binary", {"image_size": 16, "full_precision_stages": [1]}, (3, 16, 16))]


def _trained_like(name, kwargs):
    model = bitnet.models.get(name, seed=2, **kwargs)
    rng = np.random.default_rng(0)
    for m in model.modules():
        if hasattr(m, "running_mean"):
            m.running_mean[:] = rng.normal(size=m.running_mean.shape)
            m.running_var[:] = rng.uniform(0.5, 2, size=m.running_var.shape)
    return model.eval()


@pytest.mark.parametrize("name,kwargs,shape", CASES, ids=lambda c: str(c))
def test_packed_file_loads_as_the_packed_model(name, kwargs, shape, tmp_path):
    model = _trained_like(name, kwargs)
    path = tmp_path / "packed.h5"
    bitnet.convert(model, path)
    loaded = bitnet.load_packed(path)
    direct = bitnet.pack(model)
    assert loaded.packed_layers == direct.packed_layers and loaded.packed_layers
    x = Tensor(np.random.default_rng(1).standard_normal((3,) + shape).astype(np.float32))
    with no_grad():
        assert np.array_equal(loaded(x).data, direct(x).data)
    mods = dict(direct.named_modules())
    with h5py.File(path) as f:  # 1 bit per binary weight, with the convention in the attributes
        for lname in direct.packed_layers:
            layer = mods[lname] if hasattr(mods[lname], "filters") else mods[lname].conv
            key = f"{lname}.filters" if hasattr(mods[lname], "filters") else f"{lname}.conv.filters"
            ds = f["weights"][key]
            k = (layer.in_channels // layer.groups) * layer.kernel_size[0] * layer.kernel_size[1]
            assert ds.dtype == np.uint64 and ds.shape[0] == layer.out_channels
            assert ds.shape[1] * 64 >= k and (ds.attrs["bit1"], ds.attrs["pad"], ds.attrs["k"]) == (-1, 0, k)


@pytest.mark.parametrize("name,kwargs,shape", CASES + [("resnet18-binary", {}, (3, 32, 32)),
                                                       ("resnet18-binary", {"shortcut": "binary"}, (3, 32, 32))],
                         ids=lambda c: str(c))
def test_summary_predicts_the_file_size_within_one_percent(name, kwargs, shape, tmp_path):
    model = _trained_like(name, kwargs)
    bitnet.convert(model, tmp_path / "p.h5")
    real = os.path.getsize(tmp_path / "p.h5")
    predicted = bitnet.summary(model, shape, file=open(os.devnull, "w")).file_bytes
    assert abs(predicted - real) <= 0.01 * real, (predicted, real)


def test_lenet_binary_file_size(tmp_path):
    bitnet.convert(bitnet.models.get("lenet-binary", seed=0), tmp_path / "l.h5")
    size = os.path.getsize(tmp_path / "l.h5")
    assert size <= 206_000  # BMXNet's binary LeNet file: 206 KB; float32: 4.6 MB
    assert size < bitnet.models.get("lenet-binary").num_parameters() * 4 / 22


def test_convert_from_a_checkpoint_file_and_kind_checks(tmp_path):
    model = _trained_like("lenet-binary", {})
    bitnet.save(model, tmp_path / "ckpt.h5")
    bitnet.convert(str(tmp_path / "ckpt.h5"), tmp_path / "packed.h5")
    x = Tensor(np.random.default_rng(2).standard_normal((2, 1, 28, 28)).astype(np.float32))
    with no_grad():
        assert np.array_equal(bitnet.load_packed(tmp_path / "packed.h5")(x).data, bitnet.pack(model)(x).data)
    with pytest.raises(BitnetFileError, match="load a checkpoint with bitnet.load"):
        bitnet.load_packed(tmp_path / "ckpt.h5")
    with pytest.raises(BitnetFileError, match="load a packed file with bitnet.load_packed"):
        bitnet.load(tmp_path / "packed.h5")


def _bad(tmp_path, edit):
    path = tmp_path / "p.h5"
    bitnet.convert(bitnet.models.get("lenet-binary", seed=0), path)
    with h5py.File(path, "r+") as f:
        edit(f["weights"])
    return path


@pytest.mark.parametrize("edit,where", [
    (lambda w: (w["10.conv.scale"].attrs.__delitem__("crc32"), w["10.conv.scale"].__setitem__(3, np.inf)),
     "finite values"),  # a file without checksums (older); with one, any edit is caught:
    (lambda w: w["10.conv.scale"].__setitem__(3, 2.0), "CRC-32"),
    (lambda w: (w.__delitem__("5.filters"), w.create_dataset("5.filters", data=np.zeros((64, 25), np.int64))),
     "dtype uint64"),
    (lambda w: (w.__delitem__("5.filters"), w.create_dataset("5.filters", data=np.zeros((64, 24), np.uint64))),
     "shape (64, 25)"),
    (lambda w: w.__delitem__("5.shift"), "weights/5.shift"),
])
def test_bad_packed_files_raise_one_clear_error(edit, where, tmp_path):
    path = _bad(tmp_path, edit)
    with pytest.raises(BitnetFileError) as err:
        bitnet.load_packed(path)
    assert str(path) in str(err.value) and where in str(err.value), str(err.value)


def test_padding_bits_are_detected():
    # no zoo layer has channels beyond a word boundary; a 70-channel layer does (6 padding bits per
    # tap's second word), and load_packed refuses words whose padding bits are set
    from bitnet.io.packed import masked as _masked
    from bitnet.packed import PackedConv2d
    layer = PackedConv2d.from_layer(bitnet.nn.QConv2d(70, 8, 3, rng=0))
    words = np.full((8, 9 * 2), np.uint64(2 ** 64 - 1), np.uint64)
    masked = _masked(words, layer)
    assert np.all(masked[:, 0::2] == np.uint64(2 ** 64 - 1)) and np.all(masked[:, 1::2] == np.uint64(2 ** 6 - 1))


def test_resnet18_binary_bmxnet_layout_file_size(tmp_path):
    # BMXNet's layout (float stem and classifier, binary downsampling shortcuts): at least 30x smaller
    # than float32 (44.7 MB); BMXNet's own file: 1.49 MB
    model = bitnet.models.get("resnet18-binary", shortcut="binary", seed=0)
    bitnet.convert(model, tmp_path / "r.h5")
    size = os.path.getsize(tmp_path / "r.h5")
    float32 = 4 * bitnet.models.get("resnet18", seed=0).num_parameters()
    assert float32 / size >= 30 and size <= 1.49e6, (size, float32)


def test_load_packed_packs_nothing(tmp_path, monkeypatch):
    # the packed structure comes from the file's architecture: no weights are packed or folded at load
    model = bitnet.models.get("resnet18-binary", seed=0)
    bitnet.convert(model, tmp_path / "r.h5")
    from bitnet.kernels import xnor_conv
    from bitnet.packed import layers

    def forbidden(*a, **k):
        raise AssertionError("load_packed packed or folded weights")
    monkeypatch.setattr(xnor_conv, "pack_filters", forbidden)
    monkeypatch.setattr(layers, "fold_batchnorm", forbidden)
    packed = bitnet.load_packed(tmp_path / "r.h5")
    monkeypatch.undo()
    x = Tensor(np.random.default_rng(0).standard_normal((2, 3, 32, 32)).astype(np.float32))
    with bitnet.no_grad():
        assert np.array_equal(packed(x).data, bitnet.pack(model)(x).data)
