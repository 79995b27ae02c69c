"""Run one layer on a device: forward, then backward of ``sum(out * W)`` for a fixed random W; return
the output and the gradients of the input and of every parameter, on the host. Shared by the quantized
layer tests and the simulator's check script (tests/gpu_training/binary_checks.py)."""
from __future__ import annotations

import numpy as np

import bitnet
from bitnet.gpu.arrays import is_device_array, to_host


def run_layer(make, x, device, on_bits=True, seed=0):
    """``make()`` builds the layer (the same weights at every call); on ``device`` with the forward on
    bits or not (``forward_on_bits``). Returns ``(out, {"x": grad, name: grad, ...})`` on the host."""
    layer = make()
    layer.forward_on_bits = on_bits
    if device == "cuda":
        layer.to("cuda")
    t = bitnet.Tensor(x, requires_grad=True, device=device)
    out = layer(t)
    assert out.device == device, f"the output is on {out.device}, the input on {device}"
    w = np.random.default_rng(seed).standard_normal(out.shape).astype(out.dtype)
    (out * bitnet.Tensor(w, device=device)).sum().backward()
    grads = {"x": t.grad}
    grads.update({name: p.grad for name, p in layer.named_parameters()})
    for name, g in grads.items():
        assert g is not None, f"no gradient for {name}"
        assert is_device_array(g) == (device == "cuda"), f"the gradient of {name} is on the wrong device"
    return to_host(out.data), {name: to_host(g) for name, g in grads.items()}


def assert_layers_agree(a, b, rtol, atol, exact_out=True, what="", exact_grads=False):
    """Outputs equal (``exact_out``) or close, every gradient equal (``exact_grads``) or within rtol / atol;
    same dtypes."""
    (ya, ga), (yb, gb) = a, b
    assert ya.dtype == yb.dtype, (what, ya.dtype, yb.dtype)
    if exact_out:
        np.testing.assert_array_equal(ya, yb, err_msg=f"{what}: output")
    else:
        np.testing.assert_allclose(ya, yb, rtol=rtol, atol=atol, err_msg=f"{what}: output")
    assert ga.keys() == gb.keys()
    for name in ga:
        assert ga[name].dtype == gb[name].dtype, (what, name)
        if exact_grads:
            np.testing.assert_array_equal(ga[name], gb[name], err_msg=f"{what}: gradient of {name}")
            continue
        np.testing.assert_allclose(ga[name], gb[name], rtol=rtol, atol=atol, err_msg=f"{what}: gradient of {name}")
