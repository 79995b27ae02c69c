"""Your own networks in HDF5: a Module subclass with a custom quantizer saves, loads in a fresh process once
its class is registered (and names the class to register when it is not), and converts to a packed file
that runs it on bits; weights-only files (save_state_dict / load_state_dict)."""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import zlib

import h5py
import numpy as np
import pytest

import bitnet
from bitnet.io import BitnetFileError
from bitnet.tensor import Tensor

# A user's module file: a quantizer and a network of their own, registered for model files.
MYNET = textwrap.dedent('''
    import numpy as np
    import bitnet
    from bitnet import functional as F, nn, quantizers as Q
    from bitnet.tensor import Function

    class _WideSteFn(Function):
        """sign(x); gradient passed where |x| <= 2."""
        def forward(self, x):
            self.x = x
            return np.where(x < 0, x.dtype.type(-1), x.dtype.type(1))
        def backward(self, g):
            return np.where(np.abs(self.x) <= 2, g, g.dtype.type(0))

    @Q.register("wide_ste")
    class WideSte(Q.Quantizer):
        function, precision, output = _WideSteFn, 1, "sign"

    @bitnet.nn.register
    class MyNet(nn.Module):
        def __init__(self, width=12, classes=5, quantizer="wide_ste", rng=None):
            super().__init__()
            self.stem = nn.Sequential(nn.Conv2d(1, width, 3, padding=1, rng=rng), nn.BatchNorm2d(width))
            self.body = nn.QConv2d(width, width, 3, padding=1, input_quantizer=quantizer,
                                   kernel_quantizer="ste_sign", bias=False, rng=rng)
            self.bn = nn.BatchNorm2d(width)
            self.head = nn.Dense(width, classes, rng=rng)

        def forward(self, x):
            y = self.stem(x)
            y = F.relu(self.bn(self.body(y)) + y)
            return self.head(F.mean(y, axis=(2, 3)))
''')


@pytest.fixture
def mynet(tmp_path, monkeypatch):
    (tmp_path / "mynet.py").write_text(MYNET)
    monkeypatch.syspath_prepend(str(tmp_path))
    sys.modules.pop("mynet", None)
    import mynet
    yield mynet
    sys.modules.pop("mynet", None)


def _fresh_python(code, folder):
    res = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, cwd=folder,
                         env={**__import__("os").environ, "PYTHONPATH": str(folder)}, timeout=600)
    return res


def _trained(mynet):
    model = mynet.MyNet(width=12, rng=0)
    opt = bitnet.optim.Adam(model.parameters(), lr=1e-2)
    rng = np.random.default_rng(1)
    for _ in range(3):
        x = Tensor(rng.standard_normal((8, 1, 6, 6)).astype(np.float32))
        loss = bitnet.functional.cross_entropy(model(x), rng.integers(0, 5, 8))
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


