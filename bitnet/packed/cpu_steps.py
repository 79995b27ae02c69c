"""The CPU executor of a lowered packed model (``bitnet.packed.lowering``): one step per op.

``record(ops, act)`` runs the ops once on the activation ``act`` (a ``lowering.Activation`` of NumPy
arrays) and returns what it needs to run them again on inputs of that shape: ``steps``, functions
``Activation -> Activation`` with every size, constant and kernel argument worked out (a packed
layer's prepared kernel call, a chain's prepared run, a dense layer's GEMM), and ``bound``, the
same steps with every array they write made once and reused by each call (valid until the next
call; ``nbytes`` says how much they hold; ``None`` where a step has none, or once they would hold
more than ``max_bytes``).

Every step computes what its module's forward computes, on the same kernels with the same
arguments, so a run of the steps gives the bits of the layer-by-layer run (tested). An op without
a step of its own here (float convolution, batch norm, pooling, ``module``, ...) runs its module's
forward on the Tensor the layer-by-layer run would pass it: a ``FeatureMap`` for a channels-last
activation, a ``SignedTensor`` where packed signs come with an NCHW one. A module that returns
anything but a Tensor makes ``record`` raise ``NoPlan``.
"""
from __future__ import annotations

import numpy as np

from bitnet.packed.featuremap import FeatureMap
from bitnet.packed.layers import SignedTensor
from bitnet.packed.lowering import Activation
from bitnet.tensor import Tensor


class NoPlan(Exception):
    """A module returned something a plan cannot pass on (not a Tensor)."""


def tensor_data(act):
    """The array a layer-by-layer run would hand the next module as its Tensor's data (a channels-last
    map's NCHW view)."""
    return act.data.transpose(0, 3, 1, 2) if act.layout == "nhwc" else act.data


def record(ops, act, max_bytes):
    """``(output activation, steps, bound, nbytes)``; see the module docstring. A module run by its own
    forward may keep what it is given (a feature tap, a cache): the step before it is never bound, so
    what it keeps is its own, as in the layer-by-layer run."""
    steps, bound, held = [], [], 0
    for i, op in enumerate(ops):
        act, step, b = _BUILDERS.get(op.kind, _generic)(op, act, held <= max_bytes)
        held += 0 if b is None else b.nbytes
        steps.append(step)
        bound.append(step if b is None else b)
        if i and _exposes_input(op):
            bound[i - 1] = steps[i - 1]
    return act, steps, (bound if held <= max_bytes else None), held


def _exposes_input(op) -> bool:
    """Whether ``op`` hands its input to a module's own forward (kind "module"), directly or through
    the first op of a part that runs on its input."""
    if op.kind == "module":
        return True
    parts = {"add": ("a", "b"), "residual_block": ("shortcut",)}.get(op.kind, ())
    return any(op.parts[p] and _exposes_input(op.parts[p][0]) for p in parts)


def run(steps, act):
    for step in steps:
        act = step(act)
    return act


# -- generic: the module's own forward ---------------------------------------------------------------

def _as_tensor(act):
    if act.layout == "nhwc":
        return FeatureMap.of(act.data, act.bits)
    if act.bits is not None:
        t = SignedTensor(act.data)
        t.packed_signs = act.bits
        return t
    return Tensor(act.data)


def _as_activation(out, name):
    """The activation of ``out``, what ``name`` (a module's class, a function) returned."""
    if isinstance(out, FeatureMap):
        return Activation(out.nhwc, "nhwc", out.bits)
    if type(out) is not Tensor and not isinstance(out, SignedTensor):
        raise NoPlan(f"{name} returned {type(out).__name__}")
    data = out.data
    return Activation(data, "nchw" if data.ndim == 4 else "flat", getattr(out, "packed_signs", None))


def _generic(op, act, bind):
    module = op.module

    def step(a):
        return _as_activation(module(_as_tensor(a)), type(module).__name__)
    return step(act), step, None


# -- binary layers --------------------------------------------------------------------------------

