"""Autograd-lite: a ``Tensor`` around a NumPy array and reverse-mode differentiation.

A tensor produced by an operation remembers the ``Function`` that made it (``_ctx``). Calling
``loss.backward()`` orders the graph topologically (iteratively, so deep networks never hit
Python's recursion limit), walks it from the output back to the leaves, asks every
``Function.backward`` for the gradients of its inputs and *accumulates* them: a tensor used twice
receives the sum of both contributions. Leaves that require gradients (parameters, inputs) keep
their gradient in ``.grad``; it accumulates across ``backward()`` calls until zeroed.

Primitives live in ``bitnet.ops``; each is a ``Function`` subclass whose ``backward`` stands right
under its ``forward``. ``forward`` receives and returns NumPy arrays; ``backward`` receives the
gradient of the output and returns one gradient (or ``None``) per tensor input.

In-place arithmetic (``t -= x``, ``bitnet.ops.inplace``) bumps the tensor's ``_version``; every
recorded operation remembers its inputs' versions, and ``backward()`` refuses to run through an
operation whose input was modified in place afterwards (its saved arrays would be stale).

Hooks (what data-parallel training, ``bitnet.distributed``, builds on): a ``Parameter``'s
``register_post_accumulate_grad_hook(fn)`` calls ``fn(param)`` as soon as ``backward()`` has
accumulated the parameter's last contribution of this pass into ``param.grad``, i.e. right after its
last consumer's ``Function.backward`` ran, while the rest of the graph is still being
differentiated (the topological order alone would put every parameter at the end). A hook may call
``queue_callback(fn)`` to have ``fn()`` run once when this ``backward()`` has finished. Neither
changes any gradient: the same sums are formed in the same order.
"""
from __future__ import annotations

import contextlib
import threading

import numpy as np

from bitnet.backend import check_device
from bitnet.gpu.arrays import array_module, device_of, is_device_array, to_device, to_host
from bitnet.gpu.dispatch import place
from bitnet.ops.dtypes import float_operands

__all__ = ["Tensor", "Parameter", "Function", "no_grad", "enable_grad", "is_grad_enabled", "tensor", "queue_callback"]

_state = threading.local()


def is_grad_enabled() -> bool:
    """True unless inside a ``no_grad()`` block (per thread)."""
    return getattr(_state, "grad_enabled", True)


@contextlib.contextmanager
def _grad_mode(enabled: bool):
    previous = is_grad_enabled()
    _state.grad_enabled = enabled
    try:
        yield
    finally:
        _state.grad_enabled = previous


def no_grad():
    """Context manager: operations inside record no graph (inference, optimizer updates)."""
    return _grad_mode(False)


def enable_grad():
    """Context manager: re-enable graph recording inside a ``no_grad()`` block."""
    return _grad_mode(True)


def _as_array(data, dtype=None) -> np.ndarray:
    if isinstance(data, Tensor):
        data = data.data
    if type(data) is not np.ndarray and is_device_array(data):
        return data if dtype is None or data.dtype == dtype else data.astype(dtype)
    arr = np.asarray(data, dtype=dtype)
    if dtype is None and arr.dtype.kind in "biu" and arr.dtype != np.bool_:
        return arr  # integer tensors (labels, indices) keep their dtype
    if dtype is None and arr.dtype == np.float64 and not isinstance(data, (np.ndarray, np.generic)):
        # Python floats and lists default to float32, the training dtype.
        arr = arr.astype(np.float32)
    return arr


