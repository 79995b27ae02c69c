"""Tensors and modules on "cuda": the emulated device arrays, moving data, device errors, dispatch.
(CPU-only machines run all of this on ``bitnet.gpu.emulated``; ``BITNET_TEST_CUDA=gpu`` is not needed.)"""
from __future__ import annotations

import numpy as np
import pytest

import bitnet
import bitnet.nn as nn
from bitnet.gpu import dispatch, emulated
from bitnet.gpu.arrays import device_of, emulate, is_device_array, to_device, to_host, xp


def test_emulated_arrays_refuse_host_arrays_like_cupy():
    e = emulated.xp
    a = e.asarray(np.arange(4.0))
    assert type(a) is emulated.EmulatedArray and is_device_array(a) and device_of(a) == "cuda"
    assert type(a + 1.0) is emulated.EmulatedArray and type(e.exp(a)) is emulated.EmulatedArray
    assert type(a.sum()) is emulated.EmulatedArray and a.sum().ndim == 0  # CuPy: 0-d arrays, not scalars
    assert type(e.zeros(3)) is emulated.EmulatedArray
    assert type(e.concatenate([a, a])) is emulated.EmulatedArray
    with pytest.raises(TypeError, match="host .NumPy. array of shape .4,."):
        a + np.ones(4)
    with pytest.raises(TypeError, match="concatenate"):
        e.concatenate([a, np.ones(4)])
    host = np.ones(3)
    d = e.asarray(host)
    d[0] = 5
    assert host[0] == 1  # asarray copies host memory, as a transfer to a GPU does
    assert type(e.asnumpy(d)) is np.ndarray and e.asnumpy(d)[0] == 5


def test_xp_is_the_emulation_inside_emulate_only(monkeypatch):
    import sys
    monkeypatch.delenv("NUMBA_ENABLE_CUDASIM", raising=False)
    monkeypatch.setitem(sys.modules, "cupy", None)  # no CuPy: outside the block "cuda" is unavailable
    with emulate():
        assert xp() is emulated.xp
    with pytest.raises(bitnet.CudaUnavailableError):
        xp()
    monkeypatch.setenv("NUMBA_ENABLE_CUDASIM", "1")
    assert xp() is emulated.xp


def test_cuda_without_cupy_is_a_clear_error(monkeypatch):
    import sys
    monkeypatch.delenv("NUMBA_ENABLE_CUDASIM", raising=False)
    monkeypatch.setitem(sys.modules, "cupy", None)  # import cupy -> ImportError, on any machine
    with pytest.raises(bitnet.CudaUnavailableError, match=r"needs CuPy.*bitnet-bnn\[cuda\]"):
        bitnet.Tensor(np.ones(2), device="cuda")
    t = bitnet.Tensor(np.ones(2))
    with pytest.raises(bitnet.CudaUnavailableError):
        t.to("cuda")


def test_tensor_to_and_back_keeps_values_and_gradients_flow_back():
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    with emulate():
        t = bitnet.Tensor(x, requires_grad=True)
        d = t.to("cuda")
        assert d.device == "cuda" and t.device == "cpu" and d.requires_grad
        assert t.to("cpu") is t and d.to("cuda") is d
        back = d.cpu()
        assert back.device == "cpu" and type(back.data) is np.ndarray
        np.testing.assert_array_equal(back.data, x)
        (back * bitnet.Tensor(np.full((2, 3), 3, np.float32))).sum().backward()
        assert t.grad.dtype == np.float32 and type(t.grad) is np.ndarray
        np.testing.assert_array_equal(t.grad, np.full((2, 3), 3, np.float32))
        made = bitnet.Tensor([1.0, 2.0], device="cuda")
        assert made.device == "cuda" and made.dtype == np.float32
        assert "device='cuda'" in repr(made)
        with pytest.raises(RuntimeError, match=r"numpy\(\) of a tensor on cuda.*\.cpu\(\)\.numpy\(\)"):
            made.numpy()
    with pytest.raises(ValueError, match="'cpu' or 'cuda', got 'gpu'"):
        bitnet.Tensor(x).to("gpu")


def test_an_op_on_two_devices_names_both():
    with emulate():
        a = bitnet.Tensor(np.ones((2, 3), np.float32), device="cuda")
        b = bitnet.Tensor(np.ones((2, 3), np.float32))
        with pytest.raises(RuntimeError, match=r"Add: its inputs are on different devices: input 0 .shape \(2, 3\)"
                                               r". is on cuda, input 1 .shape \(2, 3\). on cpu"):
            a + b


