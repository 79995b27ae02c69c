"""The forward of a packed ``Sequential``: sign chains, and a plan per input shape.

At small batches a packed model's time goes to Python, not to its kernels: every layer call builds
Tensors, checks its input and works out sizes and kernel arguments (binary LeNet at batch 1: about
0.14 ms a forward, of which the kernels take a third). So the forward of every ``Sequential`` in a
packed model (``prepare(packed)``, called by ``bitnet.pack``):

- runs its *sign chains* (``bitnet.packed.sign_chains``) in place of the layers they cover;
- the first time it sees an input shape, runs layer by layer (chains included) and records a
  *plan*: one step per layer, a function of a NumPy array returning one, with every size, constant
  and kernel argument worked out (the packed layers' prepared kernel calls, the chains' prepared
  runs, a dense layer's GEMM and bias, tanh); a layer without such a step runs through its own
  forward inside the plan. Later calls with that shape run the plan.

A plan gives the same bits as the layer-by-layer run (tested), and is used only where that run
would give a plain tensor without a graph: the input is a plain ``Tensor`` or array that does not
need a gradient (a packed model's parameters never do: ``bitnet.pack`` freezes them), no module
below carries a forward hook, the children are those the plan was made for, and every layer
returned a plain ``Tensor`` while it was recorded (packed layers that hand over packed signs in
``SignedTensor`` / ``FeatureMap`` objects run layer by layer). Plans and chains read the layers'
weights when they are made, and are made again after ``load_state_dict``; at most 8 input shapes
are kept per Sequential.
"""
from __future__ import annotations

import threading

import numpy as np

from bitnet.kernels.threads import single_threaded_blas
from bitnet.packed.layers import PackedConv2d, PackedDense
from bitnet.packed.sign_chains import find_chains
from bitnet.tensor import Tensor, is_grad_enabled

MAX_PLANS = 8


def _step(module, a):
    """A function ``array -> array`` doing what ``module(Tensor(a)).data`` does, faster, or None."""
    from bitnet.nn.layers import Dense, Flatten, Identity, Tanh
    from bitnet.ops.elementwise import _matmul, _unary
    t = type(module)
    if t is Identity:
        return lambda a: a
    if t is Tanh:  # ops.elementwise.Tanh.forward
        return lambda a: _unary(np.tanh, a)
    if t is Flatten and (module.start_dim, module.end_dim) == (1, -1) and a.ndim >= 2:
        return lambda a: a.reshape(a.shape[0], -1)
    if t is Dense:  # F.linear without a graph
        w_t = module.weight.data.T
        bias = None if module.bias is None else module.bias.data
        return (lambda a: _matmul(a, w_t)) if bias is None else (lambda a: _matmul(a, w_t) + bias)
    if isinstance(module, PackedConv2d) and not module.emit_signs:
        return lambda a: module._xnor(module._packed_input(a))
    if isinstance(module, PackedDense):
        conv = module.conv
        return lambda a: conv._xnor(module._packed_input(a)).reshape(module._rows_shape(a))
    return None


def _bound_step(unit, a):
    """A step like ``_step(unit, a)`` (or a chain's run) whose arrays are made once and reused by every
    call (valid until the next call), with ``.nbytes``; None where the unit has none."""
    from bitnet.kernels.gemm import matmul
    from bitnet.kernels.threads import parallel_ufunc
    from bitnet.nn.layers import Dense, Tanh
    from bitnet.packed.sign_chains import SignChain
    t = type(unit)
    if t is SignChain:
        return unit.bind(a.shape)
    if t is Tanh:
        out = np.empty(a.shape, a.dtype)

        def step(x):
            return parallel_ufunc(np.tanh, x, out)
    elif t is Dense and a.ndim == 2 and a.dtype == np.float32 == unit.weight.data.dtype:
        w_t = unit.weight.data.T
        bias = None if unit.bias is None else unit.bias.data
        out = np.empty((a.shape[0], w_t.shape[1]), np.float32)

        def step(x):
            y = matmul(x, w_t, out)
            return y if bias is None else np.add(y, bias, out=y)
    elif isinstance(unit, (PackedConv2d, PackedDense)) and not getattr(unit, "emit_signs", False):
        conv = unit.conv if isinstance(unit, PackedDense) else unit
        xb = unit._packed_input(a)
        call = conv._prepared(xb.shape).bind()
        if isinstance(unit, PackedDense):
            def step(x):
                return call(unit._packed_input(x)).reshape(unit._rows_shape(x))
        else:
            def step(x):
                return call(unit._packed_input(x))
        step.nbytes = call.nbytes
        return step
    else:
        return None
    step.nbytes = out.nbytes
    return step


# a plan whose bound steps would hold more than this keeps allocating per call (large batches: the
# arrays are large, the per-call costs small beside their work)
BOUND_MAX_BYTES = 64 << 20


