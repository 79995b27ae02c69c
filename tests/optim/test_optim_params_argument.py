"""An optimizer given a model instead of its parameters says what to pass."""
from __future__ import annotations

import pytest

from bitnet import nn, optim


@pytest.mark.parametrize("cls", [optim.SGD, optim.Adam, optim.Bop])
def test_a_module_instead_of_its_parameters(cls):
    model = nn.Sequential(nn.Dense(3, 2, rng=0))
    with pytest.raises(TypeError) as info:
        cls(model, lr=0.1) if cls is not optim.Bop else cls(model)
    msg = str(info.value)
    assert "expected an iterable of Parameters (model.parameters()) or param groups" in msg
    assert "got a Sequential module; pass model.parameters()" in msg and "not iterable" not in msg
    assert msg.startswith(cls.__name__ + ":")


@pytest.mark.parametrize("params", [3, None, 1.5])
def test_something_not_iterable(params):
    with pytest.raises(TypeError, match=r"SGD: expected an iterable of Parameters .* got (int|NoneType|float)$"):
        optim.SGD(params, lr=0.1)


def test_parameters_and_groups_still_work():
    model = nn.Dense(3, 2, rng=0)
    assert len(optim.SGD(model.parameters(), lr=0.1).param_groups[0]["params"]) == 2
    assert len(optim.SGD([{"params": model.parameters(), "lr": 0.5}], lr=0.1).param_groups) == 1
