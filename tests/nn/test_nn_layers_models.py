"""Layers: batch-norm modes, shape errors, dropout determinism; the seeded LeNet."""
import numpy as np
import pytest

import bitnet
import bitnet.functional as F
import bitnet.models  # noqa: F401  (subpackage: bitnet.models.get)
from bitnet import Tensor, nn


def f32(a):
    return Tensor(np.asarray(a, np.float32))


def test_dense_matches_numpy_and_linear_alias():
    layer = nn.Linear(4, 3, rng=0)
    assert isinstance(layer, nn.Dense)
    x = np.random.default_rng(0).standard_normal((5, 4)).astype(np.float32)
    ref = x.astype(np.float64) @ layer.weight.data.T.astype(np.float64) + layer.bias.data
    np.testing.assert_allclose(layer(f32(x)).data, ref, rtol=1e-5, atol=1e-6)
    bound = 1 / np.sqrt(4)
    assert np.abs(layer.weight.data).max() <= bound and layer.weight.dtype == np.float32


def test_conv2d_layer_matches_functional():
    conv = nn.Conv2d(4, 6, 3, stride=2, padding=1, dilation=1, groups=2, rng=1)
    assert conv.weight.shape == (6, 2, 3, 3) and conv.bias.shape == (6,)
    x = f32(np.random.default_rng(1).standard_normal((2, 4, 7, 7)))
    np.testing.assert_array_equal(conv(x).data, F.conv2d(x, conv.weight, conv.bias, 2, 1, 1, 2).data)
    assert conv(x).shape == (2, 6, 4, 4)


def test_dense_wrong_feature_count():
    with pytest.raises(ValueError, match=r"expects inputs with 4 features.*\(2, 5\)"):
        nn.Dense(4, 3, rng=0)(f32(np.ones((2, 5))))


def test_conv2d_wrong_channels_and_3d_input():
    conv = nn.Conv2d(3, 4, 3, rng=0)
    with pytest.raises(ValueError, match=r"\(N, 3, H, W\).*\(1, 2, 8, 8\)"):
        conv(f32(np.ones((1, 2, 8, 8))))
    with pytest.raises(ValueError, match=r"\(N, 3, H, W\).*\(3, 8, 8\)"):
        conv(f32(np.ones((3, 8, 8))))


def test_batchnorm_wrong_input_rank():
    with pytest.raises(ValueError, match=r"\(N, C, H, W\) with C=3.*\(4, 3\)"):
        nn.BatchNorm2d(3)(f32(np.ones((4, 3))))
    with pytest.raises(ValueError, match=r"\(N, C\) or \(N, C, L\) with C=3.*\(4, 3, 2, 2\)"):
        nn.BatchNorm1d(3)(f32(np.ones((4, 3, 2, 2))))
    with pytest.raises(ValueError, match=r"C=3.*\(4, 5\)"):
        nn.BatchNorm1d(3)(f32(np.ones((4, 5))))


