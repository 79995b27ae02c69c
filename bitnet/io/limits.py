"""How much memory a model file may make bitnet allocate, decided before anything is built or read.

The bytes of a model's parameters and buffers are computed from the file's architecture alone
(``model_bytes``): every layer class of bitnet (and the zoo's ResNet classes) says what its config
will allocate (``Module.state_bytes``), from sizes checked to be positive integers (Python ints:
no overflow, nothing negative to cancel a sum); a class that cannot tell (a class of your own)
counts the children the file lists for it. A file may describe at most ``allowed_bytes``:

    max_bytes, when given (``bitnet.load(path, max_bytes=...)`` or ``BITNET_MAX_MODEL_BYTES``), else
    min(MAX_MODEL_BYTES = 1 GiB, EARNED[kind] x the file's size + EARNED_SLACK)

The second term is what the file earned: a checkpoint stores every float32 value, so a model more
than 8 times its file (gzip does no better on float weights) was not written by bitnet; a packed
file stores binary kernels at 1 bit for the float model's 32 (64 times). While the model is built,
``bitnet.nn.init.allocation_limit`` holds every parameter and buffer allocation to the same bound,
as a second line for classes that do not know their sizes and for version 1 zoo files (which name
a builder, not an architecture).
"""
from __future__ import annotations

import os

from bitnet.io.h5 import BitnetFileError, short

MAX_MODEL_BYTES = 1 << 30         # parameters + buffers of a model a file may describe, by default
EARNED = {"checkpoint": 8, "packed": 64, "state_dict": 8}
EARNED_SLACK = 1 << 20
MAX_INPUT_VALUES = 1 << 24        # values of one input sample (C * H * W) a file may declare
ENV = "BITNET_MAX_MODEL_BYTES"
# what a class's state_bytes may raise for arguments its constructor refuses
ARGUMENT_ERRORS = (TypeError, ValueError, KeyError, IndexError, ZeroDivisionError, OverflowError, AttributeError)


def _explicit(max_bytes):
    """``max_bytes`` or the environment's ``BITNET_MAX_MODEL_BYTES``, checked; None if neither."""
    if max_bytes is None:
        text = os.environ.get(ENV)
        if text is None or not text.strip():
            return None
        try:
            max_bytes = int(text.strip())
        except ValueError:
            raise ValueError(f"{ENV}={text!r}: expected a number of bytes, e.g. {2 << 30} for 2 GiB") from None
    if isinstance(max_bytes, bool) or not isinstance(max_bytes, int) or max_bytes < 0:
        raise ValueError(f"max_bytes must be a non-negative int (bytes), got {max_bytes!r}")
    return max_bytes


def allowed_bytes(path, kind: str, max_bytes=None) -> tuple:
    """``(bytes, why)``: the most parameter and buffer bytes the file at ``path`` may describe, and the
    rule that set it (module docstring)."""
    explicit = _explicit(max_bytes)
    if explicit is not None:
        return explicit, "max_bytes" if max_bytes is not None else ENV
    size = os.path.getsize(path)
    earned = EARNED.get(kind, 8) * size + EARNED_SLACK
    if earned < MAX_MODEL_BYTES:
        return earned, f"{EARNED.get(kind, 8)} x the file's {size} bytes + {EARNED_SLACK}: a {kind} file cannot " \
                       "describe a model much larger than itself"
    return MAX_MODEL_BYTES, "the default cap of 1 GiB"


def check_bytes(path, key, nbytes: int, allowed: tuple, largest=None) -> None:
    """Raise unless ``nbytes <= allowed[0]``; ``largest`` ``(where, bytes)`` names the biggest layer."""
    limit, why = allowed
    if nbytes > limit:
        where = f"; the largest layer: {largest[0]} ({largest[1]} bytes)" if largest else ""
        raise BitnetFileError(path, key, f"a model of at most {limit} bytes of parameters and buffers ({why})",
                              f"{nbytes} bytes{where}", f"if you trust this file, pass max_bytes= (bitnet.load(path, "
                              f"max_bytes=...)) or set {ENV}")


def _knows_its_size(cls) -> bool:
    """True when ``cls.state_bytes`` describes ``cls``'s own constructor: it is defined by ``cls`` or by a
    base class whose constructor ``cls`` did not replace (a subclass with a constructor of its own may
    take other arguments and allocate other arrays: it counts as a class that cannot tell)."""
    for klass in cls.__mro__:
        if "state_bytes" in klass.__dict__:
            return True
        if "__init__" in klass.__dict__:
            return False
    return False


def model_bytes(node, path, where="config.architecture") -> tuple:
    """``(bytes, (where, bytes) of the largest layer)`` of the parameters and buffers the architecture
    NODE (checked by ``config.check_config``) will allocate; ``BitnetFileError`` naming the node for
    arguments its class refuses."""
    from bitnet.nn import registry
    cls = registry.lookup(node["class"])
    own = None
    if not cls.config_children and _knows_its_size(cls):
        try:
            own = cls.state_bytes(node.get("config", {}))
        except ARGUMENT_ERRORS as e:
            raise BitnetFileError(path, f"{where}.config", f"arguments that {node['class']} accepts",
                                  f"{type(e).__name__}: {e}") from None
        if own is not None and (isinstance(own, bool) or not isinstance(own, int) or own < 0):
            raise BitnetFileError(path, f"{where}.config", f"a size from {node['class']}.state_bytes",
                                  short(own), "a bug in that class's state_bytes")
    if own is not None:
        return own, (where, own)
    total, largest = 0, None
    for child in node.get("children", []):
        n, big = model_bytes(child, path, f"{where}.{child['name']}")
        total += n
        if big is not None and (largest is None or big[1] > largest[1]):
            largest = big
    return total, largest


def check_input_shape(path, key, shape) -> None:
    """A declared input shape (C, H, W) may hold at most ``MAX_INPUT_VALUES`` values per sample."""
    n = 1
    for v in shape:
        n *= int(v)
    if n > MAX_INPUT_VALUES:
        raise BitnetFileError(path, key, f"an input of at most {MAX_INPUT_VALUES} values per sample (C * H * W)",
                              f"{short(list(shape))} ({n} values)")
