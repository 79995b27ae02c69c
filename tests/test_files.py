"""bitnet.save / bitnet.load / bitnet.load_training_state: exact round trips of every zoo model and of
a training checkpoint, atomic saves, and a clear BitnetFileError for each kind of bad file."""
from __future__ import annotations

import json
import os
import zlib

import h5py
import numpy as np
import pytest

import bitnet
from bitnet import functional as F
from bitnet.io import BitnetFileError
from bitnet.io.config import architecture
from bitnet.tensor import Tensor


def _same_state(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(sa[k].dtype == sb[k].dtype and np.array_equal(sa[k], sb[k]) for k in sa)


@pytest.mark.parametrize("name,kwargs", [(n, {}) for n in bitnet.models.registry.names()] + [
    ("resnet18-binary", {"image_size": 16, "full_precision_stages": [1, 4], "num_classes": 7}),
    ("lenet-binary", {"act_bit": 2, "weight_bit": 1})])
def test_every_zoo_model_round_trips_exactly(name, kwargs, tmp_path):
    model = bitnet.models.get(name, seed=3, **kwargs)
    for m in model.modules():  # non-trivial buffers too
        if hasattr(m, "running_mean"):
            m.running_mean[:] = np.random.default_rng(0).normal(size=m.running_mean.shape)
    path = tmp_path / "m.h5"
    bitnet.save(model, path)
    back = bitnet.load(path)
    assert type(back) is type(model) and _same_state(model, back) and repr(back) == repr(model)
    assert back.zoo_config == {"name": name, "kwargs": kwargs}
    with h5py.File(path) as f:  # readable without bitnet: plain attributes and datasets
        assert f.attrs["format"] == b"bitnet-model" and f.attrs["format_version"] == 2  # fixed-length strings
        config = json.loads(f.attrs["config"])
        assert config["zoo"] == {"model": name, "kwargs": kwargs} and len(config["input_shape"]) == 3
        arch = json.loads(zlib.decompress(bytes(f.attrs["architecture"])))  # every layer's class and config
        assert arch == architecture(model)
        assert set(f["weights"]) == set(model.state_dict())


def _train(model, opt, steps, rng):
    for _ in range(steps):
        x = Tensor(rng.standard_normal((8, 1, 28, 28)).astype(np.float32))
        y = Tensor(rng.integers(0, 10, 8))
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()


def test_checkpoint_resumes_bit_identically(tmp_path):
    # uninterrupted: 4 steps; interrupted: 2 steps, save, load everything, 2 more steps
    ref_model = bitnet.models.get("lenet-binary", seed=0)
    ref_opt = bitnet.optim.Adam(ref_model.parameters(), lr=1e-3)
    ref_rng = np.random.default_rng(5)
    _train(ref_model, ref_opt, 4, ref_rng)

    model = bitnet.models.get("lenet-binary", seed=0)
    opt = bitnet.optim.Adam(model.parameters(), lr=1e-3)
    rng = np.random.default_rng(5)
    _train(model, opt, 2, rng)
    bitnet.save(model, tmp_path / "ckpt.h5", optimizer=opt, epoch=2, rng=rng)
    del model, opt, rng

    model = bitnet.load(tmp_path / "ckpt.h5")
    opt = bitnet.optim.Adam(model.parameters(), lr=0.5)  # hyperparameters come from the checkpoint
    rng = np.random.default_rng(0)
    state = bitnet.load_training_state(tmp_path / "ckpt.h5")
    assert state.epoch == 2 and state.optimizer_class == "Adam"
    state.restore(opt, rng)
    assert opt.param_groups[0]["lr"] == 1e-3
    _train(model, opt, 2, rng)
    assert _same_state(model, ref_model)
    assert rng.bit_generator.state == ref_rng.bit_generator.state


def test_a_plain_model_file_has_no_training_state(tmp_path):
    bitnet.save(bitnet.models.get("lenet", seed=0), tmp_path / "m.h5")
    state = bitnet.load_training_state(tmp_path / "m.h5")
    assert (state.optimizer, state.epoch, state.rng) == (None, None, None)
    with pytest.raises(ValueError, match="no optimizer state"):
        state.restore(bitnet.optim.SGD(bitnet.models.get("lenet", seed=0).parameters(), lr=0.1))


def test_a_failed_save_leaves_the_old_file_intact(tmp_path, monkeypatch):
    path = tmp_path / "m.h5"
    old = bitnet.models.get("lenet-binary", seed=1)
    bitnet.save(old, path)
    calls = []
    real = h5py.Group.create_dataset

    def failing(self, name, *a, **k):
        calls.append(name)
        if len(calls) == 5:
            raise KeyboardInterrupt("killed during the save")
        return real(self, name, *a, **k)
    monkeypatch.setattr(h5py.Group, "create_dataset", failing)
    with pytest.raises(KeyboardInterrupt):
        bitnet.save(bitnet.models.get("lenet-binary", seed=2), path)
    monkeypatch.undo()
    assert _same_state(bitnet.load(path), old)
    assert os.listdir(tmp_path) == ["m.h5"]  # no temporary file left behind


def test_saving_what_cannot_be_rebuilt_is_refused(tmp_path):
    class Custom(bitnet.nn.Module):
        def forward(self, x):
            return x
    with pytest.raises(TypeError, match=r"model is a .*Custom, which is not registered.*@bitnet.nn.register"):
        bitnet.save(Custom(), tmp_path / "x.h5")
    with pytest.raises(TypeError, match=r"model\.1 is a .*Custom, which is not registered"):
        bitnet.save(bitnet.nn.Sequential(bitnet.nn.Dense(2, 2), Custom()), tmp_path / "x.h5")
    changed = bitnet.nn.Sequential(bitnet.nn.Dense(2, 2))
    changed[0].add_module("extra", bitnet.nn.ReLU())  # a child its constructor does not build
    with pytest.raises(TypeError, match="changed after construction"):
        bitnet.save(changed, tmp_path / "x.h5")
    with pytest.raises(ValueError, match="epoch must be a non-negative int"):
        bitnet.save(bitnet.models.get("lenet", seed=0), tmp_path / "x.h5", epoch=-1)
    assert not os.path.exists(tmp_path / "x.h5")


def _custom_binary_net():
    nn = bitnet.nn
    return nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1, rng=0), nn.BatchNorm2d(16), nn.ReLU(), nn.MaxPool2d(2),
        nn.QActivation(1), nn.QConv2d(16, 70, 3, padding=1, pad_value=-1, scaling="channel", rng=1), nn.BatchNorm2d(70),
        nn.Sequential(nn.AvgPool2d(2), nn.Flatten()), nn.Dropout(0.1),
        nn.QDense(70 * 7 * 7, 40, rng=2), nn.BatchNorm1d(40), nn.HardTanh(),
        nn.QDense(40, 12, act_bit=2, weight_bit=1, rng=3), nn.Tanh(), nn.Dense(12, 10, rng=4))


