"""``bitnet.pack(model)``: the inference model whose binary layers run on packed bits.

Returns a copy of ``model`` in eval mode (the original is untouched) where

- every ``packable`` QConv2d / QDense (sign input quantizer, binary sign kernel) becomes a
  ``PackedConv2d`` / ``PackedDense`` holding its filters as uint64 words, packed once;
- every batch norm that folds into such a layer (``bitnet.packed.fold.batchnorm_pairs``) is folded
  into its ``scale`` / ``shift`` and replaced by ``Identity``;
- a module that defines ``to_packed(pack_layer)`` (e.g. the binary ResNet block, which fuses its
  residual additions into the packed layers' epilogue) builds its own packed version; it receives
  a function ``pack_layer(layer, bn)`` and returns the packed module, or None to be packed
  layer by layer like any other (the hook runs on the copy: the root model's hook may first
  replace some of its own children, e.g. the ResNet's float stem by a channels-last one);
- everything else (float layers, k-bit layers, binary layers with other quantizers, and layers
  whose class overrides the ``forward`` of a bitnet layer: ``bitnet.packed.kinds``; a binary layer
  left in float for that reason is named in a warning) stays as it was;
  but in a Sequential, float layers whose output only the next binary layer reads through its sign
  (e.g. conv, batch norm, tanh, max pool before a binary conv) run as one chain straight to that
  layer's packed input bits (``bitnet.packed.sign_chains``; the modules themselves stay).

A batch larger than ``micro_batch`` (default 32) is run in slices of at most that many samples and
the outputs concatenated: every sample's result is independent of the others in eval mode, and a
slice's activations stay in the caches (measured: binary ResNet-18, batch 64, 1.2x faster in
slices of 32 than in one piece). With several threads the slices are smaller (about two per
thread, at least ``MIN_SLICE`` samples) and run in parallel, each on one thread
(``bitnet.kernels.threads.run_parallel``): one parallel region per forward pass instead of one per
kernel, and on a machine shared with other work the threads that run take the slices of those
that do not. ``micro_batch=None`` turns this off, and so does a batch norm without running
statistics (``track_running_stats=False``: it normalizes with the batch's own statistics, in eval
mode too, so a sample's output depends on the others); a model of your own whose modules mix the
samples of a batch in some other way must be packed with ``micro_batch=None``. An empty batch
(N = 0) gives the empty output of the shape a batch of one would have.

The packed model computes what ``model.eval()`` computes: binary dot products exactly, the rest
within float rounding (folding batch norm reorders float32 operations; a value that lands within
rounding of 0 can take the other sign in the next binary layer; the tests count such cases).
"""
from __future__ import annotations

import numpy as np

from bitnet.kernels.threads import num_threads, run_parallel
from bitnet.nn.layers import Identity
from bitnet.nn.quantized import QConv2d
from bitnet.packed.fold import batchnorm_pairs
from bitnet.packed.kinds import hook_trusted
from bitnet.packed.layers import PackedConv2d, PackedDense, packable
from bitnet.packed.lowering import lower
from bitnet.packed.plan import prepare
from bitnet.tensor import enable_grad, is_grad_enabled, no_grad


def pack_layer(layer, bn=None):
    """The packed twin of one packable layer, with ``bn`` folded in."""
    cls = PackedConv2d if isinstance(layer, QConv2d) else PackedDense
    return cls.from_layer(layer, bn)


def shape_layer(layer, bn=None):
    """The packed twin of one packable layer with its shapes only (``from_layer(weights=False)``)."""
    cls = PackedConv2d if isinstance(layer, QConv2d) else PackedDense
    return cls.from_layer(layer, bn, weights=False)


def _set_child(root, dotted, new):
    *path, leaf = dotted.split(".")
    parent = root
    for part in path:
        parent = parent._modules[part]
    parent._modules[leaf] = new  # in place: a Sequential keeps its order


