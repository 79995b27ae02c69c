"""Quantizers: a forward that quantizes, a straight-through backward, a precision and a config.

Larq's shape (docs/design.md, section 4): each quantizer is a small ``Function`` (forward with its backward
right below it) plus a thin ``Quantizer`` class holding ``precision`` (bits) and a JSON config,
registered under a string name. ``get`` turns a name, a config dict or an instance into a
quantizer; ``for_bits`` is BMXNet's ``act_bit`` / ``weight_bit`` shorthand.

Sign convention (docs/design.md): ``sign(x) = -1 if x < 0 else +1``: zero goes to +1, and so does NaN
(it is not below 0), everywhere: training, packing (``bit = x < 0``), CUDA. A diverged network's NaN
activations therefore binarize to +1 on every path alike; they still show in every float layer.
Outputs keep the input's float dtype (float32 stays float32); integer/bool inputs become float32.

Each quantizer declares what its output is (``Quantizer.output``), so that layers, packing and the
summary ask a quantizer what it produces instead of testing its name:

- ``"sign"``: the forward is exactly sign(x) of the convention above (-1 where x < 0, else +1),
  whatever the backward (ste_sign, approx_sign, swish_sign): a binary input or kernel, run on bits;
- ``"scaled_sign"``: the forward is ``alpha[o] * sign(w)`` with one scale per output channel
  (magnitude_aware_sign): a binary kernel; ``sign_part`` and ``scale`` give the two factors;
- ``"heaviside"``: 0 or 1; ``"levels"``: k-bit levels (DoReFa); ``"float"``: anything else (the
  default for a quantizer that declares nothing, and ``identity``). A quantizer whose outputs are
  +-1 but not sign(x) of its input (a shifted threshold, say) must not declare ``"sign"``: packed
  layers compute sign(x) from the bits ``x < 0``.
"""
from __future__ import annotations

import difflib
import inspect
import json
import numbers

import numpy as np

from bitnet.gpu.arrays import array_module
from bitnet.kernels import sign as S
from bitnet.ops import workspace as W
from bitnet.tensor import Function, Tensor

__all__ = ["Quantizer", "OUTPUTS", "register", "get", "serialize", "names", "for_bits", "SteSign", "ApproxSign",
           "SwishSign", "SteHeaviside", "MagnitudeAwareSign", "DoReFaActivation", "DoReFaWeight",
           "Identity"]

_REGISTRY: dict = {}

# the kinds of output a quantizer can declare (``Quantizer.output``), see the module docstring
OUTPUTS = ("sign", "scaled_sign", "heaviside", "levels", "float")


def _float(x: np.ndarray) -> np.ndarray:
    return x if x.dtype.kind == "f" else x.astype(np.float32)


def _flat(a: np.ndarray) -> np.ndarray:
    return np.asarray(a, order="C").reshape(-1)  # (np.ascontiguousarray would make 0-d arrays 1-d)


_KERNEL_DTYPES = (np.float32, np.float64)  # others (float16) take NumPy's passes


def _sign(x: np.ndarray, clip_value=None):
    """-1 where x < 0, +1 elsewhere (zero and NaN included), in x's dtype (one pass, ``kernels.sign``).
    With a ``clip_value``: ``(signs, within)``, ``within`` True when every |x| <= clip_value (then
    the straight-through gradient passes everywhere; found in the same pass)."""
    if x.dtype not in _KERNEL_DTYPES:
        one = x.dtype.type(1)
        out, within = np.where(x < 0, -one, one), False
    else:
        out = W.empty(x.shape, x.dtype)
        within = S.sign(_flat(x), out.reshape(-1), clip_value)
    return out if clip_value is None else (out, within)


def _pass_within(g: np.ndarray, x: np.ndarray, clip_value, within=False) -> np.ndarray:
    """g where |x| <= clip_value (boundary included), 0 elsewhere; g itself if clip_value is None or
    ``within`` (every |x| <= clip_value, as ``_sign`` found)."""
    if clip_value is None or (within and g.shape == x.shape):
        return g
    if x.dtype not in _KERNEL_DTYPES or g.dtype not in _KERNEL_DTYPES:
        return np.where(np.abs(x) <= x.dtype.type(clip_value), g, g.dtype.type(0))
    out = W.empty(x.shape, g.dtype)
    S.ste_mask(_flat(np.broadcast_to(g, x.shape)), _flat(x), x.dtype.type(clip_value), out.reshape(-1))
    return out


def _round_levels(v: np.ndarray, bits: int) -> np.ndarray:
    """q(v) = round(v * (2^k - 1)) / (2^k - 1) for v in [0, 1]: 2^k levels (np.round: half to even)."""
    n = v.dtype.type(2 ** bits - 1)
    return np.round(v * n) / n


# -- primitives: forward, then its backward -------------------------------------------------------
class _SteSignFn(Function):
    def forward(self, x, clip_value=1.0):
        self.x, self.clip_value = _float(x), clip_value
        if clip_value is None:
            return _sign(self.x)
        out, self.within = _sign(self.x, clip_value)
        return out

    def backward(self, g):
        return _pass_within(g, self.x, self.clip_value, self.clip_value is not None and self.within)


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
        return np.where(self.x < 0, self.x.dtype.type(0), self.x.dtype.type(1))

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