def test_a_sequential_of_bitnet_layers_round_trips_and_converts(tmp_path):
    model = _custom_binary_net().eval()
    bitnet.save(model, tmp_path / "m.h5")
    back = bitnet.load(tmp_path / "m.h5").eval()
    assert _same_state(model, back) and repr(back) == repr(model)
    x = Tensor(np.random.default_rng(0).standard_normal((3, 1, 28, 28)).astype(np.float32))
    with bitnet.no_grad():
        assert np.array_equal(back(x).data, model(x).data)
        bitnet.convert(model, tmp_path / "p.h5")
        packed = bitnet.load_packed(tmp_path / "p.h5")
        assert packed.packed_layers == bitnet.pack(model).packed_layers == ["5", "9"]
        assert np.array_equal(packed(x).data, bitnet.pack(model)(x).data)


def _dense(**config):
    return {"class": "Dense", "config": dict({"in_features": 2, "out_features": 2, "bias": True}, **config)}


@pytest.mark.parametrize("arch,where", [
    ({"class": "os.system", "config": {}}, "config.architecture.class"),
    ({"class": "Sequential", "children": [dict(name="0", **_dense(__class__=1))]}, "config.__class__"),
    ({"class": "Sequential", "children": [dict(name="0", **_dense(in_features=60000, out_features=60000))]},
     "at most"),
    ({"class": "Sequential", "children": [dict(name="0", **_dense(in_features=10 ** 12))]}, "integer within"),
    ({"class": "Sequential", "children": [dict(name="0", **_dense(in_features="x"))]}, "config"),
    ({"class": "Sequential", "children": [dict(name="0", **_dense(out_features=3))]}, "weights/0.weight"),
    ({"class": "Sequential", "children": [dict(name="a.b", **_dense())]}, "children[0].name"),
    ({"class": "Sequential", "config": {}, "children": []}, "no config for a Sequential"),
    ({"class": "Dense", "config": {"in_features": 2, "out_features": 2}, "children": [
        {"name": "x", "class": "ReLU", "config": {}}]}, "the file was written with another version"),
])
def test_bad_architectures_are_refused_before_reading_weights(arch, where, tmp_path):
    path = tmp_path / "m.h5"
    bitnet.save(bitnet.nn.Sequential(bitnet.nn.Dense(2, 2)), path)
    with h5py.File(path, "r+") as f:
        f.attrs["architecture"] = np.void(zlib.compress(json.dumps(arch).encode()))
    with pytest.raises(BitnetFileError) as err:
        bitnet.load(path)
    assert where in str(err.value) and str(path) in str(err.value), str(err.value)


