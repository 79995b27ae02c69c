"""``bitnet bench train-bits``: what running binary layers' training forward on bits saves.

For ``lenet-binary`` (MNIST shape) and ``resnet18-binary`` (CIFAR-10 shape), one training step
(forward, cross-entropy, backward, Adam update) on random data, with ``forward_on_bits`` on and off
for every binary layer (``bitnet.ops.binary``), timed side by side in one run. Both settings
compute the same numbers (the tests check it bit for bit), so only time differs. Reported: the
median step, the implied time per epoch (``EPOCH_IMAGES / batch`` steps: 60,000 MNIST, 50,000
CIFAR-10 training images), the p90, max and max / median of the timed steps, and the ratio
float / bits. With ``busy`` > 0 that many busy-looping processes (``bitnet.bench.load``) run while
the steps are timed.
"""
from __future__ import annotations

import numpy as np

NETWORKS = {"lenet-binary": ((1, 28, 28), 60000, 128), "resnet18-binary": ((3, 32, 32), 50000, 64)}


def _stepper(name, shape, batch, on_bits):
    import bitnet
    from bitnet import Tensor
    from bitnet import functional as F
    model = bitnet.models.get(name, seed=0)
    for m in model.modules():
        if hasattr(m, "forward_on_bits"):
            m.forward_on_bits = on_bits
    opt = bitnet.optim.Adam(model.parameters(), lr=1e-3)
    rng = np.random.default_rng(0)
    x = Tensor(rng.standard_normal((batch,) + shape).astype(np.float32))
    y = Tensor(rng.integers(0, 10, batch))

    def step():
        opt.zero_grad()
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        return loss.item()
    return step


def bench_network(name, rounds, repeats, batch=None, busy=0):
    from bitnet.bench import load
    from bitnet.bench.timing import records_for, time_calls
    shape, epoch_images, default_batch = NETWORKS[name]
    batch = batch or default_batch
    methods = {"float forward": _stepper(name, shape, batch, False),
               "forward on bits": _stepper(name, shape, batch, True)}
    with load.busy(busy):
        calls = time_calls(methods, rounds, repeats)
    med = {m: float(np.median(ts)) for m, ts in calls.items()}
    steps = -(-epoch_images // batch)
    recs = records_for(f"{name} batch {batch} train step", med, "float forward", ratio_key="ratio_vs_float_forward",
                       calls=calls, network=name, batch=batch, steps_per_epoch=steps, busy=busy)
    for r in recs:
        r["epoch_s"] = r["median_s"] * steps
    return recs
