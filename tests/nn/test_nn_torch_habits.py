"""PyTorch's layer options: Module.apply, nn.Flatten(start_dim, end_dim), BatchNorm1d on (N, C, L),
momentum=None, affine=False and track_running_stats=False (state_dict contents), against NumPy."""
import numpy as np
import pytest

import bitnet
from bitnet import Tensor, nn


def test_module_apply_visits_children_first_then_self_and_returns_self():
    inner = nn.Sequential(nn.Dense(2, 3, rng=0), nn.Tanh())
    model = nn.Sequential(inner, nn.Dense(3, 1, rng=1))
    seen = []
    assert model.apply(seen.append) is model
    assert seen == [inner[0], inner[1], inner, model[1], model]

    def init(m):  # the usual use: re-initialize every Dense
        if isinstance(m, nn.Dense):
            m.weight.data[...] = 0.5
    model.apply(init)
    assert all((m.weight.data == 0.5).all() for m in (inner[0], model[1]))


def test_flatten_layer_matches_torch_nn_flatten():
    x = Tensor(np.arange(120.0).reshape(2, 3, 4, 5))
    assert nn.Flatten()(x).shape == (2, 60)
    assert nn.Flatten(0)(x).shape == (120,)
    assert nn.Flatten(1, 2)(x).shape == (2, 12, 5)
    assert nn.Flatten(start_dim=2, end_dim=-1)(x).shape == (2, 3, 20)
    np.testing.assert_array_equal(nn.Flatten(1, 2)(x).data, x.data.reshape(2, 12, 5))
    assert "end_dim=2" in repr(nn.Flatten(1, 2))


def _bn_reference(x, axes, eps=1e-5):
    mean = x.mean(axis=axes, keepdims=True)
    var = x.var(axis=axes, keepdims=True)
    return (x - mean) / np.sqrt(var + eps)


def test_batchnorm1d_on_sequences_normalizes_over_batch_and_length():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((4, 3, 5)) * 3 + 1
    bn = nn.BatchNorm1d(3, momentum=0.2)
    bn.weight.data[:] = [1.0, 2.0, -1.0]
    bn.bias.data[:] = [0.0, 0.5, 1.0]
    y = bn(Tensor(x.astype(np.float32)))
    want = _bn_reference(x, (0, 2)) * bn.weight.data[None, :, None] + bn.bias.data[None, :, None]
    np.testing.assert_allclose(y.data, want, rtol=1e-5, atol=1e-5)  # float32 normalization of O(1) values
    m = 4 * 5
    np.testing.assert_allclose(bn.running_mean, 0.2 * x.mean(axis=(0, 2)), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(bn.running_var, 0.8 + 0.2 * x.var(axis=(0, 2)) * m / (m - 1), rtol=1e-5)
    bn.eval()
    y = bn(Tensor(x.astype(np.float32)))
    ref = (x - bn.running_mean[None, :, None]) / np.sqrt(bn.running_var[None, :, None] + 1e-5)
    np.testing.assert_allclose(y.data, ref * bn.weight.data[None, :, None] + bn.bias.data[None, :, None],
                               rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match=r"\(N, C, L\)"):
        nn.BatchNorm1d(3)(Tensor(np.ones((2, 3, 2, 2), np.float32)))


def test_momentum_none_is_the_cumulative_average():
    rng = np.random.default_rng(1)
    batches = [rng.standard_normal((6, 2)) * (i + 1) + i for i in range(4)]
    bn = nn.BatchNorm1d(2, momentum=None)
    assert list(bn.state_dict()) == ["weight", "bias", "running_mean", "running_var", "num_batches_tracked"]
    for b in batches:
        bn(Tensor(b))
    means = [b.mean(axis=0) for b in batches]
    variances = [b.var(axis=0, ddof=1) for b in batches]
    np.testing.assert_allclose(bn.running_mean, np.mean(means, axis=0), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(bn.running_var, np.mean(variances, axis=0), rtol=1e-6)
    assert int(bn.num_batches_tracked) == 4 and bn.num_batches_tracked.dtype == np.int64
    bn.eval()
    bn(Tensor(batches[0]))
    assert int(bn.num_batches_tracked) == 4  # eval does not count
    assert list(nn.BatchNorm1d(2).state_dict()) == ["weight", "bias", "running_mean", "running_var"]


def test_affine_false_has_no_weight_or_bias_and_normalizes():
    x = np.random.default_rng(2).standard_normal((3, 2, 4, 4))
    bn = nn.BatchNorm2d(2, affine=False)
    assert bn.weight is None and bn.bias is None
    assert list(bn.parameters()) == [] and list(bn.state_dict()) == ["running_mean", "running_var"]
    y = bn(Tensor(x))
    np.testing.assert_allclose(y.data, _bn_reference(x, (0, 2, 3)), rtol=1e-10, atol=1e-10)
    t = Tensor(x, requires_grad=True)
    bn(t).sum().backward()  # d/dx of sum(xhat) is 0 per channel
    np.testing.assert_allclose(t.grad, 0.0, atol=1e-10)
    assert "affine=False" in repr(bn)


def test_track_running_stats_false_has_no_running_buffers():
    bn = nn.BatchNorm2d(2, track_running_stats=False)
    assert list(bn.state_dict()) == ["weight", "bias"]
    x = np.random.default_rng(3).standard_normal((3, 2, 2, 2))
    bn.eval()  # batch statistics in eval mode too
    np.testing.assert_allclose(bn(Tensor(x)).data, _bn_reference(x, (0, 2, 3)), rtol=1e-10, atol=1e-10)


def test_batchnorm_options_survive_save_and_load(tmp_path):
    model = nn.Sequential(nn.Dense(3, 4, rng=0), nn.BatchNorm1d(4, momentum=None), nn.BatchNorm1d(4, affine=False))
    model(Tensor(np.random.default_rng(4).standard_normal((5, 3)).astype(np.float32)))
    bitnet.save(model, tmp_path / "m.h5")
    back = bitnet.load(tmp_path / "m.h5")
    assert back[1].momentum is None and back[2].affine is False
    for (k, v), (k2, v2) in zip(model.state_dict().items(), back.state_dict().items()):
        assert k == k2
        np.testing.assert_array_equal(v, v2)