def _v1_file(path, config, model):
    """A file as bitnet wrote it in format version 1: the config attribute alone describes the model."""
    bitnet.save(model, path)
    with h5py.File(path, "r+") as f:
        f.attrs["format_version"] = 1
        f.attrs["config"] = np.bytes_(json.dumps(config))
        del f.attrs["architecture"]
    return path


def test_version_1_files_still_load(tmp_path):
    lenet = bitnet.models.get("lenet-binary", seed=1)
    back = bitnet.load(_v1_file(tmp_path / "zoo.h5", {"model": "lenet-binary", "kwargs": {}}, lenet))
    assert _same_state(back, lenet) and back.zoo_config == {"name": "lenet-binary", "kwargs": {}}
    seq = bitnet.nn.Sequential(bitnet.nn.QDense(4, 3, rng=0), bitnet.nn.Sequential(bitnet.nn.Tanh()))
    v1 = {"layers": [{"class": "QDense", "args": {"in_features": 4, "out_features": 3, "bias": True, "act_bit": 32,
                                                  "weight_bit": 32, "input_quantizer": {"name": "ste_sign"},
                                                  "kernel_quantizer": {"name": "ste_sign"}, "kernel_clip": True}},
                     {"class": "Sequential", "layers": [{"class": "Tanh", "args": {}}]}]}
    back = bitnet.load(_v1_file(tmp_path / "seq.h5", v1, seq))
    assert _same_state(back, seq) and repr(back) == repr(seq)


def test_binary_resnets_written_with_a_relu_stem_load_with_it(tmp_path):
    """resnet18-binary's stem ended in a ReLU until it lost it (models/resnet.py): files from before
    keep theirs. Version 2 files rebuild from their architecture (ResNet's stem_relu defaults to the
    old layout), version 1 files from the zoo builder, told the old layout."""
    from bitnet.models.resnet import ResNet
    old = ResNet(blocks=(1, 1), binary_stages=(1, 2), seed=0)  # as the zoo built it then
    assert type(old.stem[2]).__name__ == "ReLU"
    old.zoo_config = {"name": "resnet18-binary", "kwargs": {}}
    bitnet.save(old, tmp_path / "v2.h5")
    x = bitnet.Tensor(np.random.default_rng(0).standard_normal((2, 3, 32, 32)).astype(np.float32))
    back = bitnet.load(tmp_path / "v2.h5").eval()
    assert len(back.stem) == 3 and np.array_equal(back(x).data, old.eval()(x).data)
    zoo = bitnet.models.get("resnet18-binary", seed=1, stem_relu=True)
    back = bitnet.load(_v1_file(tmp_path / "v1.h5", {"model": "resnet18-binary", "kwargs": {}}, zoo)).eval()
    assert len(back.stem) == 3 and _same_state(back, zoo)
    assert np.array_equal(back(x).data, zoo.eval()(x).data)
    new = bitnet.models.get("resnet18-binary", seed=1)  # today's: no ReLU, and so its files
    bitnet.save(new, tmp_path / "new.h5")
    assert len(bitnet.load(tmp_path / "new.h5").stem) == 2


