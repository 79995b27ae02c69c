"""One LeNet training step (forward, backward, Adam update) in bitnet or in PyTorch.

Both sides build the same network (BMXNet LeNet layout), the same loss and the same optimizer,
and train on the same batches; ``make_stepper(framework, x, y, threads)`` returns a function
``step(i)`` that runs one step on batch ``i``.
"""
from __future__ import annotations


def bitnet_stepper(batches, threads):
    import numba
    from bitnet import Tensor, functional as F, models, optim
    numba.set_num_threads(threads)
    model = models.get("lenet", seed=0)
    opt = optim.Adam(model.parameters(), lr=1e-3)
    params = list(model.parameters())

    def step(i):
        x, y = batches[i % len(batches)]
        for p in params:
            p.grad = None
        loss = F.cross_entropy(model(Tensor(x)), y)
        loss.backward()
        opt.step()
        return float(loss.data)
    return step


def torch_stepper(batches, threads):
    import torch
    from torch import nn
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(1, 64, 5), nn.BatchNorm2d(64), nn.Tanh(), nn.MaxPool2d(2),
        nn.Conv2d(64, 64, 5), nn.BatchNorm2d(64), nn.Tanh(), nn.MaxPool2d(2), nn.Flatten(),
        nn.Linear(1024, 1000), nn.BatchNorm1d(1000), nn.Tanh(), nn.Linear(1000, 10))
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    tb = [(torch.from_numpy(x), torch.from_numpy(y)) for x, y in batches]

    def step(i):
        x, y = tb[i % len(tb)]
        opt.zero_grad(set_to_none=True)
        loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        return loss.item()
    return step


def make_stepper(framework, batches, threads):
    return {"bitnet": bitnet_stepper, "torch": torch_stepper}[framework](batches, threads)
