"""Non-contiguous inputs (transposed, sliced, Fortran-ordered arrays) give the same bits as contiguous ones.

Kernels that read and write flat views (``a.reshape(-1)``) silently work on a copy when the array is
not C-contiguous: the result is never written back. Every op and optimizer below is run twice, on a
C-contiguous array and on the same values laid out otherwise, and the results must be identical
(the same kernel on the same values: exact equality), and the gradients match a NumPy formula.
"""
import numpy as np
import pytest

import bitnet
import bitnet.functional as F
from bitnet import Parameter, Tensor
from bitnet.optim import SGD, Adam, AdamW, Bop


def _layouts(a):
    """The same values as ``a`` in non-contiguous layouts: transposed back, sliced, Fortran order."""
    rev = tuple(range(a.ndim))[::-1]
    wide = np.zeros(a.shape[:-1] + (2 * a.shape[-1],), a.dtype)
    wide[..., ::2] = a
    return {"transposed": np.ascontiguousarray(a.transpose(rev)).transpose(rev),
            "strided": wide[..., ::2],
            "fortran": np.asfortranarray(a)}


def _forward_backward(fn, x, seed=1):
    t = Tensor(x, requires_grad=True)
    y = fn(t)
    g = np.random.default_rng(seed).standard_normal(y.shape).astype(y.dtype)
    y.backward(g)
    return y.data, t.grad, g


@pytest.mark.parametrize("shape", [(3, 4), (600, 500)], ids=["small", "threaded"])  # 3e5 > 2^18: threaded ufunc
@pytest.mark.parametrize("name", ["tanh", "sigmoid"])
def test_tanh_sigmoid_backward_on_transposed_input(name, shape):
    """The reported case: F.tanh(x.T).sum().backward() gave gradients of order 1e16."""
    a = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    x = Tensor(a, requires_grad=True)
    getattr(F, name)(x.T).sum().backward()
    y = np.tanh(a) if name == "tanh" else 1 / (1 + np.exp(-a.astype(np.float64)))
    ref = 1 - y ** 2 if name == "tanh" else y * (1 - y)
    np.testing.assert_allclose(x.grad, ref, rtol=0, atol=4e-7)  # float32: |error| <= a few ulp of 1
    ref_y, ref_g, _ = _forward_backward(getattr(F, name), np.ascontiguousarray(a.T))
    for layout, arr in _layouts(np.ascontiguousarray(a.T)).items():
        got_y, got_g, _ = _forward_backward(getattr(F, name), arr)
        np.testing.assert_array_equal(got_y, ref_y, err_msg=layout)
        np.testing.assert_array_equal(got_g, ref_g, err_msg=layout)


OPS = {
    "relu": F.relu,
    "exp": F.exp,
    "hardtanh": F.hardtanh,
    "max_pool2d": lambda t: F.max_pool2d(t, 2),
    "max_pool2d_3x3s2p1": lambda t: F.max_pool2d(t, 3, 2, 1),
    "avg_pool2d": lambda t: F.avg_pool2d(t, 2),
    "avg_pool2d_3x3s1p1": lambda t: F.avg_pool2d(t, 3, 1, 1),
    "softmax": lambda t: F.softmax(t, -1),
}


@pytest.mark.parametrize("name", sorted(OPS))
def test_elementwise_pooling_reductions(name):
    a = np.random.default_rng(2).standard_normal((2, 3, 6, 6)).astype(np.float32)
    ref_y, ref_g, _ = _forward_backward(OPS[name], a)
    for layout, arr in _layouts(a).items():
        got_y, got_g, _ = _forward_backward(OPS[name], arr)
        np.testing.assert_array_equal(got_y, ref_y, err_msg=layout)
        np.testing.assert_array_equal(got_g, ref_g, err_msg=layout)


@pytest.mark.parametrize("channels", [1, 16], ids=["column-layout", "rows-layout"])
def test_conv2d_input_weight_and_gradient(channels):
    rng = np.random.default_rng(3)
    a = rng.standard_normal((2, channels, 7, 6)).astype(np.float32)
    w = rng.standard_normal((4, channels, 3, 3)).astype(np.float32)
    b = rng.standard_normal(4).astype(np.float32)

    def run(x_arr, w_arr):
        x, wt, bt = Tensor(x_arr, requires_grad=True), Tensor(w_arr, requires_grad=True), Tensor(b, requires_grad=True)
        y = F.conv2d(x, wt, bt, padding=1)
        y.backward(np.random.default_rng(4).standard_normal(y.shape).astype(np.float32))
        return y.data, x.grad, wt.grad, bt.grad

    ref = run(a, w)
    for layout, arr in _layouts(a).items():
        for wl, warr in _layouts(w).items():
            for got, want in zip(run(arr, warr), ref):
                np.testing.assert_array_equal(got, want, err_msg=f"x {layout}, w {wl}")


@pytest.mark.parametrize("shape", [(8, 5), (4, 3, 5, 5)], ids=["NC", "NCHW"])
@pytest.mark.parametrize("training", [True, False])
def test_batch_norm(shape, training):
    a = np.random.default_rng(5).standard_normal(shape).astype(np.float32)
    c = shape[1]

    def run(x_arr):
        bn = bitnet.nn.BatchNorm2d(c) if len(shape) == 4 else bitnet.nn.BatchNorm1d(c)
        bn.running_mean[:] = 0.25
        bn.running_var[:] = 1.5
        bn.train(training)
        x = Tensor(x_arr, requires_grad=True)
        y = bn(x)
        y.backward(np.random.default_rng(6).standard_normal(y.shape).astype(np.float32))
        return y.data, x.grad, bn.weight.grad, bn.bias.grad, bn.running_mean.copy(), bn.running_var.copy()

    ref = run(a)
    for layout, arr in _layouts(a).items():
        for got, want in zip(run(arr), ref):
            np.testing.assert_array_equal(got, want, err_msg=layout)


OPTIMIZERS = {
    "sgd": lambda ps: SGD(ps, lr=0.1, momentum=0.9, weight_decay=0.01),
    "adam": lambda ps: Adam(ps, lr=0.01, weight_decay=0.01),
    "adam_amsgrad": lambda ps: Adam(ps, lr=0.01, amsgrad=True),
    "adamw": lambda ps: AdamW(ps, lr=0.01),
    "bop": lambda ps: Bop(ps, threshold=1e-3, gamma=0.5),
}


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_optimizer_updates_non_contiguous_parameters(name):
    """Fused optimizer kernels work on flat views: a non-contiguous parameter (and gradient) must be
    updated in place exactly as a contiguous one."""
    rng = np.random.default_rng(7)
    p0 = rng.standard_normal((6, 5)).astype(np.float32)
    grads = [rng.standard_normal((6, 5)).astype(np.float32) for _ in range(3)]

    def run(p_arr, layout_of_grad):
        p = Parameter(p_arr)
        assert p.data is p_arr or np.shares_memory(p.data, p_arr)
        opt = OPTIMIZERS[name]([p])
        for g in grads:
            p.grad = layout_of_grad(g)
            opt.step()
        return np.array(p.data)

    ref = run(p0.copy(), lambda g: g)
    for layout in ("transposed", "strided", "fortran"):
        arr = _layouts(p0)[layout]
        got = run(arr, lambda g: _layouts(g)[layout])
        np.testing.assert_array_equal(got, ref, err_msg=layout)
        np.testing.assert_array_equal(arr, ref, err_msg=f"{layout}: the parameter's own array was not updated")
