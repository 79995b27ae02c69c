"""The networks of README.md (SmallBNN) and docs/file-format.md (TinyNet) draw each layer's initial
weights from one Generator: no two layers start correlated, and a seed still reproduces the model.
And what the docs say about ``rng=`` ints holds."""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

from bitnet import nn
from bitnet.nn import registry

REPO = Path(__file__).resolve().parents[2]


def _class_from_docs(page, name):
    """The class ``name`` defined in a ```python block of ``page``: the block's code up to the end of
    the class (the next unindented line), executed on its own."""
    for block in re.findall(r"^```python\n(.*?)^```", (REPO / page).read_text(), re.M | re.S):
        lines = block.splitlines()
        start = next((i for i, ln in enumerate(lines) if ln.startswith(f"class {name}(")), None)
        if start is None:
            continue
        end = next((i for i in range(start + 1, len(lines)) if lines[i] and not lines[i][0].isspace()), len(lines))
        namespace = {"__name__": f"docs_{name.lower()}"}
        before = dict(registry._CLASSES)
        try:
            exec(compile("\n".join(lines[:end]), page, "exec"), namespace)
        finally:
            registry._CLASSES.clear()
            registry._CLASSES.update(before)  # the page's registration stays in the page's own run
        return namespace[name]
    raise AssertionError(f"no class {name} in {page}")


def _conv_weights(model):
    return [m.weight.data for _, m in model.named_modules() if isinstance(m, nn.Conv2d)]


@pytest.mark.parametrize("page,name", [("README.md", "SmallBNN"), ("docs/file-format.md", "TinyNet")])
def test_documented_networks_start_with_uncorrelated_layers(page, name):
    cls = _class_from_docs(page, name)
    a, b = _conv_weights(cls(rng=0))[:2]  # the float stem conv and the binary conv
    n = min(a.size, b.size)
    assert abs(np.corrcoef(a.ravel()[:n], b.ravel()[:n])[0, 1]) < 0.3
    again = cls(rng=0)
    assert all(np.array_equal(x.data, y.data) for x, y in zip(cls(rng=0).parameters(), again.parameters()))
    assert not np.array_equal(_conv_weights(cls(rng=1))[0], a)
    gen = np.random.default_rng(0)  # a Generator works too, and is the same stream as its seed
    assert all(np.array_equal(x.data, y.data) for x, y in zip(cls(rng=gen).parameters(), again.parameters()))


def test_what_the_docs_say_about_int_seeds():
    c1, c2 = nn.Conv2d(1, 16, 3, rng=0), nn.QConv2d(16, 16, 3, rng=0)
    assert np.corrcoef(c1.weight.data.ravel(), c2.weight.data.ravel()[:144])[0, 1] > 0.99  # one stream, twice
    assert np.array_equal(nn.Conv2d(16, 16, 3, rng=0).weight.data, c2.weight.data)
    rng = np.random.default_rng(0)
    d1, d2 = nn.Conv2d(1, 16, 3, rng=rng), nn.QConv2d(16, 16, 3, rng=rng)
    assert abs(np.corrcoef(d1.weight.data.ravel(), d2.weight.data.ravel()[:144])[0, 1]) < 0.3