def test_own_network_saves_loads_in_a_fresh_process_and_converts(mynet, tmp_path):
    model = _trained(mynet)
    assert model.body.binary_input and model.body.runs_on_bits()  # the custom quantizer says it is a sign
    x = np.random.default_rng(2).standard_normal((4, 1, 6, 6)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    with bitnet.no_grad():
        np.save(tmp_path / "float.npy", model(Tensor(x)).data)
        np.save(tmp_path / "packed.npy", bitnet.pack(model)(Tensor(x)).data)
    bitnet.save(model, tmp_path / "mynet.h5", input_shape=(1, 6, 6))
    bitnet.convert(model, tmp_path / "mynet.packed.h5")
    with h5py.File(tmp_path / "mynet.h5") as f:  # the file describes every layer, the user's included
        arch = json.loads(zlib.decompress(bytes(f.attrs["architecture"])))
    assert arch["class"] == "MyNet" and arch["config"] == {"width": 12, "classes": 5, "quantizer": "wide_ste"}
    body = next(c for c in arch["children"] if c["name"] == "body")
    assert body["config"]["input_quantizer"] == {"name": "wide_ste"}

    # a fresh process that has not imported the class: a clear error naming the class to register
    res = _fresh_python("""
        import bitnet
        try:
            bitnet.load("mynet.h5")
        except bitnet.BitnetFileError as e:
            print("ERROR", e)
    """, tmp_path)
    assert res.returncode == 0, res.stderr
    assert "ERROR" in res.stdout and "'MyNet'" in res.stdout and "@bitnet.nn.register" in res.stdout

    # after importing (registering) it: the same weights, outputs, and the packed file runs on bits
    res = _fresh_python("""
        import numpy as np, bitnet, mynet
        from bitnet.tensor import Tensor
        x = np.load("x.npy")
        model = bitnet.load("mynet.h5").eval()
        packed = bitnet.load_packed("mynet.packed.h5")
        with bitnet.no_grad():
            assert np.array_equal(model(Tensor(x)).data, np.load("float.npy"))
            assert np.array_equal(packed(Tensor(x)).data, np.load("packed.npy"))
        assert type(model).__name__ == "MyNet" and packed.packed_layers == ["body"]
        print("OK", bitnet.io.describe("mynet.h5")["input_shape"])
    """, tmp_path)
    assert res.returncode == 0, res.stderr
    assert res.stdout.split() == ["OK", "[1,", "6,", "6]"]


def test_a_module_changed_after_construction_or_unregistered_quantizer_is_refused(mynet, tmp_path):
    class Unregistered(bitnet.quantizers.SteSign):
        pass
    model = mynet.MyNet(quantizer=Unregistered(), rng=0)
    with pytest.raises(TypeError, match="Unregistered is not registered"):
        bitnet.save(model, tmp_path / "x.h5")
    model = mynet.MyNet(rng=0)
    model.head = bitnet.nn.Dense(12, 7)  # not what MyNet(classes=5) builds: the file could not load
    with pytest.raises(TypeError, match="changed after construction"):
        bitnet.save(model, tmp_path / "x.h5")


def test_a_notebook_cell_run_twice_registers_again(mynet):
    namespace = {"__name__": "mynet"}  # the module of the classes registered by the fixture's import
    exec(compile(MYNET, "<cell>", "exec"), namespace)
    exec(compile(MYNET, "<cell>", "exec"), namespace)  # same names, new class objects: replaced
    assert bitnet.nn.registry.lookup("MyNet") is namespace["MyNet"]
    with pytest.raises(ValueError, match="already registered"):
        bitnet.nn.register("MyNet")(type("Other", (bitnet.nn.Module,), {}))


def test_state_dict_files(tmp_path):
    model = bitnet.models.get("lenet-binary", seed=3)
    bitnet.save_state_dict(model, tmp_path / "w.h5")
    other = bitnet.models.get("lenet-binary", seed=4)
    other.load_state_dict(bitnet.load_state_dict(tmp_path / "w.h5"))
    assert all(np.array_equal(a, b) for a, b in zip(model.state_dict().values(), other.state_dict().values()))
    checked = bitnet.load_state_dict(tmp_path / "w.h5", like=other)
    assert list(checked) == list(other.state_dict())
    with pytest.raises(BitnetFileError, match="unexpected key"):
        bitnet.load_state_dict(tmp_path / "w.h5", like=bitnet.nn.Sequential(bitnet.nn.Conv2d(1, 3, 3)))
    with pytest.raises(BitnetFileError, match="'state_dict'"):
        bitnet.load_state_dict(bitnet.save(model, tmp_path / "c.h5") or tmp_path / "c.h5")
    with pytest.raises(BitnetFileError, match="'checkpoint'"):
        bitnet.load(tmp_path / "w.h5")
    with pytest.raises(ValueError, match="without '/'"):
        bitnet.save_state_dict({"a/b": np.zeros(2)}, tmp_path / "bad.h5")
    with h5py.File(tmp_path / "w.h5", "r+") as f:
        f["weights/0.bias"][0] = np.nan
    with pytest.raises(BitnetFileError, match="CRC-32"):  # an edit after writing
        bitnet.load_state_dict(tmp_path / "w.h5")
    with h5py.File(tmp_path / "w.h5", "r+") as f:
        del f["weights/0.bias"].attrs["crc32"]  # as a file from before the checksums
    with pytest.raises(BitnetFileError, match="finite values"):
        bitnet.load_state_dict(tmp_path / "w.h5")
    with pytest.raises(BitnetFileError, match=r"group 'weights': expected a model of at most 100 bytes"):
        bitnet.load_state_dict(tmp_path / "w.h5", max_bytes=100)


def test_a_config_cannot_allocate_more_than_the_file_holds(tmp_path):
    path = tmp_path / "m.h5"
    bitnet.save(bitnet.nn.Sequential(bitnet.nn.Dense(8, 4)), path)
    with h5py.File(path, "r+") as f:
        arch = {"class": "Sequential", "children": [
            {"name": "0", "class": "Dense", "config": {"in_features": 8, "out_features": 4, "bias": True}},
            {"name": "1", "class": "Dense", "config": {"in_features": 20000, "out_features": 20000, "bias": True}}]}
        f.attrs["architecture"] = np.void(zlib.compress(json.dumps(arch).encode()))
    with pytest.raises(BitnetFileError, match="cannot describe a model much larger than itself"):
        bitnet.load(path)
    assert bitnet.nn.Dense(3000, 3000).weight.shape == (3000, 3000)  # the limit ended with the load


def test_a_class_of_your_own_is_held_to_the_bound_while_it_is_built(mynet, tmp_path):
    # MyNet does not say what its config allocates (no state_bytes): the file's listed children count,
    # and its constructor's layers are stopped by the allocation limit before a width of 2^20 allocates
    path = tmp_path / "m.h5"
    bitnet.save(mynet.MyNet(rng=0), path, input_shape=(1, 6, 6))
    with h5py.File(path, "r+") as f:
        arch = json.loads(zlib.decompress(bytes(f.attrs["architecture"])))
        arch["config"]["width"] = 2 ** 20
        f.attrs["architecture"] = np.void(zlib.compress(json.dumps(arch).encode()))
    with pytest.raises(BitnetFileError) as err:
        bitnet.load(path)
    msg = str(err.value)
    assert msg.startswith(f"{path}: config: expected a model of at most") and "exceeds the" in msg, msg


def test_the_command_line_imports_the_module_that_registers_the_class(mynet, tmp_path):
    bitnet.save(mynet.MyNet(rng=0), tmp_path / "mynet.h5", input_shape=(1, 6, 6))
    env = {k: v for k, v in __import__("os").environ.items() if k != "PYTHONPATH"}

    def cli(*args):
        return subprocess.run([sys.executable, "-m", "bitnet.cli", *args], capture_output=True, text=True,
                              cwd=tmp_path, env=env, timeout=600)
    res = cli("summary", "mynet.h5")
    assert res.returncode == 2 and "'MyNet'" in res.stderr and "--import MODULE" in res.stderr
    res = cli("summary", "mynet.h5", "--import", "mynet")
    assert res.returncode == 0, res.stderr
    assert "model MyNet of 4 modules" in res.stdout and "QConv2d" in res.stdout and "MACs per image" in res.stdout
    res = cli("summary", "mynet.h5", "--import", "no_such_module")
    assert res.returncode == 2 and "--import no_such_module: no module named 'no_such_module' found" in res.stderr
