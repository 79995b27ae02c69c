"""The forward of a packed model's containers: sign chains, and a plan per input shape.

At small batches a packed model's time goes to Python, not to its kernels: every layer call builds
Tensors, checks its input and works out sizes and kernel arguments (binary LeNet at batch 1: about
0.14 ms a forward, of which the kernels take a third). So the forward of every ``Sequential`` and
every ``forward_chain`` module (the ResNet) in a packed model (``prepare(packed)``, called by
``bitnet.pack``):

- runs a Sequential's *sign chains* (``bitnet.packed.sign_chains``) in place of the layers they
  cover;
- the first time it sees an input shape, lowers the module (``bitnet.packed.lowering.lower``, the
  same lowering the GPU packed model runs) and records a *plan* by running it once through the CPU
  executor (``bitnet.packed.cpu_steps``): one step per op, with every size, constant and kernel
  argument worked out, and a second set of the same steps whose arrays are made once and reused.
  Later calls with that shape run the plan: one loop over the steps for the whole model, residual
  blocks and channels-last maps included, without a module call, a Tensor or a shape check per
  layer.

A plan gives the same bits as the layer-by-layer run (tested), and each new plan's first output is
checked against that run on the same input (once per input shape: a container's plan follows its
modules' declarations, ``forward_chain`` / ``forward_program``, and one that does not describe its
class's forward would otherwise give other values silently; on a difference the model warns, naming
the declarations, and runs that shape layer by layer). Not where a module below runs by its own
forward (a dropout or batch norm put back in training mode, a module of your own): running it twice
could change its state. A plan is used only where that run
would give a plain tensor without a graph: the input is a plain ``Tensor`` or array that does not
need a gradient (a packed model's parameters never do: ``bitnet.pack`` freezes them), no module
below carries a forward hook, every container below has the children the plan was made for, and
every module returned a Tensor while it was recorded. Plans and chains read the layers' weights
when they are made, and are made again after ``load_state_dict`` or ``to`` on the model or on any
part of it, and after a parameter or buffer below is replaced by assignment (each module below tells
its owner: ``nn.module.watch_state``) or a parameter's array is (``p.data = new``: checked by identity
at each call); writing into an array in place is not watched. A copy of the model records plans of
its own. A module run by its own forward never gets the plan's reused
arrays (it may keep them). At most 8 input shapes are kept per module.
"""
from __future__ import annotations

import threading

import numpy as np

from bitnet.kernels.threads import single_threaded_blas
from bitnet.nn.module import deepcopy_without, watch_state
from bitnet.packed.cpu_steps import NoPlan, record, run, tensor_data
from bitnet.packed.kinds import hook_trusted
from bitnet.packed.lowering import Activation, lower
from bitnet.packed.sign_chains import find_chains
from bitnet.tensor import Tensor, is_grad_enabled

MAX_PLANS = 8


# a plan whose bound steps would hold more than this keeps allocating per call (large batches: the
# arrays are large, the per-call costs small beside their work)
BOUND_MAX_BYTES = 64 << 20


class _Plan:
    """The recorded steps for one input shape (``cpu_steps.record``; None: a module returns what a
    plan cannot pass), the containers below the module with the children they had, and the hook
    lists of every module below; ``bound``: the same steps with their arrays made once (None if too
    large), run by one thread at a time (another thread meanwhile runs ``steps``), the result
    copied out."""
    __slots__ = ("containers", "children", "hooks", "steps", "bound", "lock")

    def __init__(self, subtree, steps, bound=None):
        self.containers = [m for m in subtree if m._modules]
        self.children = [tuple(m._modules.values()) for m in self.containers]
        self.steps, self.bound = steps, bound
        self.hooks = [m._forward_hooks for m in subtree[1:]]  # the modules' own hook lists (never replaced)
        self.lock = threading.Lock()

    def fits(self) -> bool:
        """Whether every container below still has the children the plan was recorded for."""
        return all(tuple(m._modules.values()) == c for m, c in zip(self.containers, self.children))

    def __call__(self, a):
        with single_threaded_blas():  # once for every GEMM of the plan (kernels.threads)
            if self.bound is not None and self.lock.acquire(blocking=False):
                try:
                    out = run(self.bound, Activation.of(a))
                    return np.array(tensor_data(out), copy=True)  # the last step's array is the plan's own
                finally:
                    self.lock.release()
            return tensor_data(run(self.steps, Activation.of(a)))


