"""The hint for a class name no module is registered under is Python that registers a class under
exactly that name."""
from __future__ import annotations

import re

import pytest

import bitnet
from bitnet.nn import registry


@pytest.mark.parametrize("name", ["my-bnn", "MyUnregisteredNet", "pkg.Model v2", "it's"])
def test_the_suggested_decorator_registers_the_class_under_that_name(name):
    with pytest.raises(KeyError) as info:
        registry.lookup(name)
    msg = info.value.args[0]
    assert "--import MODULE" in msg and "split" not in msg
    decorator = re.search(r"(@bitnet\.nn\.register\((?:'[^']*'|\"[^\"]*\")\))", msg).group(1)
    namespace = {"bitnet": bitnet}
    try:
        exec(compile(f"{decorator}\nclass Suggested(bitnet.nn.Module):\n    pass\n", "<hint>", "exec"), namespace)
        assert registry.lookup(name) is namespace["Suggested"]
    finally:
        registry._CLASSES.pop(name, None)


def test_an_identifier_also_gets_the_plain_decorator():
    msg = pytest.raises(KeyError, registry.lookup, "MyUnregisteredNet").value.args[0]
    assert "@bitnet.nn.register('MyUnregisteredNet') (or plain @bitnet.nn.register if the class is named " \
           "MyUnregisteredNet)" in msg
    assert "plain" not in pytest.raises(KeyError, registry.lookup, "my-bnn").value.args[0]


def test_loading_a_file_of_an_unregistered_class_shows_the_hint(tmp_path):
    @bitnet.nn.register("hint-test-net")
    class HintTestNet(bitnet.nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = bitnet.nn.Dense(2, 2, rng=0)

        def forward(self, x):
            return self.fc(x)
    bitnet.save(HintTestNet(), tmp_path / "m.h5")
    registry._CLASSES.pop("hint-test-net")
    with pytest.raises(bitnet.BitnetFileError, match=re.escape("@bitnet.nn.register('hint-test-net')")):
        bitnet.load(tmp_path / "m.h5")