def pack(model, micro_batch: int | None = 32, device: str | None = None, binary_kernels: str | None = None):
    """A packed inference copy of ``model``; see the module docstring. The copy's ``packed_layers``
    attribute lists the dotted names of the layers that run on bits. ``device="cuda"`` (or the
    default of a ``with bitnet.device("cuda"):`` block) returns it as a ``CudaPackedModel``, its
    weights on the GPU (``micro_batch`` applies to the CPU only; ``binary_kernels`` to the GPU:
    "mma" for the 1-bit tensor cores, "popcount", or None to choose by the GPU)."""
    from bitnet.backend import resolve_device
    if micro_batch is not None and (not isinstance(micro_batch, int) or micro_batch < 1):
        raise ValueError(f"pack: micro_batch must be a positive int or None, got {micro_batch!r}")
    device = resolve_device(device)
    from bitnet.nn.module import host_copy  # (a model trained on the GPU is packed from host copies)
    return on_device(_finish(_pack(host_copy(model), pack_layer), micro_batch), device, binary_kernels)


def pack_structure(model, micro_batch: int | None = 32):
    """The packed model of ``model``'s architecture, built in place (``model`` is consumed) with the
    packed layers' shapes only: the state a packed file's weights are loaded into (``load_packed``),
    without packing ``model``'s weights."""
    return _finish(_pack(model, shape_layer), micro_batch)


def _finish(packed, micro_batch):
    for p in packed.parameters():  # an inference model: no graph, ever (its planned forward builds none)
        p.requires_grad = False
    prepare(packed)
    lower(packed)  # a forward_program that cannot be read is refused here, at packing (its ValueError)
    packed.__class__ = _micro_batched(type(packed))
    packed.micro_batch = None if _mixes_samples(packed) else micro_batch
    return packed


def _mixes_samples(model) -> bool:
    """True where a module's output for one sample depends on the batch's other samples in eval
    mode: a batch norm without running statistics (it normalizes with the batch's own)."""
    from bitnet.nn.layers import _BatchNorm
    return any(isinstance(m, _BatchNorm) and not m.track_running_stats for m in model.modules())


def on_device(packed, device: str, binary_kernels=None):
    """``packed`` itself for "cpu"; for "cuda" a ``CudaPackedModel`` running it on the GPU (its
    binary layers on ``binary_kernels``: "mma", "popcount", or None to choose by the GPU)."""
    if device == "cpu":
        if binary_kernels is not None:
            raise ValueError(f'binary_kernels={binary_kernels!r} applies to device="cuda" only')
        return packed
    from bitnet.packed.cuda_model import CudaPackedModel
    return CudaPackedModel(packed, binary_kernels)


def _pack(packed, pack_layer):
    """Pack ``packed`` (a copy the caller owns) in place with ``pack_layer(layer, bn)``."""
    packed.eval()
    if packable(packed):  # a bare binary layer
        new = pack_layer(packed)
        new.packed_layers = [""]
        return new
    _warn_overridden(packed)
    if hasattr(packed, "to_packed") and hook_trusted(packed, "to_packed"):
        new = packed.to_packed(pack_layer)
        if new is not None:
            new.packed_layers = [n for n, m in new.named_modules() if isinstance(m, (PackedConv2d, PackedDense))]
            return new
    pairs = dict(batchnorm_pairs(packed))
    modules = dict(packed.named_modules())
    names, replaced = [], []
    for name, mod in list(modules.items()):
        if _inside(name, replaced):
            continue
        new = mod.to_packed(pack_layer) if name and hasattr(mod, "to_packed") and hook_trusted(mod, "to_packed") else None
        if new is not None:
            _set_child(packed, name, new)
            replaced.append(name)
            names += [f"{name}.{sub}" for sub, m in new.named_modules() if isinstance(m, (PackedConv2d, PackedDense))]
        elif packable(mod):
            bn_name = pairs.get(name)
            _set_child(packed, name, pack_layer(mod, modules[bn_name] if bn_name else None))
            if bn_name:
                _set_child(packed, bn_name, Identity())
            names.append(name)
            replaced.append(name)
    packed.packed_layers = names
    return packed


