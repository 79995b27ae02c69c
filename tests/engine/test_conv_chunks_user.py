"""A user's checks of the chunked convolution (bitnet.ops.conv_chunks) and of what came with it:
the weight moves of kernels.im2col, the parallel add / copy of
kernels.threads used by residual adds and gradient sums, and the binary conv's float epilogue.

Chunking is reached the way a user reaches it: through ``images_per_chunk`` itself (real shapes,
or a smaller ``CHUNK_BYTES`` to keep the tests fast), never by replacing the function; a spy on
``conv_chunks.backward`` only records that the chunked path ran.

Tolerances against the float64 NumPy reference: every gradient element is a sum of n products
(n <= the number of terms named below); in any summation order the float error of such a sum is at
most (n + 2) * u * sum(|terms|) (u the unit roundoff of the lowest precision involved: one rounding
per product and per addition, plus one for a final cast), and sum(|terms|) is the reference
computed on |x|, |w|, |g|. Where every product and partial sum is a small integer, the float result
is exact and the check is equality.
"""
from __future__ import annotations

import threading
import types
import warnings

import numba
import numpy as np
import pytest

import bitnet.functional as F
from bitnet import Tensor, nn
from bitnet.kernels import im2col as K
from bitnet.kernels import threads as TH
from bitnet.ops import conv_chunks as CC
from tests.sign_table_bounds import conv_input_grad_bound, conv_weight_grad_bound
from bitnet.ops import workspace as W
from bitnet.ops.binary import binary_conv2d
from bitnet.ops.loss import cross_entropy
from bitnet.optim import Adam

TWO_THREADS = numba.config.NUMBA_NUM_THREADS >= 2


# -- an independent float64 reference of a convolution's gradients -----------------------------------

def _out(size, k, s, p, d):
    return (size + 2 * p - d * (k - 1) - 1) // s + 1


def conv_grads_ref(x, w, g, stride=(1, 1), padding=(0, 0), dilation=(1, 1), groups=1, pad_value=0.0):
    """(dx, dw, db) in float64 of y = conv(x_pad, w) for the output gradient g; the border of x_pad
    holds ``pad_value``. Per tap (i, j): the strided view of the padded input that the tap reads."""
    x, w, g = (np.asarray(a, np.float64) for a in (x, w, g))
    n, c, h, wd = x.shape
    o, cg, kh, kw = w.shape
    (sh, sw), (ph, pw), (dh, dw) = stride, padding, dilation
    oh, ow = _out(h, kh, sh, ph, dh), _out(wd, kw, sw, pw, dw)
    assert g.shape == (n, o, oh, ow)
    xp = np.full((n, c, h + 2 * ph, wd + 2 * pw), float(pad_value))
    xp[:, :, ph:ph + h, pw:pw + wd] = x
    gxp, gw, og = np.zeros_like(xp), np.zeros_like(w), o // groups
    for gi in range(groups):
        cs, os_ = slice(gi * cg, (gi + 1) * cg), slice(gi * og, (gi + 1) * og)
        for i in range(kh):
            for j in range(kw):
                view = (slice(None), cs, slice(i * dh, i * dh + sh * (oh - 1) + 1, sh),
                        slice(j * dw, j * dw + sw * (ow - 1) + 1, sw))
                gw[os_, :, i, j] = np.einsum("nohw,nchw->oc", g[:, os_], xp[view])
                gxp[view] += np.einsum("nohw,oc->nchw", g[:, os_], w[os_, :, i, j])
    return gxp[:, :, ph:ph + h, pw:pw + wd], gw, g.sum(axis=(0, 2, 3))


def assert_within_rounding(got, x, w, g, dtypes, **geom):
    """got = (dx, dw, db) within (n + 2) u sum|terms| of the float64 reference (module docstring)."""
    ref = conv_grads_ref(x, w, g, **geom)
    absref = conv_grads_ref(np.abs(np.asarray(x, np.float64)), np.abs(np.asarray(w, np.float64)),
                            np.abs(np.asarray(g, np.float64)), **geom)
    n_img, n_out, oh, ow = np.shape(g)
    kh, kw = np.shape(w)[2:]
    n_terms = max(n_img * oh * ow, n_out * kh * kw)
    u = max(np.finfo(d).eps / 2 for d in dtypes)
    for name, a, r, ar in zip(("dx", "dw", "db"), got, ref, absref):
        if a is None:
            continue
        assert a.shape == r.shape, name
        bound = (n_terms + 2) * u * ar + 1e-30
        err = np.abs(np.asarray(a, np.float64) - r)
        assert np.all(err <= bound), f"{name}: max error {err.max()} above bound at {np.argmax(err - bound)}"


