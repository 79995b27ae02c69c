"""Learning-rate schedules: the lr of every parameter group as a closed-form function of a counter.

A scheduler counts calls to ``step()`` in ``last_epoch`` (0 right after construction) and sets
``group["lr"] = lr_t`` for every parameter group, computed from that group's initial lr
(``group["initial_lr"]``, recorded on first use). Call ``step()`` once per epoch or once per
iteration, after ``optimizer.step()``, whichever unit the schedule's lengths are counted in.
With ``b`` the group's initial lr and ``t = last_epoch``:

===================  ==========================================================================
StepLR               ``b * gamma ** (t // step_size)``
MultiStepLR          ``b * gamma ** (number of milestones <= t)``
CosineAnnealingLR    ``eta_min + (b - eta_min) * (1 + cos(pi * t / T_max)) / 2`` (like PyTorch,
                     it keeps following the cosine, rising again, beyond ``T_max``)
LinearWarmup         ``b * (f + (1 - f) * t / W)`` for ``t < W`` (``f = start_factor``), then
                     the ``after`` scheduler's lr at ``t - W`` (or ``b`` without one)
WarmupCosine         linear warm-up as above, then cosine from ``b`` down to ``eta_min`` over
                     ``total_steps - W`` steps, holding ``eta_min`` after ``total_steps``
===================  ==========================================================================

``LinearWarmup(opt, W, after=CosineAnnealingLR(opt, T_max))`` equals PyTorch's
``SequentialLR([LinearLR(opt, f, 1, W), CosineAnnealingLR(opt, T_max)], milestones=[W])``; build
``after`` first and step only the outer scheduler. ``state_dict()`` is plain data.
"""
from __future__ import annotations

import math
from bisect import bisect_right

from bitnet.optim._checks import check_int, check_number
from bitnet.optim.optimizer import Optimizer, _plain

MAX_COUNTER = 1 << 53  # a step counter beyond this loses integer precision in the closed forms

__all__ = ["LRScheduler", "StepLR", "MultiStepLR", "CosineAnnealingLR", "LinearWarmup",
           "WarmupCosine"]


def _cosine(base: float, eta_min: float, t: int, period: int) -> float:
    return eta_min + (base - eta_min) * (1 + math.cos(math.pi * t / period)) / 2


def _warmup(base: float, start_factor: float, t: int, warmup_steps: int) -> float:
    return base * (start_factor + (1 - start_factor) * t / warmup_steps)