def test_batchnorm_train_uses_batch_stats_and_updates_running_stats():
    bn = nn.BatchNorm2d(2, momentum=0.2)
    x = np.random.default_rng(2).standard_normal((3, 2, 2, 2)) * 3 + 1
    y = bn(f32(x))
    m, v = x.mean(axis=(0, 2, 3)), x.var(axis=(0, 2, 3))
    ref = (x - m[None, :, None, None]) / np.sqrt(v[None, :, None, None] + 1e-5)
    np.testing.assert_allclose(y.data, ref, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(bn.running_mean, 0.2 * m, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(bn.running_var, 0.8 + 0.2 * x.var(axis=(0, 2, 3), ddof=1), rtol=1e-5)
    assert bn.running_mean.dtype == np.float32


def test_batchnorm_eval_uses_running_stats():
    bn = nn.BatchNorm1d(3)
    bn.running_mean[...] = [1.0, -2.0, 0.5]
    bn.running_var[...] = [4.0, 0.25, 1.0]
    bn.weight.data[...] = [1.0, 2.0, -1.0]
    bn.bias.data[...] = [0.0, 1.0, 3.0]
    bn.eval()
    x = np.random.default_rng(3).standard_normal((1, 3))  # batch 1 is fine in eval mode
    y = bn(f32(x))
    ref = (x - bn.running_mean) / np.sqrt(bn.running_var + 1e-5) * bn.weight.data + bn.bias.data
    np.testing.assert_allclose(y.data, ref, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(bn.running_mean, np.float32([1.0, -2.0, 0.5]))  # untouched
    bn.train()
    with pytest.raises(ValueError, match="more than one value"):
        bn(f32(x))


def test_batchnorm_without_running_stats_always_uses_batch_stats():
    bn = nn.BatchNorm1d(2, track_running_stats=False).eval()
    assert "running_mean" not in bn.state_dict()
    x = np.random.default_rng(4).standard_normal((5, 2))
    y = bn(f32(x))
    np.testing.assert_allclose(y.data.mean(axis=0), 0, atol=1e-6)


def test_dropout_module_is_deterministic_with_a_seed():
    x = f32(np.ones((8, 16)))
    a, b, c = nn.Dropout(0.5, rng=7), nn.Dropout(0.5, rng=7), nn.Dropout(0.5, rng=8)
    ya1, ya2 = a(x).data, a(x).data
    np.testing.assert_array_equal(ya1, b(x).data)
    np.testing.assert_array_equal(ya2, b(x).data)  # same sequence of masks
    assert not np.array_equal(ya1, ya2) and not np.array_equal(ya1, c(x).data)
    assert set(np.unique(ya1)) <= {0.0, 2.0}
    a.eval()
    assert a(x) is x
    with pytest.raises(ValueError):
        nn.Dropout(1.0)


def test_pooling_activation_flatten_layers():
    x = f32(np.random.default_rng(5).standard_normal((2, 3, 6, 6)))
    assert nn.MaxPool2d(2)(x).shape == (2, 3, 3, 3)
    assert nn.AvgPool2d(3, stride=2, padding=1)(x).shape == (2, 3, 3, 3)
    np.testing.assert_allclose(nn.GlobalAvgPool2d()(x).data, x.data.mean(axis=(2, 3)), rtol=1e-6)
    assert nn.Flatten()(x).shape == (2, 108)
    np.testing.assert_array_equal(nn.ReLU()(x).data, np.maximum(x.data, 0))
    np.testing.assert_array_equal(nn.HardTanh(-0.5, 0.5)(x).data, np.clip(x.data, -0.5, 0.5))
    np.testing.assert_allclose(nn.Tanh()(x).data, np.tanh(x.data), rtol=1e-6)
    assert nn.Identity()(x) is x


@pytest.fixture(scope="module")
def lenets():
    return bitnet.models.get("lenet", seed=0), bitnet.models.get("lenet", seed=0), bitnet.models.get("lenet", seed=1)


def test_lenet_seeded_construction_is_reproducible(lenets):
    a, b, c = lenets
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert list(sa) == list(sb)
    for k in sa:
        np.testing.assert_array_equal(sa[k], sb[k], err_msg=k)
    assert not np.array_equal(sa["0.weight"], sc["0.weight"])
    # distinct layers get distinct draws from the one generator
    assert not np.array_equal(sa["0.weight"].ravel()[:25], sa["4.weight"].ravel()[:25])


@pytest.mark.parametrize("n, mode", [(1, "eval"), (3, "eval"), (3, "train")])
def test_lenet_output_shape(lenets, n, mode):
    a, b, _ = lenets
    x = f32(np.random.default_rng(6).standard_normal((n, 1, 28, 28)))
    for m in (a, b):
        m.train(mode == "train")
    ya, yb = a(x), b(x)
    assert ya.shape == (n, 10) and ya.dtype == np.float32
    np.testing.assert_array_equal(ya.data, yb.data)
    assert np.isfinite(ya.data).all()
    a.eval(), b.eval()


def test_lenet_unknown_name_and_num_classes():
    with pytest.raises(ValueError, match="lenet"):
        bitnet.models.get("lenet5")
    net = bitnet.models.get("lenet", num_classes=3, seed=0).eval()
    assert net(f32(np.zeros((2, 1, 28, 28)))).shape == (2, 3)