def _run(seq, x, mods):
    """A Sequential's layer-by-layer forward, its sign chains in place of the layers they cover (but
    where one of those layers carries a forward hook)."""
    starts = {c.start: c for c in seq._sign_chains}
    i = 0
    while i < len(mods):
        chain = starts.get(i)
        if chain is not None and not any(m._forward_hooks for m in mods[i:chain.stop]):
            x, i = chain(x), chain.stop
        else:
            x, i = mods[i](x), i + 1
    return x


def _layer_by_layer(module, x):
    if "_sign_chains" in module.__dict__:  # a Sequential
        return _run(module, x, list(module._modules.values()))
    return type(module)._unplanned_forward(module, x)


def planned_forward(module, x):
    """The forward of a Sequential or ``forward_chain`` module with chains and plans (module docstring)."""
    if "_plans" not in module.__dict__:  # a Sequential made from a packed one (a slice: packed[1:3])
        module._sign_chains, module._plans = find_chains(module), {}
        _watch(module)
    seen = module.__dict__.get("_arrays_seen")
    if seen is None or any(p.data is not a for p, a in seen):  # a parameter's array replaced: p.data = new
        if seen is not None:
            module._state_changed()
        module._arrays_seen = _parameter_arrays(module)
    if (type(x) is Tensor or isinstance(x, np.ndarray)) and not (is_grad_enabled() and getattr(x, "requires_grad", False)):
        data = x.data if type(x) is Tensor else x
        key = (data.shape, data.dtype.str)
        plan = module._plans.get(key)
        if plan is not None and plan.fits():  # recorded for these children
            if plan.steps is not None and not any(plan.hooks):
                return Tensor(plan(data))
            return _layer_by_layer(module, x)  # hooks, or modules that return what a plan cannot pass
        subtree = list(module.modules())
        if not any(m._forward_hooks for m in subtree[1:]):  # record the plan (again, for new children)
            ops = lower(module)  # (a forward_program that cannot be read: its ValueError)
            try:
                out, steps, bound, _ = record(ops, Activation.of(data), BOUND_MAX_BYTES)
            except NoPlan:
                out = steps = bound = None
            except Exception as e:
                out = _layer_by_layer(module, x)  # bad input: the layers' own run says what is wrong
                _remember(module, key, _Plan(subtree, None))  # the layers ran where the plan did not
                import warnings
                warnings.warn(f"bitnet: a packed {type(module).__name__} could not be planned for input "
                              f"{data.shape} ({type(e).__name__}: {e}); it runs layer by layer (please report this)",
                              RuntimeWarning, stacklevel=3)
                return out
            if steps is not None and _pure(ops):
                return _checked(module, x, key, subtree, _Plan(subtree, steps, bound), tensor_data(out))
            _remember(module, key, _Plan(subtree, steps, bound))
            if steps is not None:
                return Tensor(tensor_data(out))
    return _layer_by_layer(module, x)


def _pure(ops) -> bool:
    """Whether every op (parts included) is one of the lowering's own kinds, whose steps have no
    state: no module run by its own forward, which running twice could change (a dropout or a batch
    norm put back in training mode, a module of your own)."""
    return all(op.kind != "module" and all(_pure(part) for part in op.parts.values()) for op in ops)