@pytest.mark.parametrize("layers,where", [
    ([{"class": "os.system", "args": {}}], "config.architecture.0.class"),
    ([{"class": "Dense", "args": {"in_features": 60000, "out_features": 60000}}], "at most"),
    ([{"class": "Sequential", "layers": []}], "non-empty list"),
    ([], "non-empty list"),
])
def test_bad_version_1_layer_configs_are_refused_before_building(layers, where, tmp_path):
    path = _v1_file(tmp_path / "m.h5", {"layers": [{"class": "Dense", "args": {"in_features": 2, "out_features": 2}}]},
                    bitnet.nn.Sequential(bitnet.nn.Dense(2, 2)))
    with h5py.File(path, "r+") as f:
        f.attrs["config"] = np.bytes_(json.dumps({"layers": layers}))
    with pytest.raises(BitnetFileError) as err:
        bitnet.load(path)
    assert where in str(err.value) and str(path) in str(err.value), str(err.value)


# -- bad files: each raises BitnetFileError naming the file and the key ------------------------------

def _good(tmp_path):
    path = tmp_path / "good.h5"
    bitnet.save(bitnet.models.get("lenet-binary", seed=0), path)
    return path


def _edit(path, fn):
    with h5py.File(path, "r+") as f:
        fn(f)
    return path


def _config(f, **changes):
    cfg = json.loads(f.attrs["config"])
    cfg.update(changes)
    f.attrs["config"] = np.bytes_(json.dumps(cfg))


def _kwargs(f, **changes):
    cfg = json.loads(f.attrs["config"])
    cfg["zoo"]["kwargs"].update(changes)
    f.attrs["config"] = np.bytes_(json.dumps(cfg))


def _zoo(f, **changes):
    cfg = json.loads(f.attrs["config"])
    cfg["zoo"].update(changes)
    f.attrs["config"] = np.bytes_(json.dumps(cfg))


def _replace(f, key, data):
    del f["weights"][key]
    f["weights"].create_dataset(key, data=data)


BAD = {
    "format name": (lambda f: f.attrs.__setitem__("format", np.bytes_("keras")), "attribute 'format'"),
    "variable-length string": (lambda f: f.attrs.__setitem__("format", "bitnet-model"), "fixed-length string"),
    "format version": (lambda f: f.attrs.__setitem__("format_version", 3), "attribute 'format_version'"),
    "architecture damaged": (lambda f: f.attrs.__setitem__("architecture", np.void(b"x\x9c" + b"\x00" * 40)),
                             "attribute 'architecture'"),
    "architecture a zip bomb": (lambda f: f.attrs.__setitem__("architecture", np.void(zlib.compress(b" " * (1 << 25)))),
                                "compressed JSON of at most"),
    "architecture not JSON": (lambda f: f.attrs.__setitem__("architecture", np.void(zlib.compress(b"{"))), "invalid JSON"),
    "no config": (lambda f: f.attrs.__delitem__("config"), "attribute 'config'"),
    "config not JSON": (lambda f: f.attrs.__setitem__("config", np.bytes_("{model: lenet")), "invalid JSON"),
    "unknown model": (lambda f: _zoo(f, model="os.system"), "config.zoo.model"),
    "unknown argument": (lambda f: _kwargs(f, __import__="os"), "config.zoo.kwargs.__import__"),
    "absurd size": (lambda f: _kwargs(f, num_classes=10 ** 12), "config.zoo.kwargs.num_classes"),
    "unknown config key": (lambda f: _config(f, evil=1), "'architecture' (and 'zoo', 'input_shape')"),
    "bad input shape": (lambda f: _config(f, input_shape=[0, 28]), "config.input_shape"),
    "missing weight": (lambda f: f["weights"].__delitem__("5.weight"), "weights/5.weight"),
    "extra weight": (lambda f: f["weights"].create_dataset("evil", data=np.zeros(3)), "weights/evil"),
    "wrong shape": (lambda f: _replace(f, "0.weight", np.zeros((64, 1, 5, 4), np.float32)), "shape"),
    "huge claimed shape": (lambda f: (f["weights"].__delitem__("13.weight"), f["weights"].create_dataset(
        "13.weight", shape=(10 ** 6, 10 ** 6), dtype="f4", chunks=(1, 1024))), "shape (10, 1000)"),
    "wrong dtype": (lambda f: _replace(f, "0.bias", np.zeros(64, np.float64)), "dtype float32"),
    # files without checksums (written before they came) are still read; their values are checked
    "NaN weight": (lambda f: _set_unchecked(f, "13.bias", np.nan), "finite values"),
    "huge weight": (lambda f: _set_unchecked(f, "13.bias", 3e38), "within +-2^64"),
    "edited weight": (lambda f: f["weights"]["13.bias"].__setitem__(0, 0.5), "CRC-32"),
    "bad checksum attribute": (lambda f: f["weights"]["13.bias"].attrs.__setitem__("crc32", "x"), "attribute 'crc32'"),
    "weights not a group": (lambda f: (f.__delitem__("weights"), f.create_dataset("weights", data=1)), "weights"),
    # a file may not make the reader open other files: links and external or virtual data are refused
    "external link": (lambda f: _link(f, "13.bias", h5py.ExternalLink("/etc/passwd", "/x")), "ExternalLink"),
    "soft link": (lambda f: _link(f, "13.bias", h5py.SoftLink("/weights/0.bias")), "SoftLink"),
    "external raw data": (lambda f: _link(f, "13.bias", None, external=[("/etc/hostname", 0, 40)]),
                          "raw data in external files"),
    "virtual dataset": (lambda f: _link(f, "13.bias", None, virtual=True), "a virtual dataset"),
    "unknown compression filter": (lambda f: _unknown_filter(f, "13.bias"), "a damaged dataset"),
}


