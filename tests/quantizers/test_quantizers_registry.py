"""Registry, get/serialize round trips, equality, repr and error messages."""
import json

import numpy as np
import pytest

from bitnet import quantizers as Q

EXPECTED_NAMES = ["approx_sign", "dorefa_activation", "dorefa_weight", "identity",
                  "magnitude_aware_sign", "ste_heaviside", "ste_sign", "swish_sign"]

EXAMPLES = [Q.SteSign(), Q.SteSign(0.5), Q.SteSign(None), Q.ApproxSign(), Q.SwishSign(),
            Q.SwishSign(2.0), Q.SteHeaviside(), Q.SteHeaviside(None), Q.MagnitudeAwareSign(),
            Q.MagnitudeAwareSign(0.75), Q.DoReFaActivation(2), Q.DoReFaActivation(8),
            Q.DoReFaWeight(3), Q.Identity()]


def test_names():
    assert Q.names() == EXPECTED_NAMES
    assert {type(q).name for q in EXAMPLES} == set(EXPECTED_NAMES)


@pytest.mark.parametrize("q", EXAMPLES, ids=repr)
def test_serialization_round_trip(q):
    config = Q.serialize(q)
    assert config == q.get_config() and config["name"] == type(q).name
    params = set(config) - {"name"}
    assert params == set(vars(q))  # every constructor argument, nothing else
    again = Q.get(json.loads(json.dumps(config)))
    assert again == q and type(again) is type(q) and again is not q
    assert again.get_config() == config and again.precision == q.precision
    assert hash(again) == hash(q)
    assert type(q).from_config(config) == q


def test_get_forms():
    assert Q.get(None) is None and Q.serialize(None) is None
    q = Q.SteSign(0.3)
    assert Q.get(q) is q
    assert Q.get("ste_sign") == Q.SteSign()
    assert Q.get("identity") == Q.Identity()
    assert Q.get({"name": "ste_sign", "clip_value": 0.5}) == Q.SteSign(0.5)
    assert Q.get({"name": "swish_sign", "beta": 2}).beta == 2.0
    assert Q.get({"name": "dorefa_weight", "bits": 4}) == Q.DoReFaWeight(4)
    assert Q.serialize("approx_sign") == {"name": "approx_sign"}
    assert Q.serialize(Q.DoReFaActivation(2)) == {"name": "dorefa_activation", "bits": 2}
    assert Q.serialize(Q.SteSign()) == {"name": "ste_sign", "clip_value": 1.0}


def test_equality_and_repr():
    assert Q.SteSign(1) == Q.SteSign(1.0) == Q.SteSign()
    assert Q.SteSign(0.5) != Q.SteSign()
    assert Q.SteSign() != Q.SteHeaviside()  # same arguments, different quantizer
    assert Q.SteSign() != "ste_sign"
    assert Q.DoReFaActivation(2) != Q.DoReFaWeight(2)
    assert repr(Q.SteSign()) == "SteSign(clip_value=1.0)"
    assert repr(Q.DoReFaWeight(3)) == "DoReFaWeight(bits=3)"
    assert repr(Q.Identity()) == "Identity()"
    assert len({Q.SteSign(), Q.SteSign(1.0), Q.ApproxSign()}) == 2


def test_unknown_name():
    with pytest.raises(ValueError) as e:
        Q.get("ste_sgn")
    msg = str(e.value)
    assert "'ste_sgn'" in msg and "did you mean 'ste_sign'" in msg
    assert all(n in msg for n in EXPECTED_NAMES) and "register" in msg
    with pytest.raises(ValueError, match="'nope'.*approx_sign"):
        Q.get({"name": "nope"})


def test_bad_kwargs():
    with pytest.raises(TypeError) as e:
        Q.get({"name": "ste_sign", "clip": 1.0})
    msg = str(e.value)
    assert "'clip'" in msg and "clip_value" in msg and "'ste_sign'" in msg
    with pytest.raises(TypeError, match="'bits'.*'name': 'dorefa_activation', 'bits'"):
        Q.get("dorefa_activation")  # needs bits
    with pytest.raises(TypeError, match="no arguments"):
        Q.get({"name": "approx_sign", "beta": 1})


@pytest.mark.parametrize("bad", [{"clip_value": -1.0}, {"clip_value": 0}, {"clip_value": "1"},
                                 {"clip_value": float("inf")}, {"clip_value": True}])
def test_bad_clip_values(bad):
    with pytest.raises(ValueError, match="clip_value"):
        Q.get({"name": "ste_sign", **bad})


def test_bad_beta():
    for beta in (0, -1.0, "5", float("nan")):
        with pytest.raises(ValueError, match="beta"):
            Q.SwishSign(beta)


@pytest.mark.parametrize("bad", [3, 1.0, ["ste_sign"], Q.SteSign, np.float32(1)])
def test_bad_identifier_type(bad):
    with pytest.raises(TypeError, match="cannot interpret") as e:
        Q.get(bad)
    assert "ste_sign" in str(e.value)


def test_dict_without_name():
    with pytest.raises(ValueError, match="'name'"):
        Q.get({"clip_value": 1.0})


def test_register_custom_and_duplicate(monkeypatch):
    monkeypatch.setattr(Q, "_REGISTRY", dict(Q._REGISTRY))

    @Q.register("scaled_sign_test")
    class ScaledSign(Q.Quantizer):
        function, precision = Q.SteSign.function, 1

        def __init__(self, clip_value=2.0):
            self.clip_value = clip_value

    q = Q.get({"name": "scaled_sign_test", "clip_value": 3.0})
    assert isinstance(q, ScaledSign) and Q.get(Q.serialize(q)) == q
    assert "scaled_sign_test" in Q.names()
    with pytest.raises(ValueError, match="already taken"):
        Q.register("ste_sign")(ScaledSign)


def test_unregistered_subclass_cannot_serialize():
    class Loose(Q.Quantizer):
        pass

    with pytest.raises(TypeError, match="not registered"):
        Loose().get_config()
    with pytest.raises(NotImplementedError):
        Loose()(np.zeros(2))