class Tensor:
    """An n-dimensional array that can record the operations applied to it.

    ``data`` is the array, ``grad`` the accumulated gradient (same shape and device, or ``None``),
    ``requires_grad`` whether gradients flow to it. ``device`` is "cpu" (``data`` a NumPy array) or
    "cuda" (a device array, ``bitnet.gpu.arrays``); ``Tensor(x, device="cuda")`` copies ``x`` there,
    ``t.to(device)`` moves a tensor (differentiably).

    Dtype, unless ``dtype=`` is given: Python floats and lists holding a float become float32
    (``Tensor(3.0)``, ``Tensor([1, 2.5])``); Python ints and lists of ints stay integer, int64
    (``Tensor(3)``, ``Tensor([1, 2])``: class labels and indices), bools bool; NumPy arrays and
    scalars keep their dtype (a float64 array gives a float64 tensor, for gradient checks). Only
    float tensors can require gradients: ``Tensor([1.0, 2.0], requires_grad=True)`` or
    ``Tensor([1, 2], dtype=np.float32, requires_grad=True)``. The float operations (conv, matmul,
    pooling, batch norm, tanh, ...) compute integer and bool tensors in float32 (``bitnet.ops.dtypes``).

    ``np.asarray(t)`` (``__array__``) is ``t.data`` (no copy) for a tensor on the CPU, outside the graph.
    """

    __slots__ = ("data", "grad", "requires_grad", "_ctx", "_version", "__weakref__")
    __array_priority__ = 1000  # make ``ndarray op Tensor`` dispatch to Tensor's reflected ops

    def __init__(self, data, requires_grad: bool = False, dtype=None, device=None):
        self.data = _as_array(data, dtype)
        if device is not None:
            self.data = to_device(self.data, check_device(device))
        self.grad = None
        self.requires_grad = bool(requires_grad)
        self._ctx = None
        self._version = 0  # in-place modifications so far (see the module docstring)
        if self.requires_grad and self.data.dtype.kind != "f":
            raise TypeError(
                f"requires_grad=True needs floating-point data, got dtype {self.data.dtype} (shape {self.shape}); "
                "only floating-point tensors can require gradients, and Python ints and lists of ints give "
                "int64 tensors: write floats (Tensor([1.0, 2.0], requires_grad=True)), pass dtype=np.float32, "
                "or convert an array with .astype(np.float32) first")

    # -- array-like attributes ------------------------------------------------------------
    shape = property(lambda self: self.data.shape)
    dtype = property(lambda self: self.data.dtype)
    ndim = property(lambda self: self.data.ndim)
    size = property(lambda self: self.data.size)

    def __len__(self):
        return len(self.data)

    def numel(self) -> int:
        """The number of elements (PyTorch's spelling of the ``size`` property)."""
        return int(self.data.size)

    @property
    def device(self) -> str:
        """"cpu" or "cuda": where ``data`` lives."""
        return "cpu" if type(self.data) is np.ndarray else device_of(self.data)

    def to(self, device: str) -> "Tensor":
        """This tensor on ``device`` ("cpu" or "cuda"): itself when it is there already, else a copy that
        stays in the graph (the gradient flows back to this tensor's device)."""
        device = check_device(device)
        if device == self.device:
            return self
        from bitnet.gpu.transfer import ToDevice
        return ToDevice.apply(self, device=device)

    def cpu(self) -> "Tensor":
        """``self.to("cpu")``."""
        return self.to("cpu")

    def cuda(self) -> "Tensor":
        """``self.to("cuda")``."""
        return self.to("cuda")

    def numpy(self) -> np.ndarray:
        """The underlying NumPy array (not a copy); a tensor on the GPU must be moved first."""
        if self.device != "cpu":
            raise RuntimeError(f"numpy() of a tensor on {self.device} (shape {self.shape}): NumPy arrays live on the "
                               "host; copy it there first with .cpu().numpy() (or .to('cpu').numpy())")
        return self.data

    def item(self):
        return self.data.item()

    def __array__(self, dtype=None, copy=None):
        """``np.asarray(t)``: the data (the same array unless ``dtype`` or ``copy=True`` asks for another;
        ``copy=False`` with a ``dtype`` that needs a conversion is a ValueError, as in NumPy 2). No
        graph is recorded. A tensor on the GPU is a TypeError: move it with ``.cpu()`` first."""
        if type(self.data) is not np.ndarray:
            raise TypeError(f"np.asarray() of a tensor on {self.device} (shape {self.shape}): NumPy arrays live "
                            "on the host; copy it there first with .cpu() (np.asarray(t.cpu()))")
        a = self.data
        if dtype is not None and np.dtype(dtype) != a.dtype:
            if copy is False:
                raise ValueError(f"np.asarray(tensor, dtype={np.dtype(dtype)}, copy=False): the tensor's dtype is "
                                 f"{a.dtype}, so a copy is needed")
            return a.astype(dtype)
        return a.copy() if copy else a

    def _scalar(self, what):
        if self.data.size != 1:
            raise RuntimeError(f"{what} of a tensor with {self.data.size} elements (shape {self.shape}) is "
                               "ambiguous; it needs exactly one element. Reduce it first, e.g. with "
                               ".any() / .all() / .sum(), or compare arrays with np.array_equal(a.data, b.data)")
        return self.data.item()

    def __bool__(self):
        return bool(self._scalar("the truth value"))

    def __float__(self):
        return float(self._scalar("float()"))

    def __int__(self):
        return int(self._scalar("int()"))

    def detach(self) -> "Tensor":
        """A tensor sharing the same data, cut from the graph."""
        return Tensor(self.data)

    def astype(self, dtype) -> "Tensor":
        return Tensor(self.data.astype(dtype), requires_grad=self.requires_grad)

    def zero_grad(self):
        self.grad = None

    def __repr__(self):
        extra = ", requires_grad=True" if self.requires_grad else ""
        if self.device != "cpu":
            extra += f", device='{self.device}'"
        return (f"Tensor({np.array2string(to_host(self.data), precision=4, threshold=20)}, "
                f"dtype={self.dtype}{extra})")

    def __hash__(self):
        return id(self)

    # -- reverse mode -----------------------------------------------------------------------
    def backward(self, grad=None, retain_graph: bool = False):
        """Accumulate d(self)/d(leaf) into ``leaf.grad`` for every leaf that requires grad.

        ``grad`` defaults to 1 for a scalar output; for other outputs it must be given and have
        the output's shape. Unless ``retain_graph`` is set, the graph is freed afterwards.
        """
        if not self.requires_grad:
            raise RuntimeError("backward() called on a tensor that does not require grad: "
                               "no input of the computation had requires_grad=True")
        if grad is None:
            if self.data.size != 1:
                raise RuntimeError(
                    f"backward() without an explicit gradient needs a scalar output, got shape "
                    f"{self.shape}; reduce it first (e.g. loss.mean()) or pass grad=")
            grad = array_module(self.data).ones_like(self.data)
        else:
            grad = _as_array(grad, self.data.dtype)
            if device_of(grad) != self.device:
                raise ValueError(f"backward(grad): the gradient is on {device_of(grad)}, the output on {self.device}; "
                                 f"pass a gradient on {self.device} (Tensor.to)")
            if grad.shape != self.shape:
                raise ValueError(f"backward(grad): gradient shape {grad.shape} does not match "
                                 f"output shape {self.shape}")
        order = self._topological_order()
        grads = {id(self): grad}
        waiting = _hooked_consumers(order)  # id(hooked leaf) -> consumer edges not yet differentiated
        outer, _state.callbacks = getattr(_state, "callbacks", None), []
        try:
            self._backward(order, grads, waiting, retain_graph)
            while _state.callbacks:
                _state.callbacks.pop(0)()
        finally:
            _state.callbacks = outer

    def _backward(self, order, grads, waiting, retain_graph):
        owned = set()  # ids of nodes whose summed gradient is an array no one else holds
        for node in order:
            g = grads.pop(id(node), None)
            ctx = node._ctx
            if ctx is None:  # a leaf (a hooked one whose gradient was final earlier has none left here)
                _accumulate(node, g, id(node) in owned)
                continue
            if g is None:
                continue
            for parent, version in zip(ctx.parents, getattr(ctx, "versions", ())):
                if parent._version != version:
                    raise RuntimeError(
                        f"backward() through {type(ctx).__name__}: one of its inputs (shape {parent.shape}) "
                        f"was modified by an in-place operation after it was used (version {version} -> "
                        f"{parent._version}), so the values saved for the gradient are stale; update it "
                        "after backward(), or use an out-of-place operation")
            parent_grads = ctx.backward(g)
            if not isinstance(parent_grads, tuple):
                parent_grads = (parent_grads,)
            fresh = ctx.owned_grads
            for i, (parent, pg) in enumerate(zip(ctx.parents, parent_grads)):
                key = id(parent)
                if pg is not None and parent.requires_grad:
                    if pg.shape != parent.shape:
                        raise RuntimeError(f"internal error: {type(ctx).__name__}.backward returned "
                                           f"shape {pg.shape} for an input of shape {parent.shape}")
                    if key in grads:
                        grads[key] = _sum(grads[key], pg)
                        owned.add(key)
                    else:
                        grads[key] = pg
                        if i in fresh:
                            owned.add(key)
                if key in waiting:
                    waiting[key] -= 1
                    if waiting[key] == 0:  # its last consumer is done: its gradient is final now
                        del waiting[key]
                        _accumulate(parent, grads.pop(key, None), key in owned)
            if not retain_graph:
                node._ctx = _FREED

    def _topological_order(self):
        """Nodes reachable from self, each after every node that consumes it (output first)."""
        order, visited = [], set()
        stack = [(self, False)]
        while stack:
            node, expanded = stack.pop()
            if expanded:
                order.append(node)
                continue
            if id(node) in visited:
                continue
            visited.add(id(node))
            stack.append((node, True))
            if node._ctx is not None:
                # the first input (by convention the data path: x of conv2d(x, w), matmul(x, w.T)) is
                # explored first, so it finishes first and its whole subgraph comes after the others
                # (weights, w.T, quantized weights) in the order: a weight's gradient is final right
                # after the layer's backward, not at the end of the pass
                for parent in reversed(node._ctx.parents):
                    if parent.requires_grad and id(parent) not in visited:
                        stack.append((parent, False))
        order.reverse()
        return order


