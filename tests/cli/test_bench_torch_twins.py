"""The PyTorch side of `bitnet bench train` trains the same network as bitnet: the hand-written sign
straight-through estimator matches bitnet's ste_sign (sign(0) = +1, gradient where |x| <= 1), and
lenet-binary's twin, started from bitnet's weights, gives bitnet's loss and gradients."""
from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import bitnet  # noqa: E402
from bitnet import Tensor  # noqa: E402
from bitnet import functional as F  # noqa: E402
from bitnet.bench import torch_binary  # noqa: E402


def test_sign_ste_matches_bitnet():
    x = np.array([-2.0, -1.0, -0.5, 0.0, 0.5, 1.0, 1.5], dtype=np.float32)
    xt = torch.tensor(x, requires_grad=True)
    y = torch_binary.sign_ste(xt)
    y.backward(torch.arange(1.0, 8.0))
    assert y.detach().numpy().tolist() == [-1, -1, -1, 1, 1, 1, 1]
    assert xt.grad.numpy().tolist() == [0, 2, 3, 4, 5, 6, 0]
    xb = Tensor(x, requires_grad=True)
    yb = bitnet.quantizers.get("ste_sign")(xb)
    yb.backward(np.arange(1.0, 8.0, dtype=np.float32))
    assert np.array_equal(yb.data, y.detach().numpy()) and np.array_equal(xb.grad, xt.grad.numpy())


def test_lenet_binary_twin_same_loss_and_gradients():
    bm = bitnet.models.get("lenet-binary", seed=0)
    # without a bias the binary convolution's outputs are exact integers in both frameworks (PyTorch
    # adds a bias inside its float accumulation, which breaks some of max-pool's ties differently)
    dict(bm.named_parameters())["5.bias"].data[:] = 0
    tm = torch_binary.lenet_binary()
    torch_binary.copy_from_bitnet(tm, bm)
    x = np.random.default_rng(0).standard_normal((8, 1, 28, 28)).astype(np.float32)
    y = np.arange(8) % 10
    lb = F.cross_entropy(bm(Tensor(x)), y)
    lb.backward()
    lt = torch.nn.functional.cross_entropy(tm(torch.from_numpy(x)), torch.from_numpy(y))
    lt.backward()
    assert float(lb.data) == pytest.approx(lt.item(), rel=1e-5)
    ours = dict(bm.named_parameters())
    for name, p in tm.named_parameters():
        g = ours[name].grad
        np.testing.assert_allclose(g, p.grad.numpy(), rtol=1e-3, atol=1e-6, err_msg=name)  # biases before a BN: ~0
    assert len(torch_binary.binary_weights(tm)) == 2  # the QConv2d and the QDense


@pytest.mark.parametrize("stem_relu", [False, True])
def test_resnet18_binary_twin_has_bitnets_parameters_and_outputs(stem_relu):
    bm = bitnet.models.get("resnet18-binary", seed=0, stem_relu=stem_relu)
    tm = torch_binary.ResNet18Binary(stem_relu=stem_relu)
    torch_binary.copy_from_bitnet(tm, bm)
    assert len(torch_binary.binary_weights(tm)) == 16
    assert [type(m).__name__ for m in tm.stem] == [type(m).__name__ for m in bm.stem]
    if stem_relu:  # behind a ReLU, stage 1 makes exact zeros, whose signs float rounding decides
        return
    x = np.random.default_rng(1).standard_normal((2, 3, 32, 32)).astype(np.float32)
    bm.eval(), tm.eval()
    with torch.no_grad():
        theirs = tm(torch.from_numpy(x)).numpy()
    # the float layers sum in another order in each framework; a binary layer's input within float
    # rounding of 0 may then take the other sign: one bit of a dot, a small change of the logits
    np.testing.assert_allclose(bm(Tensor(x)).data, theirs, rtol=1e-2, atol=1e-2)
