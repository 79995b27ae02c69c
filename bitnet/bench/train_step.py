"""One training step (forward, cross-entropy, backward, Adam update) in bitnet, PyTorch or Larq.

Both sides build the same network from the same initial weights (bitnet's zoo entry with seed 0;
the PyTorch twin of ``bitnet.bench.torch_binary`` gets a copy of its parameters), the same loss
and the same optimizer (Adam, lr 1e-3), and train on the same batches in the same order.
Binary layers: bitnet's ``ste_sign`` on inputs and weights; in PyTorch a hand-written
``torch.autograd.Function`` doing the same (sign(0) = +1, gradient where |x| <= 1), and the
latent binary weights clipped to [-1, 1] after every step, as bitnet's kernel constraint does;
in Larq its own ``ste_sign`` and ``weight_clip`` (``bitnet.bench.larq_models``).
``make_stepper(framework, model, batches, threads)`` returns ``step(i)``, which runs one step on
batch ``i`` (cycling) and returns the loss.
"""
from __future__ import annotations

MODELS = ("lenet-binary", "resnet18-binary", "lenet")


def bitnet_stepper(model_name, batches, threads):
    import numba
    from bitnet import Tensor, functional as F, models, optim
    numba.set_num_threads(threads)
    model = models.get(model_name, seed=0)
    opt = optim.Adam(model.parameters(), lr=1e-3)
    params = list(model.parameters())

    def step(i):
        x, y = batches[i % len(batches)]
        for p in params:
            p.grad = None
        loss = F.cross_entropy(model(Tensor(x)), y)
        loss.backward()
        opt.step()  # applies the binary kernels' constraint (clip to [-1, 1])
        return float(loss.data)
    return step


def torch_stepper(model_name, batches, threads):
    import torch
    from torch import nn
    from bitnet import models
    from bitnet.bench.torch_binary import TWINS, binary_weights, clip_binary_weights, copy_from_bitnet
    torch.set_num_threads(threads)
    model = TWINS[model_name]()
    copy_from_bitnet(model, models.get(model_name, seed=0))
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    clipped = binary_weights(model)
    tb = [(torch.from_numpy(x), torch.from_numpy(y)) for x, y in batches]

    def step(i):
        x, y = tb[i % len(tb)]
        opt.zero_grad(set_to_none=True)
        loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        clip_binary_weights(clipped)
        return loss.item()
    return step


def larq_stepper(model_name, batches, threads):
    """Larq on TensorFlow (``bitnet.bench.larq_models``): the twin compiled as a Keras user does
    (``model.compile``: Adam with PyTorch's and bitnet's epsilon 1e-8, cross-entropy on logits) and
    trained by ``train_on_batch``, the compiled step that ``model.fit`` runs; channels-last batches."""
    from bitnet import models
    from bitnet.bench import larq_models
    from bitnet.bench.worker import SHAPES
    larq_models.set_threads(threads)
    tf = larq_models._tf()
    model = larq_models.larq_twin(models.get(model_name, seed=0), SHAPES[model_name])
    model.compile(optimizer=tf.keras.optimizers.Adam(learning_rate=1e-3, epsilon=1e-8),
                  loss=tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    nhwc = [(larq_models.to_nhwc(x), y) for x, y in batches]

    def step(i):
        x, y = nhwc[i % len(nhwc)]
        return float(model.train_on_batch(x, y))
    return step


STEPPERS = {"bitnet": bitnet_stepper, "torch": torch_stepper, "larq": larq_stepper}


def make_stepper(framework, model_name, batches, threads):
    if model_name not in MODELS:
        raise ValueError(f"unknown model {model_name!r}; choose from {', '.join(MODELS)}")
    return STEPPERS[framework](model_name, batches, threads)