# Functions whose forward is exactly sign(x) (what ``SteSign.__call__`` may skip after)
_SIGN_FUNCTIONS = (_SteSignFn, _ApproxSignFn, _SwishSignFn)


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
    output = "float"     # what the output is: one of OUTPUTS (module docstring)

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
        old = _REGISTRY.get(name)
        if old is not None and old is not cls and not _redefinition(old, cls):
            raise ValueError(f"quantizer name {name!r} is already taken by {old.__module__}.{old.__qualname__}; "
                             "choose another name")
        if cls.output not in OUTPUTS:
            raise ValueError(f"@register({name!r}): {cls.__name__}.output must be one of {OUTPUTS}, got "
                             f"{cls.output!r}; it says what the quantizer produces (bitnet.quantizers docstring)")
        if cls.output == "scaled_sign" and not (callable(getattr(cls, "sign_part", None))
                                                and callable(getattr(cls, "scale", None))):
            raise TypeError(f"@register({name!r}): a 'scaled_sign' quantizer defines sign_part(w) (the +-1 factor, "
                            "a Tensor) and scale(w) (one positive scale per output channel)")
        cls.name = name
        _REGISTRY[name] = cls
        return cls
    return decorate


def _redefinition(old, new) -> bool:
    """The same class defined again (a notebook cell or a module run twice): same module and name."""
    return old.__module__ == new.__module__ and old.__qualname__ == new.__qualname__


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
    output = "sign"

    def __init__(self, clip_value=1.0):
        self.clip_value = _check_positive(clip_value, "SteSign")

    def __call__(self, x) -> Tensor:
        """A tensor that a sign quantizer just made (in a graph: ``QActivation`` before a binary
        layer's own input quantizer) is returned as it is: sign(sign(x)) = sign(x), and with
        clip_value >= 1 (or None) the gradient passes everywhere, as |sign(x)| = 1. Same values and
        gradients, two passes fewer."""
        if (isinstance(x, Tensor) and isinstance(x._ctx, _SIGN_FUNCTIONS)
                and (self.clip_value is None or self.clip_value >= 1)):
            return x
        return super().__call__(x)


@register("approx_sign")
class ApproxSign(Quantizer):
    """Bi-Real Net: forward sign(x) (sign(0) = +1); backward grad * (2 - 2|x|) for |x| <= 1, else 0."""

    function, precision = _ApproxSignFn, 1
    output = "sign"


@register("swish_sign")
class SwishSign(Quantizer):
    """BNN+: forward sign(x); backward grad * beta (2 - beta x tanh(beta x / 2)) / (1 + cosh(beta x)).

    That is the derivative of 2 sigmoid(beta x) (1 + beta x (1 - sigmoid(beta x))) - 1.
    """

    function, precision = _SwishSignFn, 1
    output = "sign"

    def __init__(self, beta=5.0):
        self.beta = _check_positive(beta, "SwishSign", "beta", allow_none=False)


@register("ste_heaviside")
class SteHeaviside(Quantizer):
    """1 where x >= 0 else 0; gradient passed where |x| <= clip_value (None: everywhere)."""

    function, precision = _SteHeavisideFn, 1
    output = "heaviside"

    def __init__(self, clip_value=1.0):
        self.clip_value = _check_positive(clip_value, "SteHeaviside")


@register("magnitude_aware_sign")
class MagnitudeAwareSign(Quantizer):
    """XNOR-Net weights: sign(w) * alpha, alpha[o] = mean |w[o]| over all axes but 0 (output channel).

    Backward: ste_sign's gradient (|w| <= clip_value) times alpha; alpha is under stop-gradient.
    A channel of all zeros has alpha = 0 and quantizes to zeros.
    """

    function, precision = _MagnitudeAwareSignFn, 1
    output = "scaled_sign"

    def __init__(self, clip_value=1.0):
        self.clip_value = _check_positive(clip_value, "MagnitudeAwareSign")

    def sign_part(self, w) -> Tensor:
        """The +-1 factor: ``ste_sign`` with this quantizer's clip_value (its gradient is the
        straight-through one; the layer multiplies it by ``scale``, so the weight's gradient is
        ste_sign's times alpha, as for the whole quantizer)."""
        return _SteSignFn.apply(w if isinstance(w, Tensor) else Tensor(w), clip_value=self.clip_value)

    @staticmethod
    def scale(w) -> np.ndarray:
        """alpha (O,): the mean |w| of each output channel, in w's float dtype."""
        w = w.data if isinstance(w, Tensor) else w
        xp = array_module(w)  # NumPy, or the device's array module for a weight on "cuda"
        w = _float(xp.asarray(w))
        return xp.mean(xp.abs(w.reshape(w.shape[0], -1)), axis=1).astype(w.dtype)


@register("dorefa_activation")
class DoReFaActivation(Quantizer):
    """k-bit activations: q(clip(x, 0, 1)), q(v) = round(v (2^k - 1)) / (2^k - 1): 2^k levels in [0, 1].

    Rounding is ``np.round``, i.e. round half to even (0.5 -> 0, 1.5 -> 2). Backward: the clip's
    gradient (1 inside [0, 1] inclusive, 0 outside); straight-through for the rounding.
    Valid bits: 2..31. (In float32, k above 24 cannot give 2^k distinct levels.)
    """

    function, precision = _DoReFaActivationFn, property(lambda self: self.bits)
    output = "levels"

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
    output = "levels"

    def __init__(self, bits):
        self.bits = _check_bits(bits, 2, 31, "DoReFaWeight")


@register("identity")
class Identity(Quantizer):
    """Full precision: returns the input Tensor itself (arrays are wrapped in a Tensor)."""

    precision, output = 32, "float"

    def __call__(self, x) -> Tensor:
        return x if isinstance(x, Tensor) else Tensor(x)
