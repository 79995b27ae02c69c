"""DataLoader: a list ``[images, labels]`` is the pair, other lists are refused at construction; labels
are class indices (fractional floats refused, whole floats converted, negative integers kept)."""

import re

import numpy as np
import pytest

import bitnet
from bitnet import functional as F
from bitnet.data import ArrayDataset, DataLoader


def _data(n=10):
    x = np.arange(n * 4, dtype=np.uint8).reshape(n, 2, 2)
    y = np.arange(n) % 10
    return x, y


def _epoch(loader):
    batches = list(loader)
    return np.concatenate([b[0] for b in batches]), np.concatenate([b[1] for b in batches]), batches


# -- a list as the dataset -------------------------------------------------------------------------

def test_list_pair_is_the_tuple_pair():
    x, y = _data(10)
    as_list, as_tuple = DataLoader([x, y], batch_size=4), DataLoader((x, y), batch_size=4)
    assert len(as_list) == len(as_tuple) == 3 and isinstance(as_list.dataset, ArrayDataset)
    xl, yl, batches = _epoch(as_list)
    xt, yt, _ = _epoch(as_tuple)
    assert [len(b[1]) for b in batches] == [4, 4, 2]
    np.testing.assert_array_equal(xl, xt)
    np.testing.assert_array_equal(yl, yt)
    assert xl.dtype == np.float32 and yl.dtype == np.int64


def test_list_pair_is_checked_like_the_tuple():
    x, y = _data(5)
    with pytest.raises(ValueError, match="5 images but 4 labels"):
        DataLoader([x, y[:4]], batch_size=2)
    with pytest.raises(ValueError, match=r"labels \(N,\), got shapes \(28, 28\) and \(28, 28\)"):
        DataLoader([np.zeros((28, 28)), np.zeros((28, 28))], batch_size=2)  # two images, no labels


@pytest.mark.parametrize("dataset", [
    [(np.zeros((2, 2)), 1), (np.ones((2, 2)), 0)],  # a list of (x, y) samples: the other reading of a list
    [np.zeros((3, 2)), np.arange(3), np.arange(3)],  # three arrays
    [[0, 1], [1, 0]],                                  # nested Python lists
    [],
])
def test_other_lists_refused_at_construction(dataset):
    with pytest.raises(TypeError, match=r"a list is taken as a dataset only in the form \[images, labels\].*np\.stack"):
        DataLoader(dataset, batch_size=4)


# -- labels ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("bad, shown", [(0.9, "0.9"), (np.nan, "nan"), (np.inf, "inf"), (2.5, "2.5"), (1e20, "1e+20")])
def test_fractional_or_non_finite_float_labels_refused(bad, shown):
    x = np.zeros((4, 2), np.float32)
    y = np.array([0.0, 1.0, bad, 3.0])
    with pytest.raises(ValueError, match=rf"labels must be class indices \(whole numbers\); found float64 values such "
                                         rf"as {re.escape(shown)} \(first at index 2; 1 of 4 labels\)"):
        DataLoader((x, y), batch_size=2)
    with pytest.raises(ValueError, match="whole numbers"):
        ArrayDataset(x, y)
    with pytest.raises(ValueError, match="whole numbers"):
        DataLoader([x, y], batch_size=2)


def test_whole_float_and_bool_labels_converted():
    x = np.zeros((4, 2), np.float32)
    (_, yb), = DataLoader((x, np.array([0.0, 3.0, 9.0, -1.0], np.float32)), batch_size=4)
    assert yb.dtype == np.int64 and yb.tolist() == [0, 3, 9, -1]
    (_, yb), = DataLoader((x, np.array([True, False, True, True])), batch_size=4)
    assert yb.dtype == np.int64 and yb.tolist() == [1, 0, 1, 1]
    assert ArrayDataset(x, np.arange(4, dtype=np.uint8)).labels.dtype == np.int64


@pytest.mark.parametrize("labels", [np.array(["a", "b", "c", "d"]), np.array([1, 2, 3, 4], dtype=complex),
                                    np.array([1, "a", None, 2], dtype=object), np.array([2**63] * 4, np.uint64)])
def test_non_integer_labels_refused(labels):
    with pytest.raises(ValueError, match="labels"):
        DataLoader((np.zeros((4, 2)), labels), batch_size=2)


def test_negative_labels_kept_for_ignore_index():
    """-1 (or -100, cross_entropy's default ignore_index) marks samples the loss skips: the loader keeps
    them; the loss, which knows the number of classes, refuses them unless they are ignore_index."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((4, 3)).astype(np.float32)
    (xb, yb), = DataLoader((x, np.array([2, -1, 0, -1])), batch_size=4)
    assert yb.tolist() == [2, -1, 0, -1]
    logits = bitnet.Tensor(xb)
    kept = F.cross_entropy(bitnet.Tensor(xb[[0, 2]]), yb[[0, 2]])
    np.testing.assert_allclose(float(F.cross_entropy(logits, yb, ignore_index=-1).data), float(kept.data), rtol=1e-6)
    with pytest.raises(ValueError, match=r"targets must lie in \[0, 2\] \(or equal ignore_index=-100\)"):
        F.cross_entropy(logits, yb)


class _FloatLabelDataset:
    """A dataset that is not an ArrayDataset: its labels are checked batch by batch."""

    def __init__(self, labels):
        self.labels = np.asarray(labels)

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, index):
        return np.zeros((len(index), 2), np.float32), self.labels[index]


def test_custom_dataset_labels_checked_per_batch():
    loader = DataLoader(_FloatLabelDataset([0.0, 1.0, 2.0, 3.5, 4.0]), batch_size=2)
    it = iter(loader)
    assert next(it)[1].tolist() == [0, 1]
    with pytest.raises(ValueError, match=r"labels of batch 1 must be class indices .* 3\.5 \(first at index 1"):
        next(it)
