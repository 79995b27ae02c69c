"""Quantizers: a forward that quantizes, a straight-through backward, a precision and a config.

Larq's shape (DESIGN.md §4): each quantizer is a small ``Function`` (forward with its backward
right below it) plus a thin ``Quantizer`` class holding ``precision`` (bits) and a JSON config,
registered under a string name. ``get`` turns a name, a config dict or an instance into a
quantizer; ``for_bits`` is BMXNet's ``act_bit`` / ``weight_bit`` shorthand.

Sign convention (DESIGN.md §3): ``sign(x) = +1 if x >= 0 else -1``; zero goes to +1 everywhere.
Outputs keep the input's float dtype (float32 stays float32); integer/bool inputs become float32.
"""
from __future__ import annotations

import difflib
import inspect
import json
import numbers

import numpy as np

from bitnet.tensor import Function, Tensor

__all__ = ["Quantizer", "register", "get", "serialize", "names", "for_bits", "SteSign", "ApproxSign",
           "SwishSign", "SteHeaviside", "MagnitudeAwareSign", "DoReFaActivation", "DoReFaWeight",
           "Identity"]

_REGISTRY: dict = {}


def _float(x: np.ndarray) -> np.ndarray:
    return x if x.dtype.kind == "f" else x.astype(np.float32)


def _sign(x: np.ndarray) -> np.ndarray:
    """+1 where x >= 0 (zero included), -1 elsewhere, in x's dtype."""
    one = x.dtype.type(1)
    return np.where(x >= 0, one, -one)


def _pass_within(g: np.ndarray, x: np.ndarray, clip_value) -> np.ndarray:
    """g where |x| <= clip_value (boundary included), 0 elsewhere; everywhere if clip_value is None."""
    if clip_value is None:
        return g
    return np.where(np.abs(x) <= x.dtype.type(clip_value), g, g.dtype.type(0))


def _round_levels(v: np.ndarray, bits: int) -> np.ndarray:
    """q(v) = round(v * (2^k - 1)) / (2^k - 1) for v in [0, 1]: 2^k levels (np.round: half to even)."""
    n = v.dtype.type(2 ** bits - 1)
    return np.round(v * n) / n


# -- primitives: forward, then its backward -------------------------------------------------------
class _SteSignFn(Function):
    def forward(self, x, clip_value=1.0):
        self.x, self.clip_value = _float(x), clip_value
        return _sign(self.x)

    def backward(self, g):
        return _pass_within(g, self.x, self.clip_value)


class _ApproxSignFn(Function):
    def forward(self, x):
        self.x = _float(x)
        return _sign(self.x)

    def backward(self, g):
        a = np.abs(self.x)
        return np.where(a <= 1, g * (2 - 2 * a), g.dtype.type(0))


class _SwishSignFn(Function):
    def forward(self, x, beta=5.0):
        self.x, self.beta = _float(x), beta
        return _sign(self.x)

    def backward(self, g):
        b = self.x.dtype.type(self.beta)
        with np.errstate(over="ignore", invalid="ignore"):
            y = b * self.x
            den = 1 + np.cosh(y)
            d = b * (2 - y * np.tanh(y / 2)) / den
        # cosh overflows where the true derivative underflows to 0 anyway
        return np.where(np.isinf(den), g.dtype.type(0), g * d)


class _SteHeavisideFn(Function):
    def forward(self, x, clip_value=1.0):
        self.x, self.clip_value = _float(x), clip_value
        return np.where(self.x >= 0, self.x.dtype.type(1), self.x.dtype.type(0))

    def backward(self, g):
        return _pass_within(g, self.x, self.clip_value)


class _MagnitudeAwareSignFn(Function):
    def forward(self, w, clip_value=1.0):
        self.w, self.clip_value = _float(w), clip_value
        self.alpha = np.mean(np.abs(self.w), axis=tuple(range(1, self.w.ndim)), keepdims=True)
        return _sign(self.w) * self.alpha

    def backward(self, g):
        return _pass_within(g, self.w, self.clip_value) * self.alpha


class _DoReFaActivationFn(Function):
    def forward(self, x, bits):
        self.x = _float(x)
        return _round_levels(np.clip(self.x, 0, 1), bits)

    def backward(self, g):
        inside = (self.x >= 0) & (self.x <= 1)
        return np.where(inside, g, g.dtype.type(0))


class _DoReFaWeightFn(Function):
    def forward(self, w, bits):
        w = _float(w)
        self.t = np.tanh(w)
        m = np.max(np.abs(self.t)) if self.t.size else 0
        self.m = w.dtype.type(1) if m == 0 else m
        return 2 * _round_levels(self.t / (2 * self.m) + w.dtype.type(0.5), bits) - 1

    def backward(self, g):
        return g * (1 - self.t * self.t) / self.m


