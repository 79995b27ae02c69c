"""Routing parameters to optimizers: binary kernels one way, everything else another.

A binary kernel is the latent ``weight`` of a layer whose ``kernel_quantizer`` has
``precision == 1`` (QDense / QConv2d with ``weight_bit=1``, ``ste_sign``, ``magnitude_aware_sign``,
...), the same test Larq uses. Two ways to treat them differently:

* one optimizer, two groups: ``Adam(param_groups(model, weight_decay=1e-4))`` gives binary
  kernels no weight decay (decay would pull latent weights to 0, where their sign flips on
  noise) and the other parameters ``weight_decay``;
* two optimizers: ``bop_and_adam(model)`` returns a ``MultiOptimizer`` of Bop over the binary
  kernels and Adam over the rest (Larq's ``CaseOptimizer(Bop, Adam)`` recipe)::

      opt = bop_and_adam(model, lr=1e-3, threshold=1e-8, gamma=1e-4)
      sched = WarmupCosine(opt, warmup_steps=500, total_steps=10_000)   # schedules Adam's lr
      ... opt.zero_grad(); loss.backward(); opt.step(); sched.step()

``MultiOptimizer([opt_a, opt_b])`` steps, zeroes and checkpoints several optimizers as one:
``bitnet.save(model, path, optimizer=multi)`` (or ``ModelCheckpoint``) writes every inner optimizer's
state, and ``bitnet.load_training_state(path).restore(multi)`` puts it back (docs/file-format.md,
``training/optimizers``).
"""
from __future__ import annotations

from bitnet.optim._checks import check_number
from bitnet.optim.adam import Adam
from bitnet.optim.bop import Bop
from bitnet.optim.optimizer import Optimizer
from bitnet.tensor import enable_grad

__all__ = ["binary_kernels", "split_parameters", "param_groups", "MultiOptimizer",
           "bop_and_adam"]


def _is_binary_layer(module) -> bool:
    kq = getattr(module, "kernel_quantizer", None)
    return kq is not None and getattr(kq, "precision", None) == 1


def binary_kernels(model) -> list:
    """The ``weight`` of every module whose ``kernel_quantizer`` has precision 1, in model order
    (``named_modules`` order), each once."""
    out, seen = [], set()
    for _, module in model.named_modules():
        if not _is_binary_layer(module):
            continue
        w = getattr(module, "weight", None)
        if w is None:
            raise ValueError(f"binary_kernels: {type(module).__name__} has a binary "
                             "kernel_quantizer but no 'weight' parameter")
        if id(w) not in seen:
            seen.add(id(w))
            out.append(w)
    return out


def split_parameters(model) -> tuple:
    """``(binary, other)``: the binary kernels and all other parameters of ``model``, each
    parameter once, both in ``model.parameters()`` order."""
    binary_ids = {id(p) for p in binary_kernels(model)}
    params = list(model.parameters())
    missing = binary_ids - {id(p) for p in params}
    if missing:
        raise ValueError(f"split_parameters: {len(missing)} binary kernel(s) are not registered "
                         "parameters of the model")
    binary = [p for p in params if id(p) in binary_ids]
    other = [p for p in params if id(p) not in binary_ids]
    return binary, other


def param_groups(model, weight_decay: float) -> list:
    """Parameter groups for one optimizer: ``{"params": binary kernels, "weight_decay": 0.0}``
    and ``{"params": the others, "weight_decay": weight_decay}``; an empty group is left out."""
    weight_decay = check_number("param_groups", "weight_decay", weight_decay, low=0.0)
    binary, other = split_parameters(model)
    groups = [{"params": binary, "weight_decay": 0.0},
              {"params": other, "weight_decay": weight_decay}]
    return [g for g in groups if g["params"]]