def test_backward_checks_the_gradient_device():
    with emulate():
        a = bitnet.Tensor(np.ones(3, np.float32), requires_grad=True, device="cuda")
        out = a.to("cpu")
        with pytest.raises(ValueError, match="gradient is on cuda, the output on cpu"):
            out.backward(to_device(np.ones(3, np.float32), "cuda"))


def test_a_primitive_without_gpu_code_says_so():
    class Square(bitnet.Function):
        def forward(self, a):
            return a * a

    with emulate():
        with pytest.raises(NotImplementedError, match="Square has no GPU implementation yet"):
            Square.apply(bitnet.Tensor(np.ones(2), device="cuda"))

    class GenericSquare(Square):
        devices = ("cpu", "cuda")

    assert dispatch.implementation(GenericSquare) is GenericSquare
    with emulate():
        out = GenericSquare.apply(bitnet.Tensor(np.full(2, 3.0), device="cuda"))
    assert out.device == "cuda" and to_host(out.data).tolist() == [9.0, 9.0]


def test_module_to_moves_parameters_gradients_and_buffers_in_place():
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2), nn.ReLU(), nn.Flatten(), nn.Linear(8, 3))
    params = list(model.parameters())
    params[0].grad = np.ones_like(params[0].data)
    before = model.state_dict()
    with emulate():
        assert model.to("cuda") is model and model.device == "cuda"
        assert list(model.parameters()) == params  # the same objects: optimizers keep them
        assert all(p.device == "cuda" for p in params) and is_device_array(params[0].grad)
        assert all(is_device_array(b) for b in model.buffers())
        state = model.state_dict()  # host copies, loadable anywhere
        assert all(type(v) is np.ndarray for v in state.values())
        for k in before:
            np.testing.assert_array_equal(state[k], before[k])
        changed = {k: v + 1 for k, v in state.items()}
        model.load_state_dict(changed)  # host arrays into device parameters: they stay on the device
        assert model.device == "cuda"
        model[0].weight.data[0, 0, 0, 0] = 7  # split the model: one parameter back on the host
        model[0].weight.data = to_host(model[0].weight.data)
        with pytest.raises(RuntimeError, match="split across devices: '0.weight' is on cpu"):
            model.device
        model.cpu()
    assert model.device == "cpu" and all(type(b) is np.ndarray for b in model.buffers())
    assert model[0].weight.data[0, 0, 0, 0] == 7
    np.testing.assert_array_equal(model.state_dict()["4.bias"], before["4.bias"] + 1)


def test_factories_and_bitnet_tensor_follow_the_device_block():
    with emulate():
        with bitnet.device("cuda"):
            made = [bitnet.zeros(2, 3), bitnet.ones(2), bitnet.rand(3, rng=1), bitnet.randn(3, rng=1),
                    bitnet.arange(4), bitnet.tensor([1.0, 2.0], requires_grad=True)]
            assert all(t.device == "cuda" for t in made)
            assert bitnet.zeros(2, device="cpu").device == "cpu"
            host = bitnet.zeros(2, device="cpu")
            assert bitnet.ones_like(host).device == "cpu"  # _like: the device of its argument
            assert made[-1].requires_grad and made[-1].dtype == np.float32
        assert bitnet.zeros(2).device == "cpu"  # the default comes back after the block
        assert bitnet.ones_like(made[0]).device == "cuda"
    # the same seed, the same numbers on both devices (drawn on the host, then copied)
    np.testing.assert_array_equal(to_host(made[3].data), bitnet.randn(3, rng=1).data)
    np.testing.assert_array_equal(to_host(made[4].data), np.arange(4))


def test_emulated_arrays_are_never_host_arrays_implicitly():
    e = emulated.xp
    a = e.asarray(np.arange(6.0).reshape(2, 3))
    assert not isinstance(a, np.ndarray)  # as a CuPy array is not
    with pytest.raises(TypeError, match="implicit conversion of a device array .shape \\(2, 3\\).*\\.get\\(\\)"):
        np.asarray(a)
    with pytest.raises(ValueError, match="non-scalar numpy.ndarray .shape \\(3,\\). cannot be assigned"):
        a[0] = np.ones(3)
    a[0] = 7.0  # scalars and device arrays are fine
    a[1] = e.asarray(np.full(3, 2.0))
    assert a.get().tolist() == [[7.0, 7.0, 7.0], [2.0, 2.0, 2.0]]
    assert float(a.sum()) == 27.0 and int(a[0, 0]) == 7 and bool(a[1, 1] == 2.0)
    assert f"{a.sum():.1f}" == "27.0" and len(a) == 2 and [r.shape for r in a] == [(3,), (3,)]
    b = a.reshape(-1)  # views share memory
    b += 1.0
    assert a.get()[0, 0] == 8.0


