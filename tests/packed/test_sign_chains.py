"""bitnet.packed.sign_chains: layers read only as signs, run straight to packed bits.

A chain must hand its sink the bits the layer-by-layer run would have packed: exactly from a
packed convolution; from a float convolution except for values within float rounding of 0 (its
GEMM and folded batch norm round differently), counted here. The model's state, hooks and
``load_state_dict`` keep working."""
import numpy as np
import pytest

import bitnet
from bitnet import nn
from bitnet.kernels.bits import unpack_reference
from bitnet.nn.container import Sequential
from bitnet.packed import pack
from bitnet.packed.sign_chains import find_chains
from bitnet.tensor import Tensor, no_grad


def _randomize_batchnorms(model, rng):
    for m in model.modules():
        if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)) and m.track_running_stats:
            c = m.num_features
            m.running_mean[:] = rng.normal(0, 0.5, c)
            m.running_var[:] = rng.uniform(0.3, 3, c)
            m.weight.data[:] = rng.uniform(-1.5, 1.5, c).astype(np.float32)  # negative scales too
            m.bias.data[:] = rng.normal(size=c).astype(np.float32)
    return model.eval()


def _layer_by_layer(seq, x):
    """Every module of the packed Sequential in turn (no chains): the reference."""
    with no_grad():
        return Sequential.forward(seq, Tensor(x)).data


def _lenet(seed=0):
    return _randomize_batchnorms(bitnet.models.get("lenet-binary", seed=seed), np.random.default_rng(seed))


def test_lenet_binary_has_two_chains():
    packed = pack(_lenet())
    chains = packed._sign_chains
    assert [(c.start, c.stop, c.flat, c.pool is not None) for c in chains] == [(0, 5, False, True), (5, 10, True, True)]
    assert isinstance(chains[0].source, nn.Conv2d) and isinstance(chains[0].bn, nn.BatchNorm2d)


@pytest.mark.parametrize("batch", [1, 7, 64])
def test_chains_hand_over_the_signs_of_the_layers(batch):
    packed = pack(_lenet(batch))
    first, second = packed._sign_chains
    x = np.random.default_rng(batch).standard_normal((batch, 1, 28, 28)).astype(np.float32)
    with no_grad():
        pre = Tensor(x)
        for i in range(4):
            pre = packed[i](pre)                     # conv, batch norm, tanh, max pool: floats
        bits1 = first(Tensor(x))
        assert bits1.data.dtype == np.uint64 and bits1.shape == (batch, 12, 12, 1, 1)
        signs1 = unpack_reference(bits1.data[:, :, :, 0], 64).transpose(0, 3, 1, 2)
        # a float conv and a folded batch norm round differently: signs equal except within rounding of 0
        differ = (pre.data >= 0) != (signs1 >= 0)
        assert np.all(np.abs(pre.data[differ]) <= 1e-5 * np.abs(pre.data).max()), "a sign differs away from 0"
        assert differ.mean() < 1e-4
        # the second chain on those bits: exactly the layers' signs (packed conv, pool, flatten, sign)
        ref = Tensor(signs1)
        for i in range(5, 10):
            ref = packed[i](ref)
        bits2 = second(bits1)
        np.testing.assert_array_equal(unpack_reference(bits2.data, 1024), ref.data)
        # and the whole forward: the layer-by-layer run within float rounding where no sign flipped
        got = packed(Tensor(x)).data
    expected = _layer_by_layer(packed, x)
    keep = ~differ.reshape(batch, -1).any(axis=1)
    np.testing.assert_allclose(got[keep], expected[keep], rtol=0, atol=1e-5 * (np.abs(expected).max() + 1))


def test_hooks_inside_a_chain_make_it_run_layer_by_layer():
    packed = pack(_lenet())
    x = np.random.default_rng(0).standard_normal((2, 1, 28, 28)).astype(np.float32)
    calls, seen = [], {}
    packed[2].register_forward_hook(lambda m, i, o: calls.append(o.shape))  # the Tanh inside chain 1
    packed[10].register_forward_hook(lambda m, i, o: seen.setdefault("dense", i[0].data))
    with no_grad():
        got = packed(Tensor(x)).data
    assert calls == [(2, 64, 24, 24)]
    assert seen["dense"].dtype == np.uint64  # the second chain still ran
    np.testing.assert_allclose(got, _layer_by_layer(packed, x), rtol=0, atol=1e-5)