# -- the Quantizer classes ------------------------------------------------------------------------
class Quantizer:
    """Base class. ``q(x)`` quantizes a Tensor (or array) differentiably; ``precision`` is in bits.

    Subclasses set ``function`` (a ``Function`` whose forward takes the constructor arguments as
    keyword options) and store every constructor argument under its own name: ``get_config`` reads
    them back through the ``__init__`` signature. Quantizers are equal when their configs are.
    """

    name = None          # set by @register
    function = None      # a Function subclass
    precision = 32

    def __init__(self):
        pass

    def _arguments(self) -> dict:
        params = list(inspect.signature(type(self).__init__).parameters)[1:]
        return {p: getattr(self, p) for p in params}

    def __call__(self, x) -> Tensor:
        if self.function is None:
            raise NotImplementedError(f"{type(self).__name__} sets no `function`; override __call__")
        return self.function.apply(x if isinstance(x, Tensor) else Tensor(x), **self._arguments())

    def get_config(self) -> dict:
        """``{"name": registry name, **constructor arguments}``; JSON-serializable."""
        if self.name is None or _REGISTRY.get(self.name) is not type(self):
            raise TypeError(f"{type(self).__name__} is not registered, so it cannot be serialized; "
                            "decorate it with @bitnet.quantizers.register('some_name')")
        return {"name": self.name, **self._arguments()}

    @classmethod
    def from_config(cls, config: dict) -> "Quantizer":
        return cls(**{k: v for k, v in config.items() if k != "name"})

    def __repr__(self):
        args = ", ".join(f"{k}={v!r}" for k, v in self._arguments().items())
        return f"{type(self).__name__}({args})"

    def __eq__(self, other):
        if not isinstance(other, Quantizer):
            return NotImplemented
        return type(self) is type(other) and self._arguments() == other._arguments()

    def __hash__(self):
        return hash((type(self), json.dumps(self._arguments(), sort_keys=True, default=repr)))


def register(name: str):
    """Class decorator: register a Quantizer subclass under ``name`` (used by ``get``/configs)."""
    if not isinstance(name, str) or not name:
        raise TypeError(f"register(name) needs a non-empty string, got {name!r}")

    def decorate(cls):
        if not (isinstance(cls, type) and issubclass(cls, Quantizer)):
            raise TypeError(f"@register({name!r}) decorates Quantizer subclasses, got {cls!r}")
        if name in _REGISTRY and _REGISTRY[name] is not cls:
            raise ValueError(f"quantizer name {name!r} is already taken by {_REGISTRY[name].__name__}; "
                             "choose another name")
        cls.name = name
        _REGISTRY[name] = cls
        return cls
    return decorate


def names() -> list:
    """The registered quantizer names, sorted."""
    return sorted(_REGISTRY)


def _lookup(name: str):
    if name in _REGISTRY:
        return _REGISTRY[name]
    close = difflib.get_close_matches(name, _REGISTRY, n=1)
    hint = f"did you mean {close[0]!r}? " if close else ""
    raise ValueError(f"unknown quantizer {name!r}; {hint}valid names: {', '.join(names())}. "
                     "Use one of them, or register your own with @bitnet.quantizers.register(name)")


def _construct(cls, kwargs: dict, received) -> Quantizer:
    try:
        inspect.signature(cls.__init__).bind(None, **kwargs)
    except TypeError as e:
        params = list(inspect.signature(cls.__init__).parameters)[1:]
        example = ", ".join([f"'name': {cls.name!r}"] + [f"{p!r}: ..." for p in params])
        raise TypeError(f"bad arguments for quantizer {cls.name!r} (received {received!r}): {e}. "
                        f"It accepts {params or 'no arguments'}: pass a config dict {{{example}}}"
                        ) from None
    return cls(**kwargs)


def get(identifier):
    """A Quantizer from None (-> None), a registered name, a config dict or an instance (as is)."""
    if identifier is None or isinstance(identifier, Quantizer):
        return identifier
    if isinstance(identifier, str):
        return _construct(_lookup(identifier), {}, identifier)
    if isinstance(identifier, dict):
        if not isinstance(identifier.get("name"), str):
            raise ValueError(f"a quantizer config dict needs a string 'name' key, got {identifier!r}; "
                             f"e.g. {{'name': 'ste_sign', 'clip_value': 1.0}}. Valid names: "
                             f"{', '.join(names())}")
        kwargs = {k: v for k, v in identifier.items() if k != "name"}
        return _construct(_lookup(identifier["name"]), kwargs, identifier)
    raise TypeError(f"cannot interpret {identifier!r} (type {type(identifier).__name__}) as a "
                    f"quantizer; pass None, a name ({', '.join(names())}), a config dict "
                    "{'name': ..., **kwargs} or a Quantizer instance")


def serialize(quantizer) -> dict | None:
    """The JSON-serializable config of ``get(quantizer)`` (None stays None)."""
    q = get(quantizer)
    return None if q is None else q.get_config()