def test_the_emulation_refuses_what_cupy_lacks():
    """NumPy functions and array methods that CuPy does not have would pass on the emulation and fail on
    the first real GPU: the emulation refuses them, naming the list it follows."""
    e = emulated.xp
    a = e.asarray(np.ones((2, 3)))
    assert float(e.linalg.norm(a)) == pytest.approx(6 ** 0.5) and a.sum().shape == ()  # CuPy has these
    assert e.lib.stride_tricks.as_strided(a, (3,), (8,)).shape == (3,)  # a listed submodule, two levels down
    for what, get in (("errstate", lambda: e.errstate), ("insert", lambda: e.insert),
                      ("linalg.multi_dot", lambda: e.linalg.multi_dot),
                      ("resize", lambda: a.resize), ("setflags", lambda: a.setflags)):
        with pytest.raises(AttributeError, match=f"has no '{what}'.*bitnet.gpu.cupy_names"):
            get()
    with pytest.raises(AttributeError, match="draws random numbers on the host"):
        e.random.standard_normal


def test_the_cupy_name_lists_hold_only_what_cupy_has():
    """Where CuPy is installed (a GPU machine), every listed name must exist in it."""
    cupy = pytest.importorskip("cupy")
    from bitnet.gpu.cupy_names import CUPY_NAMES, CUPY_NDARRAY_NAMES, CUPY_SUBMODULE_NAMES
    assert not {n for n in CUPY_NAMES if not hasattr(cupy, n)}
    assert not {n for n in CUPY_NDARRAY_NAMES if not hasattr(cupy.ndarray, n)}
    missing = set()
    for path in CUPY_SUBMODULE_NAMES:
        obj = cupy
        for part in path.split("."):
            obj = getattr(obj, part, None)
        if obj is None:
            missing.add(path)
    assert not missing


def test_emulated_reads_back_to_the_host_are_counted_in_the_block_only():
    e = emulated.xp
    a = e.asarray(np.arange(6.0).reshape(2, 3))
    with emulated.count_host_reads() as reads:
        b = e.exp(a) + a.sum(axis=0)  # device work: no reads
        a[0] = a[1]
        assert reads == []
        float(b.sum()), int(a[0, 0]), bool(a[1, 1] > 0), a.get(), e.asnumpy(b), a[0, 0].item(), a.tolist()
        f"{a.sum():.1f}", list(range(10))[e.asarray(np.array(2))]
        with emulated.count_host_reads() as inner:
            a.get()
    assert [what for what, _ in reads] == ["float", "int", "bool", "get", "asnumpy", "item", "tolist", "format",
                                           "index"]
    assert reads[3] == ("get", (2, 3)) and reads[-1] == ("index", ()) and inner == [("get", (2, 3))]
    a.get()  # outside any block: nothing records it
    assert len(reads) == 9


def test_a_model_trained_on_cuda_packs_and_converts_from_host_copies(tmp_path):
    from bitnet import models
    x = np.random.default_rng(0).standard_normal((2, 1, 28, 28)).astype(np.float32)
    with emulate():
        model = models.get("lenet-binary", seed=0).to("cuda")
        packed = bitnet.pack(model)
        assert model.device == "cuda" and all(is_device_array(p.data) for p in model.parameters())  # untouched
        bitnet.convert(model, tmp_path / "m.packed.h5", input_shape=(1, 28, 28))
    reference = bitnet.pack(model.cpu())
    with bitnet.no_grad():
        np.testing.assert_array_equal(packed(bitnet.Tensor(x)).data, reference(bitnet.Tensor(x)).data)
        loaded = bitnet.load_packed(tmp_path / "m.packed.h5")
        np.testing.assert_array_equal(loaded(bitnet.Tensor(x)).data, reference(bitnet.Tensor(x)).data)


def test_summary_of_a_model_on_cuda():
    from bitnet import models
    model = models.get("lenet-binary", seed=0)
    want = str(bitnet.summary(model, (1, 28, 28), file=None))
    with emulate():
        assert str(bitnet.summary(model.to("cuda"), (1, 28, 28), file=None)) == want
