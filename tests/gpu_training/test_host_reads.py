"""How often a training step on "cuda" reads a device array back to the host.

On a GPU every such read (``float(loss)``, a ``.get()`` ...) waits for all the work queued before it,
so the host stops queueing kernels ahead of the GPU. The emulation records each one
(``bitnet.gpu.emulated.count_host_reads``); these tests pin the count down, so that an op that starts
reading back (a ``bool(xp.any(...))`` check, a size computed from a device value) fails here instead
of quietly slowing down GPU training:

- forward, backward and the optimizer step of every zoo model, with SGD, Adam, AdamW or Bop: none;
- ``cross_entropy`` with labels on the device: one (it checks them on the host: docs/gpu-training.md);
  with host labels: none;
- ``fit``: two per step (the labels, then the loss and the correct count together); the same per
  validation batch.
"""
from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

import bitnet
import bitnet.functional as F
from bitnet import models, optim
from bitnet.data import DataLoader
from bitnet.gpu.arrays import emulate
from bitnet.gpu.emulated import count_host_reads
from bitnet.training import fit

SHAPES = {"lenet": (1, 28), "lenet-binary": (1, 28), "binary-vgg-small": (3, 32), "resnet18": (3, 32),
          "resnet18-binary": (3, 32)}
OPTIMIZERS = {"sgd": lambda m: optim.SGD(m.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4),
              "adam": lambda m: optim.Adam(m.parameters(), lr=1e-3),
              "adamw": lambda m: optim.AdamW(m.parameters(), lr=1e-3, weight_decay=1e-2),
              "bop": lambda m: optim.bop_and_adam(m, lr=1e-3)}


def _batch(channels, size, labels_on):
    rng = np.random.default_rng(0)
    x = bitnet.Tensor(rng.standard_normal((4, channels, size, size)).astype(np.float32), device="cuda")
    y = np.array([0, 3, 9, 3])
    return x, (bitnet.Tensor(y, device="cuda") if labels_on == "cuda" else y)


@pytest.mark.parametrize("opt_name", sorted(OPTIMIZERS))
@pytest.mark.parametrize("name", sorted(SHAPES))
def test_a_training_step_reads_nothing_back_but_device_labels(name, opt_name):
    if opt_name == "bop" and "binary" not in name:
        pytest.skip("Bop trains binary kernels only")
    channels, size = SHAPES[name]
    with emulate():
        model = models.get(name, in_channels=channels, image_size=size, num_classes=10, seed=0).to("cuda")
        opt = OPTIMIZERS[opt_name](model)
        sched = optim.StepLR(opt, step_size=1, gamma=0.5)
        for labels_on in ("cpu", "cuda", "cpu"):  # the second step also reads the optimizer's state
            x, y = _batch(channels, size, labels_on)
            with count_host_reads() as forward:
                logits = model(x)
            with count_host_reads() as loss_reads:
                loss = F.cross_entropy(logits, y)
            with count_host_reads() as rest:
                opt.zero_grad()
                loss.backward()
                optim.clip_grad_norm_(model.parameters(), max_norm=1.0)
                opt.step()
                sched.step()  # (the binary kernels' latent clipping runs inside opt.step)
            assert forward == [] and rest == []
            assert loss_reads == ([("asnumpy", (4,))] if labels_on == "cuda" else [])


def test_clip_grad_norm_reads_its_norm_back_only_when_asked_to_check_it():
    with emulate():
        layer = bitnet.nn.Dense(3, 1, bias=False).to("cuda")
        w = layer.weight
        w.grad = bitnet.Tensor(np.array([[3.0, 4.0, 0.0]], np.float32), device="cuda").data
        with count_host_reads() as quiet:
            total = optim.clip_grad_norm_([w], max_norm=1.0)
        with count_host_reads() as checked:
            optim.clip_grad_norm_([w], max_norm=1.0, error_if_nonfinite=True)
        assert quiet == [] and checked == [("float", ())]
        assert float(total.data) == 5.0


def test_fit_reads_back_twice_a_step():
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((80, 1, 28, 28)).astype(np.float32), rng.integers(0, 10, 80)
    with emulate():
        model = models.get("lenet-binary", seed=0)
        with count_host_reads() as reads:
            history = fit(model, optim.Adam(model.parameters(), lr=1e-3), DataLoader((x, y), batch_size=32), 1,
                          val_loader=DataLoader((x, y), 48), progress=False, log=None, device="cuda")
    assert len(history.steps) == 3
    # training: batches of 32, 32, 16; validation: 48, 32; each the labels' check and the (loss, correct) pair
    assert Counter(reads) == Counter({("asnumpy", (2,)): 5, ("asnumpy", (32,)): 3, ("asnumpy", (16,)): 1,
                                      ("asnumpy", (48,)): 1})