def _checked(module, x, key, subtree, plan, got):
    """A new plan's first output against the layers' own run on the same input (once per input
    shape): a plan follows the modules' declarations (``forward_chain``, ``forward_program``), and a
    declaration that does not describe its class's forward would otherwise give other values
    silently. Equal bits: the plan is kept and its output returned. Else the model warns once, names
    the declaring modules, and runs this input shape layer by layer."""
    got = np.array(got, copy=True)  # (before the layers run: no array of theirs can change it)
    want = _layer_by_layer(module, x)
    if isinstance(want, Tensor) and want.shape == got.shape and np.array_equal(want.data, got, equal_nan=True):
        _remember(module, key, plan)
        return Tensor(got)
    _remember(module, key, _Plan(subtree, None))
    declaring = sorted({f"{type(m).__name__}.{d}" for m in subtree for d in ("forward_chain", "forward_program")
                        if hook_trusted(m, d)})
    import warnings
    warnings.warn(f"bitnet: the plan of a packed {type(module).__name__} for input {key[0]} gives other values than "
                  f"its layers' own forward; it runs layer by layer. Check that each declaration describes its "
                  f"class's forward: {', '.join(declaring) or '(none declared: please report this)'}",
                  RuntimeWarning, stacklevel=4)
    return want


def _parameter_arrays(module):
    """``(parameter, its array)`` for every parameter of ``module`` and the modules below it: what its
    plans and sign chains read, checked by identity at each call (``p.data = new`` calls no module;
    a new Parameter or buffer assigned to a module is told by the module itself: ``_watch``)."""
    return tuple((p, p.data) for m in module.modules() for p in m._parameters.values() if p is not None)


def _watch(module):
    """Have every module below ``module`` tell it when its state changes (``nn.module.watch_state``:
    ``load_state_dict``, ``to``, a parameter or buffer replaced by assignment); its chains and plans
    read their arrays."""
    for m in list(module.modules())[1:]:
        watch_state(m, module)


def _remember(module, key, plan):
    """Keep ``plan`` for inputs of ``key``."""
    module._arrays_seen = _parameter_arrays(module)  # (children may be new)
    if len(module._plans) >= MAX_PLANS:
        module._plans.clear()
    module._plans[key] = plan
    if plan.steps is not None:  # its steps read the arrays of the modules below (new children too)
        _watch(module)


_PLANNED = {}


def _planned_class(cls):
    """``cls`` (a Sequential or ``forward_chain`` class) with ``planned_forward`` as its forward."""
    if cls not in _PLANNED:
        def _state_changed(self):
            cls._state_changed(self)
            for chain in self.__dict__.get("_sign_chains", ()):
                chain.reset()
            self.__dict__.get("_plans", {}).clear()
        def __deepcopy__(self, memo):
            new = deepcopy_without(self, memo, ("_plans",))  # (a copy records plans of its own)
            _watch(new)  # (a copy's modules start with no watchers)
            return new
        _PLANNED[cls] = type(cls.__name__, (cls,), {"forward": planned_forward, "_state_changed": _state_changed,
                                                    "__deepcopy__": __deepcopy__,
                                                    "_unplanned_forward": cls.forward,
                                                    "__doc__": cls.__doc__, "__module__": cls.__module__,
                                                    "forward_in_eval_is_base": True})  # (packed.kinds)
    return _PLANNED[cls]


def prepare(packed) -> None:
    """Give every Sequential in ``packed`` its chains, and it and every ``forward_chain`` module the
    planned forward (in place)."""
    from bitnet.nn.container import Sequential
    from bitnet.packed.kinds import computes_as, hook_trusted
    for m in list(packed.modules()):
        if any(k in _PLANNED.values() for k in type(m).__mro__):  # planned already (below a micro-batch class
            continue                                                 # too: a packed model packed again)
        if computes_as(m, Sequential):  # (not one with its own forward)
            m._sign_chains = find_chains(m)
        elif not (getattr(m, "forward_chain", None) and hook_trusted(m, "forward_chain")):
            continue
        m._plans = {}
        m.__class__ = _planned_class(type(m))
        _watch(m)
