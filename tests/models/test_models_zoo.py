"""The model zoo: names, shapes, parameter counts, binary layers where promised, clear errors."""
from __future__ import annotations

import io

import numpy as np
import pytest

import bitnet
from bitnet import Tensor, nn


def test_registry_names_and_unknown_name():
    assert {"lenet", "lenet-binary", "resnet18", "resnet18-binary", "binary-vgg-small"} <= set(bitnet.models.names())
    with pytest.raises(ValueError, match="unknown model 'resnet19'.*resnet18"):
        bitnet.models.get("resnet19")


@pytest.mark.parametrize("name,shape", [("lenet", (1, 28, 28)), ("lenet-binary", (1, 28, 28)),
                                        ("binary-vgg-small", (1, 28, 28)), ("resnet18", (3, 32, 32)),
                                        ("resnet18-binary", (3, 32, 32))])
def test_forward_backward_shapes(name, shape):
    m = bitnet.models.get(name, seed=0)
    x = Tensor(np.random.default_rng(0).standard_normal((2,) + shape).astype(np.float32))
    y = m(x)
    assert y.shape == (2, 10) and y.dtype == np.float32
    y.sum().backward()
    assert all(p.grad is not None for p in m.parameters())


def test_resnet18_matches_the_standard_parameter_count():
    m = bitnet.models.get("resnet18", seed=0)
    assert m.num_parameters() == 11_173_962  # the CIFAR ResNet-18 of PyTorch-style code bases


def test_binary_resnet_keeps_stem_classifier_and_chosen_stages_float():
    m = bitnet.models.get("resnet18-binary", full_precision_stages=(1, 4), seed=0)
    assert [b.binary for b in m.stages] == [False] * 2 + [True] * 4 + [False] * 2
    assert type(m.stem[0]) is nn.Conv2d and type(m.fc) is nn.Dense
    binary = {n for n, mod in m.named_modules() if getattr(mod, "kernel_quantizer", None) is not None}
    assert binary == {f"stages.{i}.conv{j}" for i in (2, 3, 4, 5) for j in (1, 2)}
    full = bitnet.summary(bitnet.models.get("resnet18-binary", seed=0), (3, 32, 32), file=io.StringIO())
    part = bitnet.summary(m, (3, 32, 32), file=io.StringIO())
    assert full.binary_mac_share > part.binary_mac_share > 0.3 and full.packed_bytes < part.packed_bytes


def test_seeded_models_are_reproducible():
    a = bitnet.models.get("resnet18-binary", seed=3).state_dict()
    b = bitnet.models.get("resnet18-binary", seed=3).state_dict()
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("name,kwargs,match", [
    ("resnet18-binary", dict(full_precision_stages=(0,)), "1..4"),
    ("resnet18", dict(image_size=4), "at least 8x8"),
    ("lenet-binary", dict(image_size=12), "at least 16x16"),
])
def test_bad_arguments(name, kwargs, match):
    with pytest.raises(ValueError, match=match):
        bitnet.models.get(name, **kwargs)