@pytest.fixture
def threads():
    """``threads(n)`` sets bitnet's thread count for the test; restored after."""
    before = numba.get_num_threads()
    yield lambda n: numba.set_num_threads(min(n, numba.config.NUMBA_NUM_THREADS))
    numba.set_num_threads(before)


def _grads(x, w, b, g, conv=F.conv2d, x_grad=True, w_grad=True, b_grad=True, **kw):
    xt = x if isinstance(x, Tensor) else Tensor(x, requires_grad=x_grad)
    wt = Tensor(w, requires_grad=w_grad)
    bt = None if b is None else Tensor(b, requires_grad=b_grad)
    y = conv(xt, wt, bt, **kw)
    y.backward(g)
    return (xt.grad, wt.grad, None if bt is None else bt.grad), y


# -- natural chunking against the float64 reference ---------------------------------------------------

@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_resnet_stage_one_shape_chunks_by_itself_and_matches_the_reference(dtype, chunk_calls):
    """batch 64, 64 channels, 32x32, 3x3, padding 1: the default CHUNK_BYTES chooses chunks."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((64, 64, 32, 32)).astype(dtype)
    w = (0.1 * rng.standard_normal((64, 64, 3, 3))).astype(dtype)
    b = rng.standard_normal(64).astype(dtype)
    g = rng.standard_normal((64, 64, 32, 32)).astype(dtype)
    got, y = _grads(x, w, b, g, padding=1)
    assert chunk_calls and chunk_calls[0] is not None
    assert all(a.dtype == dtype for a in got)
    assert_within_rounding(got, x, w, g, [dtype], padding=(1, 1))


GEOMS = [  # (N, C, H, W, O, (KH, KW), stride, padding, dilation, groups)
    (9, 16, 8, 8, 8, (3, 3), (1, 1), (1, 1), (1, 1), 1),
    (9, 32, 9, 7, 8, (3, 3), (2, 2), (1, 1), (1, 1), 2),        # groups 2, stride 2, odd sizes
    (11, 64, 6, 6, 64, (3, 3), (1, 1), (1, 1), (1, 1), 4),      # groups 4
    (7, 16, 9, 9, 6, (2, 3), (1, 1), (4, 5), (2, 1), 1),        # asymmetric kernel, padding > kernel
    (10, 16, 10, 10, 16, (3, 3), (2, 1), (2, 2), (2, 2), 1),    # dilation 2, mixed stride
    (13, 16, 12, 12, 4, (1, 1), (1, 1), (0, 0), (1, 1), 1),     # 1x1
]


def _geom_kwargs(geom):
    _, _, _, _, _, _, s, p, d, g = geom
    return dict(stride=s, padding=p, dilation=d, groups=g)


def _ref_kwargs(geom):
    _, _, _, _, _, _, s, p, d, g = geom
    return dict(stride=s, padding=p, dilation=d, groups=g)


@pytest.mark.parametrize("geom", GEOMS, ids=str)
@pytest.mark.parametrize("dtypes", [(np.float32, np.float32), (np.float64, np.float64),
                                    (np.float32, np.float64), (np.float64, np.float32)], ids=str)
def test_chunked_backward_matches_the_reference_for_many_geometries_and_dtypes(geom, dtypes, chunk_calls,
                                                                              monkeypatch):
    n, c, h, wd, o, k, s, p, d, gr = geom
    oh, ow = _out(h, k[0], s[0], p[0], d[0]), _out(wd, k[1], s[1], p[1], d[1])
    # two float32 images a chunk (one float64): odd batches end on a shorter chunk
    monkeypatch.setattr(CC, "CHUNK_BYTES", 2 * oh * ow * c * k[0] * k[1] * 4)
    monkeypatch.setattr(CC, "MIN_CHUNKS", 1)  # chunk even these small batches
    rng = np.random.default_rng(n * c)
    x = rng.standard_normal((n, c, h, wd)).astype(dtypes[0])
    w = rng.standard_normal((o, c // gr) + k).astype(dtypes[1])
    b = rng.standard_normal(o).astype(dtypes[1])
    g = rng.standard_normal((n, o, oh, ow)).astype(dtypes[0])  # the output's dtype is the input's
    got, y = _grads(x, w, b, g, **_geom_kwargs(geom))
    assert chunk_calls, "the chunked path did not run"
    assert y.dtype == dtypes[0]
    assert_within_rounding(got, x, w, g, dtypes, **_ref_kwargs(geom))


def test_integer_input_chunked_gradients_are_exact(chunk_calls, monkeypatch):
    """uint8 images (computed in float32) with integer weights and gradient: every sum exact."""
    monkeypatch.setattr(CC, "CHUNK_BYTES", 1 << 15)
    rng = np.random.default_rng(3)
    x = rng.integers(0, 4, (10, 16, 9, 9)).astype(np.uint8)
    w = rng.integers(-2, 3, (8, 16, 3, 3)).astype(np.float32)
    b = rng.integers(-2, 3, 8).astype(np.float32)
    g = rng.integers(-2, 3, (10, 8, 9, 9)).astype(np.float32)
    xt = Tensor(x)
    (gx, gw, gb), y = _grads(xt, w, b, g, padding=1)
    assert chunk_calls and gx is None
    _, rw, rb = conv_grads_ref(x, w, g, padding=(1, 1))
    np.testing.assert_array_equal(gw, rw)
    np.testing.assert_array_equal(gb, rb)


def test_noncontiguous_input_and_gradient_views(chunk_calls, monkeypatch):
    """A transposed, sliced input and a gradient that is a broadcast view / a strided slice."""
    monkeypatch.setattr(CC, "CHUNK_BYTES", 1 << 15)
    rng = np.random.default_rng(4)
    base = rng.standard_normal((10, 9, 20, 16)).astype(np.float32)
    x_view = base.transpose(0, 3, 2, 1)[:, :, ::2, :]  # (10, 16, 10, 9), not contiguous
    w = rng.standard_normal((8, 16, 3, 3)).astype(np.float32)
    xt = Tensor(x_view, requires_grad=True)
    wt = Tensor(w, requires_grad=True)
    y = F.conv2d(xt, wt, padding=1)
    y.sum().backward()  # the gradient of sum: a broadcast of ones
    assert chunk_calls
    ones = np.ones(y.shape, np.float32)
    assert_within_rounding((xt.grad, wt.grad, None), x_view, w, ones, [np.float32], padding=(1, 1))
    # a gradient that is a strided slice of a bigger array
    chunk_calls.clear()
    xt2, wt2 = Tensor(x_view, requires_grad=True), Tensor(w, requires_grad=True)
    y2 = F.conv2d(xt2, wt2, padding=1)
    big = rng.standard_normal((y2.shape[0], y2.shape[1], y2.shape[2] * 2, y2.shape[3])).astype(np.float32)
    gview = big[:, :, ::2, :]
    y2.backward(gview)
    assert chunk_calls
    assert_within_rounding((xt2.grad, wt2.grad, None), x_view, w, gview, [np.float32], padding=(1, 1))


def test_bias_only_gradient_in_chunks(chunk_calls, monkeypatch):
    monkeypatch.setattr(CC, "CHUNK_BYTES", 1 << 15)
    rng = np.random.default_rng(6)
    x = rng.integers(-3, 4, (9, 16, 8, 8)).astype(np.float32)
    w = rng.integers(-3, 4, (8, 16, 3, 3)).astype(np.float32)
    b = np.zeros(8, np.float32)
    g = rng.integers(-3, 4, (9, 8, 8, 8)).astype(np.float32)
    (gx, gw, gb), _ = _grads(x, w, b, g, x_grad=False, w_grad=False, padding=1)
    assert chunk_calls
    assert gx is None and gw is None
    np.testing.assert_array_equal(gb, g.astype(np.float64).sum(axis=(0, 2, 3)))


@pytest.mark.skipif(not TWO_THREADS, reason="needs two threads")
def test_a_batch_of_one_on_two_threads_takes_the_whole_batch_and_agrees(chunk_calls, monkeypatch, threads):
    """One image makes one chunk, fewer than the threads: never chunked; still the reference."""
    monkeypatch.setattr(CC, "CHUNK_BYTES", 1 << 12)
    threads(2)
    rng = np.random.default_rng(7)
    for groups in (1, 2):  # 16 channels a group: the rows layout, whole batch
        x = rng.standard_normal((1, 16 * groups, 12, 12)).astype(np.float32)
        w = rng.standard_normal((16, 16, 3, 3)).astype(np.float32)
        g = rng.standard_normal((1, 16, 12, 12)).astype(np.float32)
        got, _ = _grads(x, w, None, g, padding=1, groups=groups)
        assert_within_rounding(got, x, w, g, [np.float32], padding=(1, 1), groups=groups)
    assert chunk_calls == []


def test_chunked_float_conv_same_bits_at_1_and_2_threads(chunk_calls, threads, monkeypatch):
    """Natural chunk sizes (24 images, 32 channels, 32x32: 4 chunks of 7, 7, 7, 3 images; its 28 MB
    lowered matrix is below the default 4 chunks' worth, so MIN_CHUNKS is lowered to 2)."""
    monkeypatch.setattr(CC, "MIN_CHUNKS", 2)
    rng = np.random.default_rng(15)
    x = rng.standard_normal((24, 32, 32, 32)).astype(np.float32)
    w = rng.standard_normal((32, 32, 3, 3)).astype(np.float32)
    b = rng.standard_normal(32).astype(np.float32)
    g = rng.standard_normal((24, 32, 32, 32)).astype(np.float32)
    results = []
    for n in (1, 2):
        threads(n)
        got, y = _grads(x, w, b, g, padding=1)
        results.append((y.data.copy(),) + got)
    assert chunk_calls == [7, 7]
    for a, b_ in zip(*results):
        np.testing.assert_array_equal(a, b_)


# -- binary convolutions (forward on bits) ------------------------------------------------------------

def _pm1(rng, shape):
    return np.where(rng.random(shape) < 0.5, -1.0, 1.0).astype(np.float32)


@pytest.mark.parametrize("pad_value", [0.0, 1.0, -1.0])
@pytest.mark.parametrize("with_bias", [True, False])
def test_binary_conv_chunked_gradients_are_the_float_paths(pad_value, with_bias, chunk_calls, monkeypatch):
    """binary_conv2d against F.conv2d on the same +-1 values with an explicit border of pad_value:
    the bias's gradient is the same sums in the same order, so the same bits; the weight's and the
    input's come by table lookup where no border reads 0 (bitnet.ops.sign_backward), within their
    rounding bounds, and are the float path's bits where one does (the same GEMMs)."""
    monkeypatch.setattr(CC, "CHUNK_BYTES", 1 << 16)
    rng = np.random.default_rng(int(pad_value) + 5)
    n, c, h, o = 12, 32, 10, 24
    x, w = _pm1(rng, (n, c, h, h)), _pm1(rng, (o, c // 2, 3, 3))
    b = rng.standard_normal(o).astype(np.float32) if with_bias else None
    g = rng.standard_normal((n, o, 5, 5)).astype(np.float32)
    kw = dict(stride=(2, 2), padding=(1, 1), dilation=(1, 1), groups=2)
    (bx, bw, bb), yb = _grads(x, w, b, g, conv=binary_conv2d, pad_value=pad_value, **kw)
    assert chunk_calls
    if pad_value == 0:
        (fx, fw, fb), yf = _grads(x, w, b, g, **kw)
    else:
        xt = Tensor(x, requires_grad=True)
        xp = F.pad(xt, ((1, 1), (1, 1)), value=pad_value)
        (_, fw, fb), yf = _grads(xp, w, b, g, stride=2, padding=0, groups=2)
        fx = xt.grad
    np.testing.assert_array_equal(yb.data, yf.data)
    if pad_value == 0:
        np.testing.assert_array_equal(bx, fx)
    else:
        bound = conv_input_grad_bound(g, w.shape, x.shape, (2, 2), (1, 1), (1, 1), 2)
        assert np.all(np.abs(bx.astype(np.float64) - fx) <= bound)
    if with_bias:
        np.testing.assert_array_equal(bb, fb)
    else:
        assert bb is None and fb is None
    if pad_value == 0:
        np.testing.assert_array_equal(bw, fw)
    else:
        assert np.all(np.abs(bw.astype(np.float64) - fw) <= conv_weight_grad_bound(g, 2, w[0].size))


@pytest.mark.parametrize("geom", [
    (2, 3, 7, 6, 5, (3, 3), (1, 1), (1, 1), (1, 1), 1),
    (3, 66, 5, 5, 9, (3, 3), (2, 1), (2, 1), (1, 2), 3),     # 3 filters a group: padding lanes
    (1, 130, 6, 4, 70, (3, 2), (1, 1), (3, 3), (1, 1), 2),
    (2, 64, 8, 8, 64, (3, 3), (1, 1), (1, 1), (1, 1), 64),   # depthwise
    (0, 16, 5, 5, 8, (3, 3), (1, 1), (1, 1), (1, 1), 1),     # empty batch
], ids=str)
@pytest.mark.parametrize("pad_value", [0.0, 1.0, -1.0])
@pytest.mark.parametrize("with_bias", [True, False])
def test_binary_conv_float32_forward_is_the_exact_float_result(geom, pad_value, with_bias):
    """The float epilogue (scale 1, shift = bias) gives float32(dot) + bias exactly."""
    n, c, h, wd, o, k, s, p, d, gr = geom
    rng = np.random.default_rng(c + o)
    x, w = _pm1(rng, (n, c, h, wd)), _pm1(rng, (o, c // gr) + k)
    b = rng.standard_normal(o).astype(np.float32) if with_bias else None
    y = binary_conv2d(Tensor(x), Tensor(w), None if b is None else Tensor(b), stride=s, padding=p, dilation=d,
                      groups=gr, pad_value=pad_value)
    xp = np.pad(x.astype(np.float64), ((0, 0), (0, 0), (p[0], p[0]), (p[1], p[1])), constant_values=pad_value)
    oh, ow = _out(h, k[0], s[0], p[0], d[0]), _out(wd, k[1], s[1], p[1], d[1])
    ref = np.zeros((n, o, oh, ow), np.float64)
    og, cg = o // gr, c // gr
    for gi in range(gr):
        for i in range(k[0]):
            for j in range(k[1]):
                patch = xp[:, gi * cg:(gi + 1) * cg, i * d[0]: i * d[0] + s[0] * (oh - 1) + 1: s[0],
                           j * d[1]: j * d[1] + s[1] * (ow - 1) + 1: s[1]]
                ref[:, gi * og:(gi + 1) * og] += np.einsum("nchw,oc->nohw", patch,
                                                           w[gi * og:(gi + 1) * og, :, i, j].astype(np.float64))
    ref = ref.astype(np.float32)  # integers: exact
    if b is not None:
        ref = ref + b[None, :, None, None]  # float32 + float32, as the float path
    assert y.dtype == np.float32 and y.shape == ref.shape
    np.testing.assert_array_equal(y.data, ref)


def _qmodel(pad_value, bias, seed=0):
    rng = np.random.default_rng(seed)
    q = dict(input_quantizer="ste_sign", kernel_quantizer="ste_sign", pad_value=pad_value, bias=bias, rng=rng)
    return nn.Sequential(
        nn.Conv2d(3, 32, 3, padding=1, rng=rng), nn.BatchNorm2d(32),
        nn.QConv2d(32, 32, 3, padding=1, **q), nn.BatchNorm2d(32),
        nn.QConv2d(32, 32, 3, stride=2, padding=2, dilation=2, groups=2, **q), nn.BatchNorm2d(32),
        nn.GlobalAvgPool2d(), nn.Dense(32, 10, rng=rng))


def _train(model, steps=3, seed=5, dtype=np.float32):
    opt = Adam(model.parameters(), lr=1e-2)
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((48, 3, 24, 24)).astype(dtype)
    t = rng.integers(0, 10, 48)
    losses = []
    for _ in range(steps):
        opt.zero_grad()
        loss = cross_entropy(model(Tensor(x)), Tensor(t))
        loss.backward()
        opt.step()
        losses.append(float(loss.data))
    return losses, [p.data.copy() for p in model.parameters()]


@pytest.mark.parametrize("pad_value", [0.0, 1.0, -1.0])
@pytest.mark.parametrize("bias", [True, False])
def test_qconv_training_same_bits_at_1_and_2_threads_and_on_the_float_path(pad_value, bias, chunk_calls, threads,
                                                                           monkeypatch):
    """48 images, 32 channels, 24x24: the first QConv2d chunks with the default CHUNK_BYTES (its
    31.8 MB lowered matrix just below the default 4 chunks' worth: MIN_CHUNKS lowered to 2)."""
    monkeypatch.setattr(CC, "MIN_CHUNKS", 2)
    threads(1)
    l1, p1 = _train(_qmodel(pad_value, bias))
    assert chunk_calls, "no chunked backward ran"
    threads(2)
    l2, p2 = _train(_qmodel(pad_value, bias))
    float_model = _qmodel(pad_value, bias)
    for m in float_model.modules():
        if hasattr(m, "forward_on_bits"):
            m.forward_on_bits = False
    lf, pf = _train(float_model)
    assert l1 == l2
    for a, b_ in zip(p1, p2):
        np.testing.assert_array_equal(a, b_)
    if pad_value == 0:  # every binary conv's weight gradient from a GEMM: the float path's bits
        assert l1 == lf
        for a, c in zip(p1, pf):
            np.testing.assert_array_equal(a, c)
    else:  # by table lookup: a weight gradient within rounding of the float path's (tests/sign_table_bounds.py)
        assert l1[0] == lf[0]
        np.testing.assert_allclose(l1, lf, rtol=1e-4)


# -- graphs, threads, errors -----------------------------------------------------------------------------

@pytest.mark.parametrize("conv", ["float", "binary"])
def test_retained_graph_second_backward_accumulates_the_same_gradients(conv, chunk_calls, monkeypatch):
    monkeypatch.setattr(CC, "CHUNK_BYTES", 1 << 15)
    rng = np.random.default_rng(8)
    x, w = _pm1(rng, (10, 16, 8, 8)), _pm1(rng, (8, 16, 3, 3))
    g = rng.standard_normal((10, 8, 8, 8)).astype(np.float32)
    xt, wt = Tensor(x, requires_grad=True), Tensor(w, requires_grad=True)
    y = (F.conv2d(xt, wt, padding=1) if conv == "float" else binary_conv2d(xt, wt, padding=(1, 1), pad_value=-1.0))
    y.backward(g, retain_graph=True)
    first = xt.grad.copy(), wt.grad.copy()
    y.backward(g)
    assert len(chunk_calls) == 2
    np.testing.assert_array_equal(xt.grad, first[0] + first[0])  # a + a is exact
    np.testing.assert_array_equal(wt.grad, first[1] + first[1])


def test_backward_in_another_thread_gives_the_main_threads_bits(chunk_calls, monkeypatch):
    monkeypatch.setattr(CC, "CHUNK_BYTES", 1 << 15)
    rng = np.random.default_rng(9)
    x = rng.standard_normal((12, 16, 9, 9)).astype(np.float32)
    w = rng.standard_normal((8, 16, 3, 3)).astype(np.float32)
    g = rng.standard_normal((12, 8, 9, 9)).astype(np.float32)
    main, _ = _grads(x, w, None, g, padding=1)
    box = {}

    def other():
        try:
            box["grads"] = _grads(x, w, None, g, padding=1)[0]
        except BaseException as e:  # pragma: no cover - reported below
            box["error"] = e
    t = threading.Thread(target=other)
    t.start()
    t.join(120)
    assert "error" not in box, box.get("error")
    assert len(chunk_calls) == 2
    for a, b_ in zip(main[:2], box["grads"][:2]):
        np.testing.assert_array_equal(a, b_)


def test_two_models_trained_concurrently_match_sequential_training(chunk_calls, monkeypatch):
    monkeypatch.setattr(CC, "MIN_CHUNKS", 2)  # the QConv2d's 31.8 MB lowered matrix chunks
    seq = {}
    seq[1] = _train(_qmodel(1.0, True, seed=1), steps=2, seed=11)
    seq[2] = _train(_qmodel(-1.0, False, seed=2), steps=2, seed=12)
    con, errors = {}, []

    def job(k, pv, bias):
        try:
            con[k] = _train(_qmodel(pv, bias, seed=k), steps=2, seed=10 + k)
        except BaseException as e:  # pragma: no cover - reported below
            errors.append(e)
    ts = [threading.Thread(target=job, args=(1, 1.0, True)), threading.Thread(target=job, args=(2, -1.0, False))]
    for t in ts:
        t.start()
    for t in ts:
        t.join(300)
    assert not errors, errors
    assert chunk_calls
    for k in (1, 2):
        assert seq[k][0] == con[k][0]
        for a, b_ in zip(seq[k][1], con[k][1]):
            np.testing.assert_array_equal(a, b_)


def test_errors_leave_later_backward_passes_working(chunk_calls, monkeypatch, threads):
    monkeypatch.setattr(CC, "CHUNK_BYTES", 1 << 15)
    threads(2)
    rng = np.random.default_rng(10)
    x = rng.standard_normal((16, 16, 8, 8)).astype(np.float32)
    w = rng.standard_normal((8, 16, 3, 3)).astype(np.float32)
    g = rng.standard_normal((16, 8, 8, 8)).astype(np.float32)
    before, _ = _grads(x, w, None, g, padding=1)
    # a wrong-shaped gradient
    xt, wt = Tensor(x, requires_grad=True), Tensor(w, requires_grad=True)
    y = F.conv2d(xt, wt, padding=1)
    with pytest.raises(ValueError):
        y.backward(g[:, :4])
    y.backward(g)
    np.testing.assert_array_equal(xt.grad, before[0])
    # a failure inside a chunk (in whichever thread runs it)
    calls = [0]

    def failing(*args):
        calls[0] += 1
        if calls[0] == 3:
            raise MemoryError("chunk failed")
        return K.col2im_rows(*args)
    fake = types.SimpleNamespace(**{k: getattr(K, k) for k in dir(K) if not k.startswith("__")})
    fake.col2im_rows = failing
    monkeypatch.setattr(CC, "K", fake)
    with pytest.raises(MemoryError):
        _grads(x, w, None, g, padding=1)
    monkeypatch.setattr(CC, "K", K)
    after, _ = _grads(x, w, None, g, padding=1)
    for a, b_ in zip(before[:2], after[:2]):
        np.testing.assert_array_equal(a, b_)
    assert TH._blas_lock.acquire(blocking=False)  # not left held
    TH._blas_lock.release()


# -- weights to and from the rows lowering -----------------------------------------------------------

@pytest.mark.parametrize("shape", [(8, 4, 3, 3), (6, 1, 3, 3), (64, 16, 3, 3), (5, 7, 1, 1), (3, 2, 2, 5)], ids=str)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("layout", ["c", "fortran", "strided"])
def test_weights_to_rows_and_back_for_any_weight_layout(shape, dtype, layout):
    w = np.random.default_rng(sum(shape)).standard_normal(shape).astype(dtype)
    if layout == "fortran":
        w = np.asfortranarray(w)
    elif layout == "strided":
        w = np.repeat(w, 2, axis=3)[..., ::2]
    n_out = shape[0]
    want = np.ascontiguousarray(np.asarray(w).transpose(2, 3, 1, 0)).reshape(-1, n_out)
    rows = K.weights_to_rows(w, np.full((w[0].size, n_out), np.nan, dtype))
    np.testing.assert_array_equal(rows, want)
    back = K.weights_from_rows(np.asfortranarray(rows), np.full(shape, np.nan, dtype))
    np.testing.assert_array_equal(back, w)


# -- the parallel add / copy (residual adds, gradient sums) ------------------------------------------

BIG = TH.MIN_PARALLEL_WORK * 2 + 5


@pytest.mark.parametrize("case", ["f32+f32", "f32+f64", "i64+f32", "i32+i32", "bool+bool", "0d+big", "0d+0d",
                                  "broadcast", "empty", "read-only", "strided"])
def test_tensor_add_equals_numpy(case, threads):
    threads(2)
    rng = np.random.default_rng(11)
    f32 = lambda shape: rng.standard_normal(shape).astype(np.float32)  # noqa: E731
    a, b = {
        "f32+f32": lambda: (f32(BIG), f32(BIG)),
        "f32+f64": lambda: (f32(BIG), rng.standard_normal(BIG)),
        "i64+f32": lambda: (rng.integers(-5, 5, BIG), f32(BIG)),
        "i32+i32": lambda: (rng.integers(-5, 5, BIG).astype(np.int32), rng.integers(-5, 5, BIG).astype(np.int32)),
        "bool+bool": lambda: (rng.random(BIG) < 0.5, rng.random(BIG) < 0.5),
        "0d+big": lambda: (np.array(2.5, np.float32), f32(BIG)),
        "0d+0d": lambda: (np.array(1.5), np.array(2.0, np.float32)),
        "broadcast": lambda: (f32((BIG // 7, 1)), f32((1, 7))),
        "empty": lambda: (f32((0, 5)), f32((0, 5))),
        "read-only": lambda: tuple(np.broadcast_to(f32(BIG), (2, BIG)) for _ in range(2)),
        "strided": lambda: (f32(2 * BIG)[::2], f32(2 * BIG)[::2]),
    }[case]()
    y = (Tensor(a) + Tensor(b)).data
    ref = a + b
    assert y.shape == ref.shape and y.dtype == ref.dtype
    np.testing.assert_array_equal(y, ref)


def test_gradient_of_a_tensor_used_several_times_is_the_sum(threads):
    threads(2)
    rng = np.random.default_rng(12)
    x = Tensor(rng.standard_normal(BIG).astype(np.float32), requires_grad=True)
    cs = [rng.integers(-8, 9, BIG).astype(np.float32) for _ in range(3)]  # integer sums: exact in any order
    y = (x * Tensor(cs[0])).sum() + (x * Tensor(cs[1])).sum() + (x * Tensor(cs[2])).sum()
    y.backward()
    np.testing.assert_array_equal(x.grad, cs[0] + cs[1] + cs[2])
    # accumulation across passes, float64 leaf
    v = Tensor(np.zeros(BIG), requires_grad=True)
    (v * Tensor(cs[0].astype(np.float64))).sum().backward()
    (v * Tensor(cs[1].astype(np.float64))).sum().backward()
    assert v.grad.dtype == np.float64
    np.testing.assert_array_equal(v.grad, (cs[0] + cs[1]).astype(np.float64))
    # the gradient of a 0-d leaf
    s = Tensor(np.array(2.0, np.float32), requires_grad=True)
    (s * s + s).backward()
    assert s.grad.shape == () and float(s.grad) == 5.0


# -- numpy's floating-point error state (np.errstate / np.seterr) -----------------------------------
# FAILS on c165a3f: the parallel add runs slices on bitnet's helper threads, whose NumPy error state is
# NumPy's default (NumPy keeps it per thread / context), not the caller's.

@pytest.mark.skipif(not TWO_THREADS, reason="needs two threads")
def test_errstate_raise_is_honoured_by_a_large_tensor_add(threads):
    threads(2)
    a = np.zeros(1 << 20, np.float32)
    a[-1] = 3e38  # overflows in a + a, in the last slice only
    for _ in range(10):
        with np.errstate(over="raise"), pytest.raises(FloatingPointError):
            Tensor(a) + Tensor(a)


@pytest.mark.skipif(not TWO_THREADS, reason="needs two threads")
def test_errstate_ignore_is_honoured_by_a_large_tensor_add(threads):
    threads(2)
    a = np.full(1 << 20, 3e38, np.float32)  # every slice overflows
    for _ in range(10):
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # any RuntimeWarning fails the test
            with np.errstate(all="ignore"):
                y = Tensor(a) + Tensor(a)
        assert np.isinf(y.data).all()


@pytest.mark.skipif(not TWO_THREADS, reason="needs two threads")
def test_errstate_raise_is_honoured_by_gradient_accumulation(threads):
    threads(2)
    big = np.zeros(1 << 20, np.float32)
    big[-1] = 3e38
    for _ in range(5):
        x = Tensor(np.ones(1 << 20, np.float32), requires_grad=True)
        (x * Tensor(big)).sum().backward()
        with np.errstate(over="raise"), pytest.raises(FloatingPointError):
            (x * Tensor(big)).sum().backward()  # x.grad + big overflows at the last element


# -- the recycled arrays (bitnet.ops.workspace) -------------------------------------------------------
# FAILS on c165a3f: the chunks take their temporaries from the workspace pools of bitnet's helper
# threads, which workspace.clear() / workspace.limit() (the calling thread's pool) never reach.

def _pooled_bytes_per_thread():
    """{thread name: bytes its workspace pool holds} for this thread and every bitnet helper."""
    n = numba.get_num_threads()
    seen, barrier = {}, threading.Barrier(n, timeout=20)

    def worker():
        name = threading.current_thread().name
        if name in seen:
            return
        seen[name] = W.pooled_bytes()
        barrier.wait()  # every thread takes exactly one call
    TH.run(worker, n)
    return seen


@pytest.mark.skipif(not TWO_THREADS, reason="needs two threads")
def test_workspace_clear_after_a_chunked_backward_leaves_no_recycled_arrays(threads):
    threads(2)
    rng = np.random.default_rng(13)
    x = Tensor(rng.standard_normal((64, 64, 32, 32)).astype(np.float32), requires_grad=True)
    w = Tensor(rng.standard_normal((64, 64, 3, 3)).astype(np.float32), requires_grad=True)
    F.conv2d(x, w, padding=1).sum().backward()
    W.clear()
    held = _pooled_bytes_per_thread()
    assert sum(held.values()) == 0, held


@pytest.mark.skipif(not TWO_THREADS, reason="needs two threads")
def test_workspace_limit_zero_recycles_nothing_in_a_chunked_backward(threads):
    threads(2)
    W.clear()
    rng = np.random.default_rng(14)
    x = Tensor(rng.standard_normal((64, 64, 32, 32)).astype(np.float32), requires_grad=True)
    w = Tensor(rng.standard_normal((64, 64, 3, 3)).astype(np.float32), requires_grad=True)
    with W.limit(0):
        F.conv2d(x, w, padding=1).sum().backward()
        held = _pooled_bytes_per_thread()
    assert sum(held.values()) == 0, held