class LRScheduler:
    """Base class: subclasses define ``_lr(base_lr, t)`` and list their settings in ``_config``."""

    _config: tuple = ()

    def __init__(self, optimizer: Optimizer):
        if not isinstance(optimizer, Optimizer):
            raise TypeError(f"{type(self).__name__}: expected a bitnet Optimizer, got "
                            f"{type(optimizer).__name__}")
        self.optimizer = optimizer
        for group in optimizer.param_groups:
            group.setdefault("initial_lr", group["lr"])
        self.base_lrs = [float(group["initial_lr"]) for group in optimizer.param_groups]
        self.last_epoch = -1
        self._last_lr: list = []
        self.step()

    def _lr(self, base_lr: float, t: int) -> float:
        raise NotImplementedError

    def lr_at(self, t: int) -> list:
        """The learning rates of all groups after ``t`` calls to ``step()`` (closed form)."""
        return [float(self._lr(base, t)) for base in self.base_lrs]

    def step(self) -> None:
        """Advance the counter by one and set every group's lr."""
        self.last_epoch += 1
        self._apply(self.lr_at(self.last_epoch))

    def _apply(self, lrs: list) -> None:
        for group, lr in zip(self.optimizer.param_groups, lrs):
            group["lr"] = lr
        self._last_lr = list(lrs)

    def get_last_lr(self) -> list:
        """The learning rates set by the last ``step()`` (one per parameter group)."""
        return list(self._last_lr)

    def state_dict(self) -> dict:
        """Plain data: the scheduler type, counter, initial and last lrs and its settings."""
        sd = {"type": type(self).__name__, "last_epoch": self.last_epoch,
              "base_lrs": list(self.base_lrs), "last_lr": list(self._last_lr)}
        sd.update({k: _plain(getattr(self, k)) for k in self._config})
        return sd

    @classmethod
    def _checked(cls, settings: dict) -> dict:
        """The settings named in ``_config``, checked as the constructor checks them (subclasses)."""
        return {}

    def load_state_dict(self, state_dict: dict) -> None:
        """Restore a ``state_dict()``: type, keys, counter, lrs (finite, >= 0, one per group) and the
        settings are all checked, as the constructor checks them, before anything is set."""
        self._set_state(self._validated(state_dict))

    def _validated(self, state_dict) -> tuple:
        name = f"{type(self).__name__}.load_state_dict"
        if not isinstance(state_dict, dict):
            raise ValueError(f"{name}: expected a dict (LRScheduler.state_dict()), got {type(state_dict).__name__}")
        if state_dict.get("type", type(self).__name__) != type(self).__name__:
            raise ValueError(f"{name}: the state dict is of a {state_dict['type']}, expected a "
                             f"{type(self).__name__}")
        keys = ("type", "last_epoch", "base_lrs", "last_lr") + self._config
        missing = [k for k in keys if k not in state_dict]
        if missing:
            raise ValueError(f"{name}: state dict lacks {missing}; expected the keys {list(keys)}")
        last_epoch = check_int(name, "last_epoch", state_dict["last_epoch"], low=-1)
        if last_epoch > MAX_COUNTER:
            raise ValueError(f"{name}: last_epoch must be at most 2^53, got {last_epoch}")
        n = len(self.optimizer.param_groups)
        lrs = {}
        for k in ("base_lrs", "last_lr"):
            if not isinstance(state_dict[k], (list, tuple)):
                raise ValueError(f"{name}: {k} must be a list of lrs, one per parameter group, got "
                                 f"{state_dict[k]!r}"[:300])
            if len(state_dict[k]) != n:
                raise ValueError(f"{name}: {k} has {len(state_dict[k])} entries, the optimizer "
                                 f"has {n} parameter group(s)")
            lrs[k] = [check_number(name, f"{k}[{i}]", v, low=0.0, high=1e300) for i, v in enumerate(state_dict[k])]
        settings = self._checked({k: state_dict[k] for k in self._config})
        return last_epoch, lrs["base_lrs"], lrs["last_lr"], settings

    def _set_state(self, validated) -> None:
        last_epoch, base_lrs, last_lr, settings = validated
        for k, v in settings.items():
            setattr(self, k, v)
        self.last_epoch, self.base_lrs = last_epoch, base_lrs
        self._apply(last_lr)

    def __repr__(self):
        cfg = ", ".join(f"{k}={getattr(self, k)!r}" for k in self._config)
        return f"{type(self).__name__}({cfg}, last_epoch={self.last_epoch})"