class Parameter(Tensor):
    """A tensor that a ``Module`` registers as trainable (``requires_grad=True``, float32 default).

    ``constraint``, if set, is a function ``f(data)`` that every optimizer applies to the array in
    place after updating it (e.g. clipping the latent weights of a binary kernel to [-1, 1]).
    """

    __slots__ = ("constraint", "_grad_hooks")

    def __init__(self, data, requires_grad: bool = True, dtype=None, constraint=None):
        arr = _as_array(data, dtype)
        if arr.dtype.kind != "f":
            arr = arr.astype(np.float32)
        super().__init__(arr, requires_grad=requires_grad)
        self.constraint = constraint
        self._grad_hooks = ()

    def register_post_accumulate_grad_hook(self, hook) -> "HookHandle":
        """Call ``hook(self)`` in every ``backward()`` as soon as this parameter's gradient of that pass
        is accumulated into ``.grad`` (module docstring); returns a handle whose ``remove()`` unhooks it."""
        if not callable(hook):
            raise TypeError(f"register_post_accumulate_grad_hook: expected a callable, got {type(hook).__name__}")
        self._grad_hooks = getattr(self, "_grad_hooks", ()) + (hook,)
        return HookHandle(self, hook)

    def __repr__(self):
        return "Parameter" + super().__repr__()[len("Tensor"):]