def _binary_conv(op, act, bind):
    layer = op.module
    if act.layout == "nhwc":
        return _binary_conv_nhwc(layer, act, None, bind)

    def packed(a):  # handed-over signs, a chain's words, or floats packed now (as PackedConv2d.forward)
        return a.bits if a.bits is not None and layer.groups == 1 else layer._packed_input(a.data)

    def step(a):
        out = layer._xnor(packed(a), emit=layer.emit_signs)
        return _emitted(out, layer.emit_signs, "nchw")
    xb = packed(act)
    b = None
    if bind:
        call = layer._prepared(xb.shape, emit=layer.emit_signs).bind()

        def b(a):
            out = call(packed(a))
            return _emitted(out, layer.emit_signs, "nchw")
        b.nbytes = call.nbytes
    return step(act), step, b


def _emitted(out, emit, layout):
    """A packed layer's result: ``(floats, packed signs)`` with ``emit``, else the floats."""
    return Activation(out[0], layout, out[1]) if emit else Activation(out, layout)


def _binary_conv_nhwc(layer, act, residual, bind):
    """``(out, step, bound)`` of a channels-last binary convolution; ``step(a, r=None)`` takes the
    residual activation ``r`` where ``residual`` (this call's) is given."""
    emit = layer._emits_nhwc()
    res = None if residual is None else residual.data

    def step(a, r=None):
        out = layer._xnor(layer._nhwc_input(a.data, a.bits), None if r is None else r.data, emit=emit,
                          layout="nhwc")
        return _emitted(out, emit, "nhwc")
    b = None
    if bind:
        call = layer._prepared(layer._nhwc_input(act.data, act.bits).shape, res is not None, False, emit,
                               "nhwc").bind()

        def b(a, r=None):
            out = call(layer._nhwc_input(a.data, a.bits), None if r is None else r.data)
            return _emitted(out, emit, "nhwc")
        b.nbytes = call.nbytes
    return step(act, residual), step, b


def _binary_dense(op, act, bind):
    layer = op.module
    conv = layer.conv

    def step(a):
        x = tensor_data(a)
        return Activation(conv._xnor(layer._packed_input(x)).reshape(layer._rows_shape(x)), "flat")
    b = None
    if bind:
        x = tensor_data(act)
        call = conv._prepared(layer._packed_input(x).shape).bind()

        def b(a):
            x = tensor_data(a)
            return Activation(call(layer._packed_input(x)).reshape(layer._rows_shape(x)), "flat")
        b.nbytes = call.nbytes
    return step(act), step, b


def _residual_block(op, act, bind):
    """``PackedResidualBlock.forward``: y = conv1(x) + shortcut(x), out = conv2(y) + y, channels-last."""
    fm = act if act.layout == "nhwc" else _to_nhwc(act)
    shortcut, steps, b_steps, held, sc = _shortcut(op.parts["shortcut"], fm, bind)
    y, conv1, b1 = _binary_conv_nhwc(op.parts["conv1"][0].module, fm, sc, bind)
    out, conv2, b2 = _binary_conv_nhwc(op.parts["conv2"][0].module, y, y, bind)

    def make(c1, c2, sc_steps):
        def step(a):
            x = a if a.layout == "nhwc" else _to_nhwc(a)
            y = c1(x, x if not sc_steps else shortcut(sc_steps, x))
            return c2(y, y)
        return step
    b = None
    if bind and b1 is not None and b2 is not None and b_steps is not None:
        b = make(b1, b2, b_steps)
        b.nbytes = b1.nbytes + b2.nbytes + held
    return out, make(conv1, conv2, steps), b


def _to_nhwc(act):
    """A channels-last copy of an NCHW activation (``FeatureMap.from_tensor``)."""
    if act.data.ndim != 4:
        raise ValueError(f"expected a feature map (N, C, H, W), got shape {act.data.shape}")
    return Activation(np.ascontiguousarray(act.data.transpose(0, 2, 3, 1), np.float32), "nhwc")


def _shortcut(ops, fm, bind):
    """A block's shortcut as ``(run, steps, bound steps or None, nbytes, its output for fm)``
    (``run(steps, x)``): its channels-last ops on the map itself, a float shortcut on its NCHW view
    (the block hands it ``Tensor(fm.data)``) with a channels-last copy of the result."""
    if not ops:
        return None, [], [], 0, fm
    channels_last = ops[0].kind in ("cl_shortcut", "binary_conv") and len(ops) == 1

    def finish(out):
        return out if out.layout == "nhwc" else _to_nhwc(out)

    def shortcut(steps, x):
        if channels_last:
            return run(steps, x)
        return finish(run(steps, Activation(tensor_data(x), "nchw")))
    start = fm if channels_last else Activation(tensor_data(fm), "nchw")
    out, steps, bound, held = record(ops, start, BIND_ALL if bind else -1)
    return shortcut, steps, bound, held, finish(out)