def _warn_overridden(model) -> None:
    """Warn, naming them, about binary layers left in float because their class has its own forward."""
    from bitnet.nn.quantized import QConv2d, QDense
    from bitnet.packed.kinds import computes_as
    names = [name or "(root)" for name, m in model.named_modules()
             if isinstance(m, (QConv2d, QDense)) and m.binary_input and m.binary_kernel
             and not (computes_as(m, QConv2d) or computes_as(m, QDense))]
    if names:
        import warnings
        warnings.warn(f"bitnet.pack: {', '.join(names)} stay in float (not on bits): their class overrides the "
                      "forward of QConv2d / QDense, so its packed twin would compute something else; to run them "
                      "on bits, move the extra computation into a module of its own after the layer",
                      UserWarning, stacklevel=4)


def _inside(name, prefixes):
    return any(name.startswith(p + ".") for p in prefixes)


_MICRO_BATCHED = {}
MIN_SLICE = 8  # images: a slice's fixed cost (the forward's Python-level steps) is about that of one image


def slice_size(n: int, micro_batch: int | None) -> int | None:
    """Images per slice for a batch of ``n`` (None: run it whole): at most ``micro_batch``, and with
    several threads small enough that every thread gets about two slices, but not below
    ``MIN_SLICE``."""
    if not micro_batch or n <= min(MIN_SLICE, micro_batch):  # one slice whatever the threads
        return None
    threads = num_threads()
    step = micro_batch if threads < 2 else min(micro_batch, max(MIN_SLICE, -(-n // (2 * threads))))
    return None if n <= step else step


def _empty_batch(forward, x):
    """The output for an empty batch ``x`` (N = 0): that of one sample of zeros, without its row (the
    kernels are written for at least one sample; every sample's output is independent of the others')."""
    from bitnet.tensor import Tensor
    data = x.data if isinstance(x, Tensor) else np.asarray(x)
    out = forward(Tensor(np.zeros((1,) + data.shape[1:], data.dtype)))
    return Tensor(np.asarray(out.data)[:0])


def _micro_batched(cls):
    """``cls`` with a forward that runs large batches in slices, the slices in parallel (module
    docstring)."""
    if getattr(cls, "_micro_batched_", False):
        return cls
    if cls not in _MICRO_BATCHED:
        def forward(self, x, *args, **kwargs):
            from bitnet.tensor import Tensor
            if getattr(x, "ndim", 0) >= 2 and x.shape[0] == 0 and not (args or kwargs):
                return _empty_batch(lambda one: cls.forward(self, one), x)
            micro_batch = self.__dict__.get("micro_batch")  # (None in a slice: packed[1:3] is a new Sequential)
            step = slice_size(x.shape[0], micro_batch) if getattr(x, "ndim", 0) >= 2 else None
            if step is None or args or kwargs:  # slices of x only: not with other inputs
                return cls.forward(self, x, *args, **kwargs)
            data = x.data if isinstance(x, Tensor) else np.asarray(x)
            grad = is_grad_enabled()

            def part(i):  # on a helper thread too: the caller's grad mode, the kernels single-threaded
                with enable_grad() if grad else no_grad():
                    return cls.forward(self, Tensor(data[i:i + step]))
            parts = run_parallel(part, [(i,) for i in range(0, x.shape[0], step)])
            if not all(isinstance(p, Tensor) for p in parts):
                raise TypeError(f"pack(micro_batch={micro_batch}): the model's forward must return one tensor to "
                                "be run in slices; pack it with micro_batch=None")
            return Tensor(np.concatenate([p.data for p in parts]))
        _MICRO_BATCHED[cls] = type(cls.__name__, (cls,), {"forward": forward, "__doc__": cls.__doc__,
                                                          "__module__": cls.__module__, "_micro_batched_": True,
                                                          "forward_in_eval_is_base": True})  # (packed.kinds)
    return _MICRO_BATCHED[cls]
