"""ArrayDataset, DataLoader and Normalize."""

import numpy as np
import pytest

from bitnet.data import (
    CIFAR10_MEAN,
    CIFAR10_STD,
    MNIST_MEAN,
    MNIST_STD,
    ArrayDataset,
    DataLoader,
    Normalize,
)


def _data(n=10):
    x = np.arange(n * 4, dtype=np.uint8).reshape(n, 2, 2)
    y = np.arange(n) % 10
    return x, y


def test_batches_in_order():
    x, y = _data(10)
    loader = DataLoader((x, y), batch_size=4)
    batches = list(loader)
    assert len(loader) == 3 and [len(b[1]) for b in batches] == [4, 4, 2]
    for xb, yb in batches:
        assert xb.dtype == np.float32 and yb.dtype == np.int64
        assert isinstance(xb, np.ndarray) and isinstance(yb, np.ndarray)
    np.testing.assert_array_equal(np.concatenate([b[0] for b in batches]), x.astype(np.float32))
    np.testing.assert_array_equal(np.concatenate([b[1] for b in batches]), y)


def test_drop_last():
    loader = DataLoader(ArrayDataset(*_data(10)), batch_size=4, drop_last=True)
    assert len(loader) == 2 and [len(b[1]) for b in loader] == [4, 4]
    assert len(DataLoader(_data(8), batch_size=4, drop_last=True)) == 2
    assert len(DataLoader(_data(3), batch_size=4, drop_last=True)) == 0


def _epoch_order(loader):
    return np.concatenate([yb for _, yb in loader])


def test_shuffle_deterministic_and_new_each_epoch():
    n = 50
    x, y = np.zeros((n, 1), np.uint8), np.arange(n)
    a = DataLoader((x, y), batch_size=7, shuffle=True, rng=123)
    b = DataLoader((x, y), batch_size=7, shuffle=True, rng=np.random.default_rng(123))
    ea1, ea2 = _epoch_order(a), _epoch_order(a)
    eb1, eb2 = _epoch_order(b), _epoch_order(b)
    np.testing.assert_array_equal(ea1, eb1)
    np.testing.assert_array_equal(ea2, eb2)
    assert not np.array_equal(ea1, ea2)  # new permutation per epoch
    assert not np.array_equal(ea1, y)
    for order in (ea1, ea2):
        assert sorted(order.tolist()) == list(range(n))  # every sample exactly once


def test_shuffle_does_not_touch_global_rng():
    np.random.seed(0)
    before = np.random.get_state()[1].copy()
    list(DataLoader(_data(20), batch_size=3, shuffle=True))
    list(DataLoader(_data(20), batch_size=3, shuffle=True, rng=1))
    np.testing.assert_array_equal(np.random.get_state()[1], before)


def test_shuffle_with_drop_last_sees_each_at_most_once():
    order = _epoch_order(DataLoader((np.zeros((10, 1)), np.arange(10)), batch_size=3, shuffle=True, rng=0,
                                    drop_last=True))
    assert len(order) == 9 and len(set(order.tolist())) == 9


def test_normalize_numbers():
    x = np.array([[[0, 255], [51, 102]]], dtype=np.uint8)  # (1, 2, 2)
    out = Normalize(MNIST_MEAN, MNIST_STD)(x)
    assert out.dtype == np.float32 and out.shape == (1, 1, 2, 2)
    want = (np.array([[0.0, 1.0], [0.2, 0.4]]) - 0.1307) / 0.3081
    np.testing.assert_allclose(out[0, 0], want, rtol=1e-6)
    assert Normalize(0.5, 0.5, add_channel_axis=False)(x).shape == (1, 2, 2)


def test_normalize_per_channel():
    x = np.full((2, 3, 4, 4), 255, dtype=np.uint8)
    out = Normalize(CIFAR10_MEAN, CIFAR10_STD)(x)
    assert out.shape == (2, 3, 4, 4)
    for c in range(3):
        np.testing.assert_allclose(out[:, c], (1.0 - CIFAR10_MEAN[c]) / CIFAR10_STD[c], rtol=1e-6)
    with pytest.raises(ValueError, match="3 channels"):
        Normalize(CIFAR10_MEAN, CIFAR10_STD)(np.zeros((2, 28, 28), np.uint8))


def test_loader_with_transform():
    x, y = _data(5)
    (xb, yb), = list(DataLoader((x, y), batch_size=5, transform=Normalize(0.0, 1.0)))
    assert xb.shape == (5, 1, 2, 2) and xb.dtype == np.float32
    np.testing.assert_allclose(xb[:, 0], x / 255.0, rtol=1e-6)


def test_bad_arguments():
    x, y = _data(5)
    for bad in (0, -1, 2.5, True):
        with pytest.raises(ValueError, match="batch_size"):
            DataLoader((x, y), batch_size=bad)
    with pytest.raises(ValueError, match="5 images but 4 labels"):
        DataLoader((x, y[:4]), batch_size=2)
    with pytest.raises(ValueError, match="same length"):
        ArrayDataset(x[:3], y)
    with pytest.raises(TypeError, match="rng"):
        DataLoader((x, y), batch_size=2, shuffle=True, rng=np.random.RandomState(0))
    with pytest.raises(ValueError, match="std must be positive"):
        Normalize(0.5, 0.0)
