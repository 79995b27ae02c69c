"""Argument checks shared by the optimizers and schedulers.

Every check raises ``ValueError`` (or ``TypeError`` for a non-number) whose message names the
owner and the argument, shows the value received and says what is expected.
"""
from __future__ import annotations

import math
import numbers

__all__ = ["check_number", "check_int", "check_betas"]


def check_number(owner: str, name: str, value, *, low=None, high=None, low_open=False,
                 high_open=False) -> float:
    """Return ``float(value)`` after checking it is a finite real number in the given range."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{owner}: {name} must be a real number, got {value!r} "
                        f"({type(value).__name__})")
    v = float(value)
    if math.isnan(v):
        raise ValueError(f"{owner}: {name} must be a number, got nan")
    bad_low = low is not None and (v <= low if low_open else v < low)
    bad_high = high is not None and (v >= high if high_open else v > high)
    if bad_low or bad_high:
        lo = "" if low is None else f"{'(' if low_open else '['}{low}"
        hi = "" if high is None else f"{high}{')' if high_open else ']'}"
        if low is None:
            expected = f"{'<' if high_open else '<='} {high}"
        elif high is None:
            expected = f"{'>' if low_open else '>='} {low}"
        else:
            expected = f"in {lo}, {hi}"
        raise ValueError(f"{owner}: {name} must be {expected}, got {value!r}")
    return v


def check_int(owner: str, name: str, value, *, low: int) -> int:
    """Return ``int(value)`` after checking it is an integer >= ``low``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{owner}: {name} must be an integer, got {value!r} "
                        f"({type(value).__name__})")
    if value < low:
        raise ValueError(f"{owner}: {name} must be an integer >= {low}, got {value!r}")
    return int(value)


def check_betas(owner: str, betas) -> tuple:
    """Return ``(beta1, beta2)`` as floats after checking both lie in [0, 1)."""
    try:
        b1, b2 = betas
    except (TypeError, ValueError):
        raise ValueError(f"{owner}: betas must be a pair (beta1, beta2), got {betas!r}") from None
    return (check_number(owner, "betas[0]", b1, low=0.0, high=1.0, high_open=True),
            check_number(owner, "betas[1]", b2, low=0.0, high=1.0, high_open=True))
