"""Helpers of the packed-model tests: batch norms with statistics and affine parameters far from their
defaults (so that folding them into packed layers is tested on values that matter), and the
layer-by-layer reference of a packed model's plans."""
import numpy as np

from bitnet import nn


def warm(model, rng):
    """``model`` in eval mode with every batch norm's statistics and affine parameters drawn from ``rng``."""
    for m in model.modules():
        if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
            c = m.num_features
            m.running_mean[:] = rng.normal(0, 0.5, c)
            m.running_var[:] = rng.uniform(0.3, 3, c)
            m.weight.data[:] = rng.uniform(-1.5, 1.5, c).astype(np.float32)
            m.bias.data[:] = rng.normal(size=c).astype(np.float32)
    return model.eval()


def layer_by_layer(packed, x):
    """``packed(x)`` with no plan: every Sequential runs its modules one by one (its sign chains in
    place of the layers they cover), every other container its own forward; the reference a plan
    must equal to the bit. The plans recorded before are set aside for the run and given back."""
    from unittest import mock

    from bitnet.packed import plan
    from bitnet.tensor import Tensor, no_grad

    def no_plan(*args, **kwargs):
        raise plan.NoPlan("the layer-by-layer reference")
    kept = {m: m.__dict__["_plans"] for m in packed.modules() if "_plans" in m.__dict__}
    try:
        for m in kept:
            m._plans = {}
        with mock.patch.object(plan, "record", no_plan), no_grad():
            return packed(x if isinstance(x, Tensor) else Tensor(x)).data
    finally:
        for m, plans in kept.items():
            m._plans = plans