class MultiOptimizer(Optimizer):
    """Several optimizers stepped, zeroed and checkpointed as one: ``MultiOptimizer([a, b])``.

    Each optimizer keeps its own parameters; a parameter owned by two of them is an error. A
    MultiOptimizer given as an item is flattened: ``MultiOptimizer([MultiOptimizer([a, b]), c])``
    holds ``a, b, c`` (the same steps in the same order), so a checkpoint stores one flat list.

    ``param_groups`` is the concatenation of the groups (the same dict objects) of the inner
    optimizers that have a learning rate (an ``"lr"`` entry), so an LR scheduler built on the
    MultiOptimizer schedules all of them. Groups without a learning rate (Bop's) are left out of
    it, so schedulers skip them; ``all_param_groups`` lists every group. ``state_dict()`` is
    ``{"optimizers": [sd, ...]}`` in the order given.
    """

    def __init__(self, optimizers):
        if isinstance(optimizers, Optimizer):
            optimizers = [optimizers]
        optimizers = [inner for opt in optimizers
                      for inner in (opt.optimizers if isinstance(opt, MultiOptimizer) else [opt])]
        if not optimizers:
            raise ValueError("MultiOptimizer: got no optimizers; pass a list such as "
                             "[Bop(binary_params), Adam(other_params)]")
        for i, opt in enumerate(optimizers):
            if not isinstance(opt, Optimizer):
                raise TypeError(f"MultiOptimizer: item {i} is a {type(opt).__name__}, expected a "
                                "bitnet Optimizer (each optimizer built over its own parameters)")
        owner = {}
        problems = []
        for i, opt in enumerate(optimizers):
            for p in opt._ordered_params():
                if id(p) in owner and owner[id(p)] != i:
                    j = owner[id(p)]
                    problems.append(f"a parameter of shape {tuple(p.data.shape)} is owned by "
                                    f"optimizer {j} ({type(optimizers[j]).__name__}) and "
                                    f"optimizer {i} ({type(opt).__name__})")
                owner.setdefault(id(p), i)
        if problems:
            more = f"\n  ... and {len(problems) - 5} more" if len(problems) > 5 else ""
            raise ValueError("MultiOptimizer: each parameter may belong to one optimizer only:\n  "
                             + "\n  ".join(problems[:5]) + more)
        self.optimizers = optimizers
        self.defaults = {}

    # -- groups -----------------------------------------------------------------------------
    @property
    def all_param_groups(self) -> list:
        """Every group of every inner optimizer, in order."""
        return [g for opt in self.optimizers
                for g in getattr(opt, "all_param_groups", opt.param_groups)]

    @property
    def param_groups(self) -> list:
        """The groups that have a learning rate (see the class docstring)."""
        return [g for g in self.all_param_groups if "lr" in g]

    @property
    def state(self) -> dict:
        """Per-parameter state of all inner optimizers (a merged read-only view)."""
        return {p: s for opt in self.optimizers for p, s in opt.state.items()}

    def add_param_group(self, group: dict) -> None:
        raise TypeError("MultiOptimizer.add_param_group: add the group to one of the inner "
                        "optimizers instead (multi.optimizers[i].add_param_group(group))")

    def _ordered_params(self) -> list:
        return [p for opt in self.optimizers for p in opt._ordered_params()]

    # -- stepping ---------------------------------------------------------------------------
    def zero_grad(self, set_to_none: bool = True) -> None:
        for opt in self.optimizers:
            opt.zero_grad(set_to_none)

    def step(self, closure=None):
        """Step every inner optimizer; ``closure`` (optional) is evaluated once, first."""
        loss = None
        if closure is not None:
            with enable_grad():
                loss = closure()
        for opt in self.optimizers:
            opt.step()
        return loss

    # -- checkpoints ------------------------------------------------------------------------
    def state_dict(self) -> dict:
        """``{"optimizers": [inner.state_dict(), ...]}`` (plain data); each inner state dict numbers its
        optimizer's own parameters from 0. ``bitnet.save`` stores it as ``training/optimizers``."""
        return {"optimizers": [opt.state_dict() for opt in self.optimizers]}

    def load_state_dict(self, state_dict: dict) -> None:
        """Load each inner optimizer's state dict; all or nothing (on an error the inner
        optimizers already loaded are restored)."""
        name = "MultiOptimizer.load_state_dict"
        if not isinstance(state_dict, dict) or "optimizers" not in state_dict:
            raise ValueError(f"{name}: expected a dict with key 'optimizers' (from "
                             f"MultiOptimizer.state_dict()), got {type(state_dict).__name__}"
                             + (f" with keys {sorted(map(str, state_dict))}"
                                if isinstance(state_dict, dict) else ""))
        saved = list(state_dict["optimizers"])
        if len(saved) != len(self.optimizers):
            raise ValueError(f"{name}: the state dict holds {len(saved)} optimizer(s), this "
                             f"MultiOptimizer has {len(self.optimizers)} "
                             f"({', '.join(type(o).__name__ for o in self.optimizers)})")
        backup = [opt.state_dict() for opt in self.optimizers]
        for i, (opt, sd) in enumerate(zip(self.optimizers, saved)):
            try:
                opt.load_state_dict(sd)
            except (ValueError, TypeError, KeyError) as exc:
                for done, old in zip(self.optimizers[:i], backup[:i]):
                    done.load_state_dict(old)
                raise ValueError(f"{name}: optimizer {i} ({type(opt).__name__}): {exc}") from exc

    def __repr__(self):
        inner = "\n".join("  " + line for opt in self.optimizers for line in repr(opt).split("\n"))
        return f"MultiOptimizer (\n{inner}\n)"


def bop_and_adam(model, lr: float = 1e-3, threshold: float = 1e-8, gamma: float = 1e-4,
                 weight_decay: float = 0.0) -> MultiOptimizer:
    """``MultiOptimizer([Bop(binary kernels, threshold, gamma), Adam(others, lr, weight_decay)])``.

    ``weight_decay`` is Adam's (L2 added to the gradient) and applies to the non-binary
    parameters only; Bop has neither a learning rate nor weight decay. Raises ``ValueError`` if
    the model has no binary kernels (use a plain optimizer then). The Adam part is left out if
    every parameter is a binary kernel."""
    binary, other = split_parameters(model)
    if not binary:
        raise ValueError(f"bop_and_adam: {type(model).__name__} has no binary kernels (no layer "
                         "with a 1-bit kernel_quantizer, e.g. QDense/QConv2d with weight_bit=1); "
                         "Bop only trains binary weights, use Adam(model.parameters()) instead")
    optimizers = [Bop(binary, threshold=threshold, gamma=gamma)]
    if other:
        optimizers.append(Adam(other, lr=lr, weight_decay=weight_decay))
    return MultiOptimizer(optimizers)
