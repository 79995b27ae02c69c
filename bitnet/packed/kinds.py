"""Which modules the packer may read by their class.

``bitnet.pack`` (and the sign chains, the channels-last blocks and the GPU packed model) replace a
layer by what its class computes: a binary ``QConv2d`` by XNOR-popcount on its packed weights, a
batch norm by the scale and shift folded into the layer before it, a ``Tanh`` by tanh. That is
right only where the layer's ``forward`` *is* its class's: a subclass that overrides ``forward``
(a learned gain after the convolution, a shifted sign, ...) computes something else, and reading
it by its class would give other outputs without a word. ``computes_as(module, cls)`` says whether
``module`` may be read as a ``cls``: it is one, and no class between its own and ``cls`` defines
another ``forward``. A class may declare that its ``forward`` is its base's in eval mode (the
mode every packed model runs in) with ``forward_in_eval_is_base = True`` in its own body: the
SyncBatchNorm classes do (they synchronize statistics in training only).
"""
from __future__ import annotations


def computes_as(module, cls) -> bool:
    """True when ``module`` is a ``cls`` whose ``forward`` (in eval mode) is ``cls.forward``."""
    if not isinstance(module, cls):
        return False
    base = cls.forward
    for klass in type(module).__mro__:
        own = klass.__dict__.get("forward")
        if own is None:
            continue
        if own is base:
            return True
        if not klass.__dict__.get("forward_in_eval_is_base", False):
            return False
    return False


def hook_trusted(module, hook: str) -> bool:
    """True when ``module``'s method ``hook`` (e.g. ``to_packed``) was written for the ``forward`` it
    runs: the class defining ``hook`` is the one defining ``forward`` (classes that declare their
    forward to be their base's skipped) or a subclass of it (a subclass that overrides ``forward``
    below the hook would be packed as its base)."""
    mro = type(module).__mro__
    owner = next((k for k in mro if hook in k.__dict__), None)
    forward = next((k for k in mro if "forward" in k.__dict__ and not k.__dict__.get("forward_in_eval_is_base")), None)
    return owner is not None and forward is not None and issubclass(owner, forward)