class StepLR(LRScheduler):
    """Multiply the lr by ``gamma`` every ``step_size`` steps: ``b * gamma ** (t // step_size)``."""

    _config = ("step_size", "gamma")

    def __init__(self, optimizer: Optimizer, step_size: int, gamma: float = 0.1):
        self.__dict__.update(self._checked(dict(step_size=step_size, gamma=gamma)))
        super().__init__(optimizer)

    @classmethod
    def _checked(cls, c):
        return dict(step_size=check_int("StepLR", "step_size", c["step_size"], low=1),
                    gamma=check_number("StepLR", "gamma", c["gamma"], low=0.0))

    def _lr(self, base_lr, t):
        return base_lr * self.gamma ** (t // self.step_size)


class MultiStepLR(LRScheduler):
    """Multiply the lr by ``gamma`` at each milestone: ``b * gamma ** #{m in milestones: m <= t}``."""

    _config = ("milestones", "gamma")

    def __init__(self, optimizer: Optimizer, milestones, gamma: float = 0.1):
        self.__dict__.update(self._checked(dict(milestones=milestones, gamma=gamma)))
        super().__init__(optimizer)

    @classmethod
    def _checked(cls, c):
        if isinstance(c["milestones"], (str, bytes, dict)) or not hasattr(c["milestones"], "__iter__"):
            raise TypeError(f"MultiStepLR: milestones must be a list of step numbers, got {c['milestones']!r}")
        return dict(milestones=sorted(check_int("MultiStepLR", "milestones[i]", m, low=0) for m in c["milestones"]),
                    gamma=check_number("MultiStepLR", "gamma", c["gamma"], low=0.0))

    def _lr(self, base_lr, t):
        return base_lr * self.gamma ** bisect_right(self.milestones, t)


class CosineAnnealingLR(LRScheduler):
    """Cosine from ``b`` at t=0 to ``eta_min`` at ``t = T_max`` (closed form, as PyTorch's)."""

    _config = ("T_max", "eta_min")

    def __init__(self, optimizer: Optimizer, T_max: int, eta_min: float = 0.0):
        self.__dict__.update(self._checked(dict(T_max=T_max, eta_min=eta_min)))
        super().__init__(optimizer)

    @classmethod
    def _checked(cls, c):
        return dict(T_max=check_int("CosineAnnealingLR", "T_max", c["T_max"], low=1),
                    eta_min=check_number("CosineAnnealingLR", "eta_min", c["eta_min"], low=0.0))

    def _lr(self, base_lr, t):
        return _cosine(base_lr, self.eta_min, t, self.T_max)


class LinearWarmup(LRScheduler):
    """Linear warm-up from ``start_factor * b`` over ``warmup_steps`` steps, then ``after``.

    ``after`` is another scheduler of the same optimizer (built before this one), run with its
    counter shifted by ``warmup_steps``; without it the lr stays at ``b`` after the warm-up.
    """

    _config = ("warmup_steps", "start_factor")

    def __init__(self, optimizer: Optimizer, warmup_steps: int, after: LRScheduler = None,
                 start_factor: float = 0.1):
        self.__dict__.update(self._checked(dict(warmup_steps=warmup_steps, start_factor=start_factor)))
        if after is not None:
            if not isinstance(after, LRScheduler):
                raise TypeError(f"LinearWarmup: after must be a scheduler or None, got "
                                f"{type(after).__name__}")
            if after.optimizer is not optimizer:
                raise ValueError("LinearWarmup: the 'after' scheduler must belong to the same "
                                 "optimizer as the warm-up")
        self.after = after
        super().__init__(optimizer)

    def lr_at(self, t: int) -> list:
        if t >= self.warmup_steps:
            return self.after.lr_at(t - self.warmup_steps) if self.after else list(self.base_lrs)
        return [_warmup(b, self.start_factor, t, self.warmup_steps) for b in self.base_lrs]

    def state_dict(self) -> dict:
        sd = super().state_dict()
        if self.after is not None:
            sd["after"] = self.after.state_dict()
        return sd

    @classmethod
    def _checked(cls, c):
        return dict(warmup_steps=check_int("LinearWarmup", "warmup_steps", c["warmup_steps"], low=0),
                    start_factor=check_number("LinearWarmup", "start_factor", c["start_factor"], low=0.0, high=1.0))

    def load_state_dict(self, state_dict: dict) -> None:
        validated = self._validated(state_dict)  # nothing changes unless this and 'after' are valid
        if ("after" in state_dict) != (self.after is not None):
            raise ValueError("LinearWarmup.load_state_dict: the state dict "
                             + ("has" if "after" in state_dict else "has no")
                             + " 'after' scheduler, this LinearWarmup "
                             + ("has one" if self.after is not None else "has none"))
        if self.after is not None:
            self.after.load_state_dict(state_dict["after"])
        self._set_state(validated)

    def __repr__(self):
        return super().__repr__()[:-1] + f", after={self.after!r})"


class WarmupCosine(LRScheduler):
    """Linear warm-up over ``warmup_steps``, then cosine decay to ``eta_min`` at ``total_steps``.

    For ``W <= t <= total_steps``: ``eta_min + (b - eta_min) * (1 + cos(pi * (t - W) /
    (total_steps - W))) / 2``; ``eta_min`` after ``total_steps``.
    """

    _config = ("warmup_steps", "total_steps", "eta_min", "start_factor")

    def __init__(self, optimizer: Optimizer, warmup_steps: int, total_steps: int,
                 eta_min: float = 0.0, start_factor: float = 0.1):
        self.__dict__.update(self._checked(dict(warmup_steps=warmup_steps, total_steps=total_steps,
                                                eta_min=eta_min, start_factor=start_factor)))
        super().__init__(optimizer)

    @classmethod
    def _checked(cls, c):
        warmup = check_int("WarmupCosine", "warmup_steps", c["warmup_steps"], low=0)
        total = check_int("WarmupCosine", "total_steps", c["total_steps"], low=1)
        if total <= warmup:
            raise ValueError(f"WarmupCosine: total_steps must exceed warmup_steps, got "
                             f"total_steps={c['total_steps']!r}, warmup_steps={c['warmup_steps']!r}")
        return dict(warmup_steps=warmup, total_steps=total,
                    eta_min=check_number("WarmupCosine", "eta_min", c["eta_min"], low=0.0),
                    start_factor=check_number("WarmupCosine", "start_factor", c["start_factor"], low=0.0, high=1.0))

    def _lr(self, base_lr, t):
        if t < self.warmup_steps:
            return _warmup(base_lr, self.start_factor, t, self.warmup_steps)
        period = self.total_steps - self.warmup_steps
        return _cosine(base_lr, self.eta_min, min(t - self.warmup_steps, period), period)