class _Plan:
    """The recorded steps for one input shape (None: the layers hand over objects a plan cannot
    pass), the children they were recorded for and the hook lists of every module below; ``bound``:
    the same steps with their arrays made once (``_bound_step``; None if too large), run by one
    thread at a time (another thread meanwhile runs ``steps``), the result copied out."""
    __slots__ = ("mods", "hooks", "steps", "bound", "lock")

    def __init__(self, mods, subtree, steps, bound=None):
        self.mods, self.steps, self.bound = mods, steps, bound
        self.hooks = [m._forward_hooks for m in subtree]  # the modules' own hook lists (never replaced)
        self.lock = threading.Lock()

    def __call__(self, a):
        with single_threaded_blas():  # once for every GEMM of the plan (kernels.threads)
            if self.bound is not None and self.lock.acquire(blocking=False):
                try:
                    for step in self.bound:
                        a = step(a)
                    return np.array(a, copy=True)  # the last step's array is the plan's own
                finally:
                    self.lock.release()
            for step in self.steps:
                a = step(a)
        return a


def _generic(module):
    return lambda a: module(Tensor(a)).data


def _run(seq, x, mods, record=False):
    """The layer-by-layer forward (chains included): ``(output, steps, bound)``, with ``record`` the
    plan's steps and bound steps (``_bound_step``, the unbound step where a unit has none; None when
    they would hold more than ``BOUND_MAX_BYTES``), else (or where a layer hands over anything but a
    plain Tensor) None."""
    starts = {c.start: c for c in seq._sign_chains}
    steps, bound, held, i = [], [], 0, 0
    while i < len(mods):
        chain = starts.get(i)
        if chain is not None and not any(m._forward_hooks for m in mods[i:chain.stop]):
            unit, stop = chain, chain.stop
        else:
            unit, stop = mods[i], i + 1
        if record:
            if type(x) is not Tensor:
                record = False
            else:
                step = unit.run if unit is chain else _step(unit, x.data)
                steps.append(_generic(unit) if step is None else step)
                b = _bound_step(unit, x.data) if held <= BOUND_MAX_BYTES else None
                held += 0 if b is None else b.nbytes
                bound.append(steps[-1] if b is None else b)
        x, i = unit(x), stop
    if not (record and type(x) is Tensor):
        return x, None, None
    return x, steps, (bound if held <= BOUND_MAX_BYTES else None)


def planned_forward(seq, x):
    """``Sequential.forward`` with chains and plans (module docstring)."""
    if "_plans" not in seq.__dict__:  # a Sequential made from a packed one (a slice: packed[1:3])
        seq._sign_chains, seq._plans = find_chains(seq), {}
    mods = list(seq._modules.values())
    if (type(x) is Tensor or isinstance(x, np.ndarray)) and not (is_grad_enabled() and getattr(x, "requires_grad", False)):
        data = x.data if type(x) is Tensor else x
        key = (data.shape, data.dtype.str)
        plan = seq._plans.get(key)
        if plan is not None and plan.mods == mods:  # recorded for these children
            if plan.steps is not None and not any(plan.hooks):
                return Tensor(plan(data))
            return _run(seq, x, mods)[0]  # hooks, or layers that hand over what a plan cannot pass
        subtree = [m for m in seq.modules() if m is not seq]
        if not any(m._forward_hooks for m in subtree):  # record the plan (again, for new children)
            out, steps, bound = _run(seq, x if type(x) is Tensor else Tensor(x), mods, record=True)
            if len(seq._plans) >= MAX_PLANS:
                seq._plans.clear()
            seq._plans[key] = _Plan(mods, subtree, steps, bound)
            return out
    return _run(seq, x, mods)[0]


_PLANNED = {}


def _planned_class(cls):
    """``cls`` (a Sequential class) with ``planned_forward`` as its forward."""
    if cls not in _PLANNED:
        def _state_changed(self):
            cls._state_changed(self)
            for chain in self._sign_chains:
                chain.reset()
            self._plans.clear()
        _PLANNED[cls] = type(cls.__name__, (cls,), {"forward": planned_forward, "_state_changed": _state_changed,
                                                    "__doc__": cls.__doc__, "__module__": cls.__module__,
                                                    "forward_in_eval_is_base": True})  # (packed.kinds)
    return _PLANNED[cls]


def prepare(packed) -> None:
    """Give every Sequential in ``packed`` its chains and the planned forward (in place)."""
    from bitnet.nn.container import Sequential
    from bitnet.packed.kinds import computes_as
    for m in list(packed.modules()):
        if computes_as(m, Sequential) and type(m) not in _PLANNED.values():  # (not one with its own forward)
            m._sign_chains = find_chains(m)
            m._plans = {}
            m.__class__ = _planned_class(type(m))