class HookHandle:
    """What ``register_post_accumulate_grad_hook`` returns: ``remove()`` unregisters the hook."""

    __slots__ = ("_param", "_hook")

    def __init__(self, param, hook):
        self._param, self._hook = param, hook

    def remove(self) -> None:
        hooks = getattr(self._param, "_grad_hooks", ())
        if self._hook in hooks:
            i = hooks.index(self._hook)
            self._param._grad_hooks = hooks[:i] + hooks[i + 1:]


def queue_callback(fn) -> None:
    """Run ``fn()`` once, when the ``backward()`` now running has differentiated the whole graph (before
    it returns); only callable from inside a backward pass, e.g. from a gradient hook."""
    callbacks = getattr(_state, "callbacks", None)
    if callbacks is None:
        raise RuntimeError("queue_callback() outside backward(): call it from a gradient hook")
    callbacks.append(fn)


def _hooked_consumers(order) -> dict:
    """``{id(leaf): number of consumer edges}`` for the leaves in ``order`` that have gradient hooks
    (empty, and cheap, when none has)."""
    hooked = {id(n) for n in order if n._ctx is None and getattr(n, "_grad_hooks", ())}
    if not hooked:
        return {}
    waiting = dict.fromkeys(hooked, 0)
    for node in order:
        if node._ctx is not None:
            for parent in node._ctx.parents:
                if id(parent) in waiting:
                    waiting[id(parent)] += 1
    return waiting


def _accumulate(leaf, g, owned=False) -> None:
    """Add this pass's gradient ``g`` (or nothing, if None) into ``leaf.grad`` and run its hooks.
    A first gradient becomes the leaf's own copy (so that no two leaves, and nothing else, share
    one ``.grad`` array that an in-place update such as ``clip_grad_norm_`` would change twice),
    except on a device where ``owned``: g is a new array that nothing else holds (``Function.owned_grads``;
    a sum of contributions), kept as it is, one kernel launch fewer."""
    if g is None or not leaf.requires_grad:
        return
    if leaf.grad is None:
        leaf.grad = g if owned and type(g) is not np.ndarray else _sum(g)
    else:
        leaf.grad = _sum(leaf.grad, g)
    for hook in getattr(leaf, "_grad_hooks", ()):
        hook(leaf)


def tensor(data, requires_grad: bool = False, dtype=None, device=None) -> Tensor:
    """``Tensor(data, requires_grad, dtype, device)``, where ``device`` left out is the default of the
    enclosing ``with bitnet.device(...)`` block ("cpu" outside any)."""
    from bitnet.backend import current_device
    return Tensor(data, requires_grad=requires_grad, dtype=dtype,
                  device=current_device() if device is None else device)


