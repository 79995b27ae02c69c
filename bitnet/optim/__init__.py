"""Optimizers, learning-rate schedules and gradient clipping for bitnet parameters.

Plain-loop usage, PyTorch style::

    from bitnet.optim import AdamW, WarmupCosine, clip_grad_norm_
    opt = AdamW(model.parameters(), lr=1e-3, weight_decay=1e-2)
    sched = WarmupCosine(opt, warmup_steps=500, total_steps=10_000)
    for x, y in loader:
        opt.zero_grad()
        loss = loss_fn(model(x), y)
        loss.backward()
        clip_grad_norm_(model.parameters(), max_norm=1.0)
        opt.step()
        sched.step()

Updates follow PyTorch's equations exactly (see each module's docstring), are done in place in
the parameter's dtype, skip parameters without a gradient, and record no autograd graph.
Parameters on "cuda" (``model.to("cuda")``) are updated and clipped on the device by the same
formulas, their optimizer state kept beside them.
``Optimizer.state_dict()`` and ``LRScheduler.state_dict()`` hold only plain data (dicts, lists,
numbers, NumPy arrays) for HDF5 checkpoints.
"""
from bitnet.optim.optimizer import Optimizer
from bitnet.optim.sgd import SGD
from bitnet.optim.adam import Adam, AdamW
from bitnet.optim.lr_scheduler import (LRScheduler, StepLR, MultiStepLR, CosineAnnealingLR,
                                       LinearWarmup, WarmupCosine)
from bitnet.optim.clip import clip_grad_norm_, clip_grad_value_
from bitnet.optim.bop import Bop
from bitnet.optim.routing import (binary_kernels, split_parameters, param_groups, MultiOptimizer,
                                  bop_and_adam)

__all__ = ["Optimizer", "SGD", "Adam", "AdamW", "LRScheduler", "StepLR", "MultiStepLR",
           "CosineAnnealingLR", "LinearWarmup", "WarmupCosine", "clip_grad_norm_",
           "clip_grad_value_", "Bop", "binary_kernels", "split_parameters", "param_groups",
           "MultiOptimizer", "bop_and_adam"]