BIND_ALL = 1 << 62


# -- float layers with steps of their own ------------------------------------------------------------

def _dense(op, act, bind):
    from bitnet.kernels.gemm import matmul
    from bitnet.ops.elementwise import _matmul
    dense = op.module
    w_t = dense.weight.data.T
    bias = None if dense.bias is None else dense.bias.data

    def step(a):  # F.linear without a graph
        y = _matmul(tensor_data(a), w_t)
        return Activation(y if bias is None else y + bias, "flat")
    x = tensor_data(act)
    b = None
    if bind and x.ndim == 2 and x.dtype == np.float32 == w_t.dtype:
        out = np.empty((x.shape[0], w_t.shape[1]), np.float32)

        def b(a):
            y = matmul(tensor_data(a), w_t, out)
            return Activation(y if bias is None else np.add(y, bias, out=y), "flat")
        b.nbytes = out.nbytes
    return step(act), step, b


def _function(op, act, bind):
    """A function of ``bitnet.functional`` named by a ``forward_program`` (``op.module`` None)."""
    from bitnet import functional as F
    fn = getattr(F, op.params["op"])

    def step(a):
        return _as_activation(fn(_as_tensor(a)), op.params["op"])
    return step(act), step, None


def _add(op, act, bind):
    """Both parts on the input, their outputs added as the module's forward adds them (Tensors)."""
    _, a_steps, _, _ = record(op.parts["a"], act, -1)
    _, b_steps, _, _ = record(op.parts["b"], act, -1)

    def step(x):
        return _as_activation(_as_tensor(run(a_steps, x)) + _as_tensor(run(b_steps, x)), "add")
    return step(act), step, None


def _unary(op, act, bind):
    if op.module is None:
        return _function(op, act, bind)
    if op.params["op"] != "tanh":
        return _generic(op, act, bind)
    from bitnet.kernels.threads import parallel_ufunc
    from bitnet.ops.elementwise import _unary as unary

    def step(a):  # ops.elementwise.Tanh.forward
        x = tensor_data(a)
        return Activation(unary(np.tanh, x), "nchw" if x.ndim == 4 else "flat")
    x = tensor_data(act)
    b = None
    if bind and x.dtype in (np.float32, np.float64):  # (other dtypes: the float-op policy's conversion)
        out = np.empty(x.shape, x.dtype)

        def b(a):
            return Activation(parallel_ufunc(np.tanh, tensor_data(a), out), "nchw" if out.ndim == 4 else "flat")
        b.nbytes = out.nbytes
    return step(act), step, b


def _flatten(op, act, bind):
    if tensor_data(act).ndim < 2:
        return _generic(op, act, bind)

    def step(a):
        x = tensor_data(a)
        return Activation(x.reshape(x.shape[0], -1), "flat")
    return step(act), step, None


def _channels_last(op, act, bind):
    """The stem (NCHW in) and a block's shortcut (channels-last in): their own forward, or their
    bound calls (``ChannelsLastConv2d.bind``, ``ChannelsLastShortcut.bind``)."""
    out, step, _ = _generic(op, act, bind)
    stem = op.kind == "cl_conv"
    b = None
    if bind and act.data.ndim == 4 and (act.layout == "nhwc") != stem:
        call = op.module.bind(act.data.shape)

        def b(a):
            return Activation(call(a.data), "nhwc")
        b.nbytes = call.nbytes
    return out, step, b


def _sign_chain(op, act, bind):
    chain = op.module

    def step(a):
        return Activation(chain.run(tensor_data(a)), "words")
    b = None
    if bind:
        call = chain.bind(tensor_data(act).shape)

        def b(a):
            return Activation(call(tensor_data(a)), "words")
        b.nbytes = call.nbytes
    return step(act), step, b


_BUILDERS = {"binary_conv": _binary_conv, "binary_dense": _binary_dense, "residual_block": _residual_block,
             "dense": _dense, "unary": _unary, "flatten": _flatten, "sign_chain": _sign_chain,
             "cl_conv": _channels_last, "cl_shortcut": _channels_last, "add": _add}