def _set_unchecked(f, key, value):
    ds = f["weights"][key]
    del ds.attrs["crc32"]
    ds[0] = value


def _link(f, key, link, external=None, virtual=False):
    g = f["weights"]
    shape = g[key].shape
    del g[key]
    if link is not None:
        g[key] = link
    elif external:
        g.create_dataset(key, shape=shape, dtype="f4", external=external)
    else:
        layout = h5py.VirtualLayout(shape=shape, dtype="f4")
        layout[:] = h5py.VirtualSource("other.h5", "data", shape=shape)
        g.create_virtual_dataset(key, layout)


def _unknown_filter(f, key):
    # a chunked dataset whose filter (id 31999, registered nowhere) cannot be applied at read time
    g = f["weights"]
    shape = g[key].shape
    del g[key]
    ds = g.create_dataset(key, shape=shape, dtype="f4", chunks=shape, compression=31999, allow_unknown_filter=True)
    ds.id.write_direct_chunk((0,), np.zeros(shape, np.float32).tobytes())


def test_compressed_and_chunked_weights_are_valid(tmp_path):
    # HDF5's standard storage choices (chunks, gzip, shuffle, big-endian on disk is a dtype change) load
    model = bitnet.models.get("lenet-binary", seed=0)
    path = _edit(_good(tmp_path), lambda f: [_replace_chunked(f, k) for k in ("0.weight", "13.bias")])
    loaded = bitnet.load(path)
    for (k, a), b in zip(model.state_dict().items(), loaded.state_dict().values()):
        assert np.array_equal(a, b), k


def _replace_chunked(f, key):
    data = f["weights"][key][()]
    del f["weights"][key]
    f["weights"].create_dataset(key, data=data, chunks=True, compression="gzip", shuffle=True)


def test_a_training_state_cannot_claim_absurd_sizes_or_links(tmp_path):
    model = bitnet.models.get("lenet-binary", seed=0)
    opt = bitnet.optim.Adam(model.parameters(), lr=1e-3)
    loss = (model(bitnet.Tensor(np.ones((2, 1, 28, 28), np.float32))) ** 2).mean()
    loss.backward()
    opt.step()
    path = tmp_path / "ckpt.h5"
    bitnet.save(model, path, optimizer=opt, epoch=1)
    assert bitnet.load_training_state(path).epoch == 1

    def huge(f):
        entries = f["training/optimizer/state/0"]
        name = next(iter(entries))
        del entries[name]
        entries.create_dataset(name, shape=(10 ** 6, 10 ** 6), dtype="f4", chunks=(1, 1024))
    with pytest.raises(BitnetFileError, match="shaped as one of the model's parameters"):
        bitnet.load_training_state(_edit(path, huge))
    bitnet.save(model, path, optimizer=opt, epoch=1)

    def external(f):
        del f["training/optimizer/state/1"]
        f["training/optimizer/state/1"] = h5py.ExternalLink("x.h5", "/")
    with pytest.raises(BitnetFileError, match="ExternalLink"):
        bitnet.load_training_state(_edit(path, external))