def test_what_does_not_form_a_chain():
    rng = np.random.default_rng(0)
    q = dict(act_bit=1, weight_bit=1)

    def tail(c):
        return [nn.QActivation(1), nn.QConv2d(c, 8, 3, rng=rng, **q), nn.BatchNorm2d(8), nn.Flatten(), nn.Dense(8 * 4, 2)]
    cases = {
        "relu": [nn.Conv2d(1, 8, 3, rng=rng), nn.BatchNorm2d(8), nn.ReLU(), *tail(8)],
        "batch statistics": [nn.Conv2d(1, 8, 3, rng=rng), nn.BatchNorm2d(8, track_running_stats=False), *tail(8)],
        "avg pool": [nn.Conv2d(1, 8, 3, rng=rng), nn.AvgPool2d(1), *tail(8)],
        "float sink": [nn.Conv2d(1, 8, 3, rng=rng), nn.Tanh(), nn.Conv2d(8, 8, 3, rng=rng), nn.Flatten()],
    }
    for name, layers in cases.items():
        packed = pack(_randomize_batchnorms(nn.Sequential(*layers), rng))
        assert not getattr(packed, "_sign_chains", []), name
        x = rng.standard_normal((2, 1, 6, 6)).astype(np.float32)
        with no_grad():
            np.testing.assert_array_equal(packed(Tensor(x)).data, _layer_by_layer(packed, x))
    ok = pack(_randomize_batchnorms(nn.Sequential(nn.Conv2d(1, 8, 3, rng=rng), nn.HardTanh(), *tail(8)), rng))
    assert [(c.start, c.stop) for c in ok._sign_chains] == [(0, 3)]


def test_nested_sequential_and_load_state_dict_refresh_the_constants():
    rng = np.random.default_rng(5)
    q = dict(act_bit=1, weight_bit=1)
    body = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1, rng=rng), nn.BatchNorm2d(16), nn.Tanh(), nn.MaxPool2d(2),
                         nn.QConv2d(16, 8, 3, rng=rng, **q), nn.BatchNorm2d(8))
    model = _randomize_batchnorms(nn.Sequential(body, nn.Flatten(), nn.Dense(8 * 9, 3, rng=rng)), rng)
    packed = pack(model)
    assert [(c.start, c.stop) for c in packed[0]._sign_chains] == [(0, 4)]
    x = rng.standard_normal((4, 3, 10, 10)).astype(np.float32)
    with no_grad():
        first = packed(Tensor(x)).data
        # new weights through load_state_dict: the chain must read them (compare with a fresh pack)
        other = _randomize_batchnorms(nn.Sequential(
            nn.Sequential(nn.Conv2d(3, 16, 3, padding=1, rng=rng), nn.BatchNorm2d(16), nn.Tanh(), nn.MaxPool2d(2),
                          nn.QConv2d(16, 8, 3, rng=rng, **q), nn.BatchNorm2d(8)),
            nn.Flatten(), nn.Dense(8 * 9, 3, rng=rng)), rng)
        fresh = pack(other)
        packed.load_state_dict(fresh.state_dict())
        np.testing.assert_array_equal(packed(Tensor(x)).data, fresh(Tensor(x)).data)
        assert not np.array_equal(first, fresh(Tensor(x)).data)


def test_packed_file_runs_the_chains(tmp_path):
    model = _lenet(2)
    path = tmp_path / "lenet.h5"
    bitnet.convert(model, path, input_shape=(1, 28, 28))
    loaded = bitnet.load_packed(path)
    assert [(c.start, c.stop) for c in loaded._sign_chains] == [(0, 5), (5, 10)]
    x = np.random.default_rng(2).standard_normal((5, 1, 28, 28)).astype(np.float32)
    with no_grad():
        np.testing.assert_array_equal(loaded(Tensor(x)).data, pack(model)(Tensor(x)).data)