def _check_bits(bits, low: int, high: int, what: str) -> int:
    ok = isinstance(bits, numbers.Integral) and not isinstance(bits, (bool, np.bool_))
    if not ok or not low <= bits <= high:
        raise ValueError(f"{what}: bits must be an integer in {low}..{high}, got {bits!r} "
                         f"({type(bits).__name__})")
    return int(bits)


def _check_positive(value, what: str, arg: str = "clip_value", allow_none: bool = True):
    if value is None and allow_none:
        return None
    if (isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real)
            or not np.isfinite(value) or value <= 0):
        extra = " or None (no cancelling)" if allow_none else ""
        raise ValueError(f"{what}: {arg} must be a finite number > 0{extra}, got {value!r}")
    return float(value)


def for_bits(bits: int, kind: str):
    """BMXNet's ``act_bit`` / ``weight_bit``: 1 -> SteSign(), 2..31 -> DoReFa k-bit, 32 -> None."""
    if kind not in ("activation", "weight"):
        raise ValueError(f"for_bits: kind must be 'activation' or 'weight', got {kind!r}")
    bits = _check_bits(bits, 1, 32, f"for_bits(kind={kind!r})")
    if bits == 1:
        return SteSign()
    if bits == 32:
        return None
    return DoReFaActivation(bits) if kind == "activation" else DoReFaWeight(bits)


@register("ste_sign")
class SteSign(Quantizer):
    """sign(x) in {-1, +1}, sign(0) = +1; gradient passed where |x| <= clip_value, else 0.

    ``clip_value=None`` passes the gradient everywhere (plain straight-through estimator).
    """

    function, precision = _SteSignFn, 1

    def __init__(self, clip_value=1.0):
        self.clip_value = _check_positive(clip_value, "SteSign")


@register("approx_sign")
class ApproxSign(Quantizer):
    """Bi-Real Net: forward sign(x) (sign(0) = +1); backward grad * (2 - 2|x|) for |x| <= 1, else 0."""

    function, precision = _ApproxSignFn, 1


@register("swish_sign")
class SwishSign(Quantizer):
    """BNN+: forward sign(x); backward grad * beta (2 - beta x tanh(beta x / 2)) / (1 + cosh(beta x)).

    That is the derivative of 2 sigmoid(beta x) (1 + beta x (1 - sigmoid(beta x))) - 1.
    """

    function, precision = _SwishSignFn, 1

    def __init__(self, beta=5.0):
        self.beta = _check_positive(beta, "SwishSign", "beta", allow_none=False)


@register("ste_heaviside")
class SteHeaviside(Quantizer):
    """1 where x >= 0 else 0; gradient passed where |x| <= clip_value (None: everywhere)."""

    function, precision = _SteHeavisideFn, 1

    def __init__(self, clip_value=1.0):
        self.clip_value = _check_positive(clip_value, "SteHeaviside")


@register("magnitude_aware_sign")
class MagnitudeAwareSign(Quantizer):
    """XNOR-Net weights: sign(w) * alpha, alpha[o] = mean |w[o]| over all axes but 0 (output channel).

    Backward: ste_sign's gradient (|w| <= clip_value) times alpha; alpha is under stop-gradient.
    A channel of all zeros has alpha = 0 and quantizes to zeros.
    """

    function, precision = _MagnitudeAwareSignFn, 1

    def __init__(self, clip_value=1.0):
        self.clip_value = _check_positive(clip_value, "MagnitudeAwareSign")


@register("dorefa_activation")
class DoReFaActivation(Quantizer):
    """k-bit activations: q(clip(x, 0, 1)), q(v) = round(v (2^k - 1)) / (2^k - 1): 2^k levels in [0, 1].

    Rounding is ``np.round``, i.e. round half to even (0.5 -> 0, 1.5 -> 2). Backward: the clip's
    gradient (1 inside [0, 1] inclusive, 0 outside); straight-through for the rounding.
    Valid bits: 2..31. (In float32, k above 24 cannot give 2^k distinct levels.)
    """

    function, precision = _DoReFaActivationFn, property(lambda self: self.bits)

    def __init__(self, bits):
        self.bits = _check_bits(bits, 2, 31, "DoReFaActivation")


@register("dorefa_weight")
class DoReFaWeight(Quantizer):
    """k-bit weights: 2 q(tanh(w) / (2 m) + 1/2) - 1 with m = max |tanh(w)| over the whole tensor
    (1 if that is 0); 2^k levels in [-1, 1]. q as in DoReFaActivation (round half to even).

    Backward: the gradient of the unrounded expression tanh(w) / m with m under stop-gradient,
    i.e. grad * (1 - tanh(w)^2) / m. Valid bits: 2..31.
    """

    function, precision = _DoReFaWeightFn, property(lambda self: self.bits)

    def __init__(self, bits):
        self.bits = _check_bits(bits, 2, 31, "DoReFaWeight")


@register("identity")
class Identity(Quantizer):
    """Full precision: returns the input Tensor itself (arrays are wrapped in a Tensor)."""

    precision = 32

    def __call__(self, x) -> Tensor:
        return x if isinstance(x, Tensor) else Tensor(x)