@pytest.mark.parametrize("case", BAD)
def test_bad_files_raise_one_clear_error(case, tmp_path):
    edit, where = BAD[case]
    path = _edit(_good(tmp_path), edit)
    with pytest.raises(BitnetFileError, match=None) as err:
        bitnet.load(path)
    msg = str(err.value)
    assert str(path) in msg and where in msg and "expected" in msg, msg


def test_not_an_hdf5_file_and_a_truncated_one(tmp_path):
    text = tmp_path / "notes.h5"
    text.write_text("hello")
    with pytest.raises(BitnetFileError, match="an HDF5 file"):
        bitnet.load(text)
    good = _good(tmp_path)
    data = good.read_bytes()
    for cut in (100, len(data) // 2, len(data) - 1000):
        bad = tmp_path / f"cut{cut}.h5"
        bad.write_bytes(data[:cut])
        with pytest.raises(BitnetFileError, match=str(bad)):
            bitnet.load(bad)
    with pytest.raises(FileNotFoundError, match="no such model file"):
        bitnet.load(tmp_path / "missing.h5")


def test_sigkill_during_saves_leaves_a_loadable_file(tmp_path):
    # a process saving a big model over and over is killed (SIGKILL: no cleanup at all) at several
    # moments; each time the file must load, as the old or the new model, and only it may remain
    import signal
    import subprocess
    import sys
    import time
    path = tmp_path / "m.h5"
    bitnet.save(bitnet.models.get("resnet18-binary", seed=0), path)
    code = ("import sys, bitnet\n"
            "m = bitnet.models.get('resnet18-binary', seed=1)\n"
            "print('ready', flush=True)\n"
            "while True:\n"
            "    bitnet.save(m, sys.argv[1])\n")
    seeds = {0: bitnet.models.get("resnet18-binary", seed=0), 1: bitnet.models.get("resnet18-binary", seed=1)}
    for delay in (0.05, 0.2, 0.45, 0.8):
        proc = subprocess.Popen([sys.executable, "-c", code, str(path)], stdout=subprocess.PIPE, text=True)
        assert proc.stdout.readline().strip() == "ready"
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        loaded = bitnet.load(path)
        assert any(_same_state(loaded, m) for m in seeds.values())
    leftovers = [p for p in os.listdir(tmp_path) if p != "m.h5"]
    assert all(p.startswith(".bitnet-") and p.endswith(".h5.tmp") for p in leftovers)  # a killed writer's temp


def test_layer_options_and_later_changes_are_saved(tmp_path):
    nn = bitnet.nn
    model = nn.Sequential(nn.Conv2d(1, 4, 3, rng=0), nn.BatchNorm2d(4, affine=False, momentum=None),
                          nn.MaxPool2d(2, ceil_mode=True), nn.AvgPool2d(3, 1, 1, count_include_pad=False),
                          nn.Flatten(1, -1), nn.Dropout(0.3, rng=0), nn.HardTanh(-2.0, 0.5), nn.Dense(36, 2, rng=0))
    model[5].p = 0.2          # hyperparameters changed after construction are what the file stores
    model[1].eps = 1e-3
    model.train()(Tensor(np.random.default_rng(0).standard_normal((3, 1, 7, 7)).astype(np.float32)))
    bitnet.save(model, tmp_path / "m.h5")
    back = bitnet.load(tmp_path / "m.h5")
    assert repr(back) == repr(model) and _same_state(model, back)
    assert back[5].p == 0.2 and back[1].eps == 1e-3 and back[1].num_batches_tracked == 1
    assert architecture(back) == architecture(model)