def _sum(a, b=None):
    """``a + b`` (a copy of ``a`` without ``b``) in a new array from ``bitnet.ops.workspace``: a
    gradient summed from several uses, or a leaf's own copy, without fresh pages every step (split
    across bitnet's threads for large arrays, ``bitnet.kernels.threads.parallel_flat``)."""
    if type(a) is not np.ndarray:  # a device array: no host workspace
        return a.copy() if b is None else a + b
    from bitnet.kernels.threads import parallel_binary, parallel_copy
    from bitnet.ops import workspace
    if b is None:
        return parallel_copy(workspace.empty(a.shape, a.dtype), a)
    shape = a.shape if a.shape == b.shape else np.broadcast_shapes(a.shape, b.shape)
    return parallel_binary(np.add, a, b, workspace.empty(shape, np.result_type(a, b)))


class Function:
    """Base of every differentiable primitive.

    Subclasses implement ``forward(self, *arrays, **options) -> ndarray`` and
    ``backward(self, grad) -> gradient or tuple of gradients`` (``None`` for inputs that need
    none; ``self.needs_grad[i]`` tells whether input ``i`` wants one). ``forward`` may store on
    ``self`` whatever ``backward`` needs. Non-tensor options are passed as keyword arguments.

    Devices: ``apply`` refuses inputs on two devices (a 0-d CPU tensor, a constant, goes with any
    device, as a NumPy scalar) and runs inputs on "cuda" with what ``bitnet.gpu.dispatch.place``
    chooses: the registered GPU implementation, else the class itself where its own ``devices``
    names "cuda". ``crosses_devices`` marks the one primitive that moves data between devices
    (``Tensor.to``: ``bitnet.gpu.transfer.ToDevice``).

    Dtypes: a float op (conv, matmul, pooling, batch norm, tanh, ...) sets ``float_inputs`` to the name
    its errors use; ``apply`` then computes integer and bool inputs in float32 and refuses float dtypes
    other than float32 / float64 with a ``TypeError`` (``bitnet.ops.dtypes``: the policy, in one place).

    Ownership: ``owned_grads`` (a class attribute, or set by ``backward`` for one call) lists the
    positions of backward's results that are arrays it allocated and keeps no reference to (not g, not
    a view of anything saved; no two of them the same memory). A leaf on a device keeps such a
    gradient as its ``.grad`` without the copy it otherwise gets; list a position only where that
    holds on every path of ``backward``.
    """

    __slots__ = ("parents", "needs_grad", "__dict__")
    devices = ("cpu",)
    crosses_devices = False
    float_inputs = None  # a float op's name (see above); None: the arrays go to forward as they are
    owned_grads = ()  # indices of backward's results that are new arrays nothing else holds (_accumulate)

    @classmethod
    def apply(cls, *inputs, **options) -> Tensor:
        tensors = tuple(x if isinstance(x, Tensor) else Tensor(x) for x in inputs)
        arrays = tuple(t.data for t in tensors)
        if cls.float_inputs:
            arrays = float_operands(arrays, cls.float_inputs)
        impl = cls
        if not all(type(a) is np.ndarray for a in arrays) and not cls.crosses_devices:
            impl, arrays = place(cls, arrays)
        ctx = impl()
        ctx.needs_grad = tuple(t.requires_grad for t in tensors)
        out = ctx.forward(*arrays, **options)
        requires = is_grad_enabled() and any(ctx.needs_grad)
        result = Tensor(out, requires_grad=requires and out.dtype.kind == "f")
        if result.requires_grad:
            ctx.parents = tensors
            ctx.versions = tuple(t._version for t in tensors)
            result._ctx = ctx
        return result

    def forward(self, *arrays, **options):  # pragma: no cover - abstract
        raise NotImplementedError

    def backward(self, grad):  # pragma: no cover - abstract
        raise NotImplementedError


class _FreedGraph(Function):
    """Stands in for the Function of a node whose graph a backward() pass has released."""

    def backward(self, grad):
        raise RuntimeError("backward() through a part of the graph that a previous backward() "
                           "already freed; pass retain_graph=True to the first backward() to "
                           "differentiate the same graph twice")


_FREED = _FreedGraph()
_FREED.parents = ()
_FREED.needs_grad = ()

from bitnet.ops import tensor_methods as _tensor_methods  # noqa: E402  (installs operators)

_tensor_methods.install(Tensor)
