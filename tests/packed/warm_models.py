"""Batch norms with running statistics and affine parameters far from their defaults, so that folding
them into packed layers is tested on values that matter."""
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
