"""A convolution's backward pass chunk by chunk (bitnet.ops.conv_chunks) gives the whole-batch
backward's gradients: exactly where every sum is exact (small integers), within float rounding
otherwise, the same bits at any thread count, and for the float and the binary (on bits) conv."""
from __future__ import annotations

import numba
import numpy as np
import pytest

import bitnet.functional as F
from bitnet import Tensor
from bitnet.ops import conv as C
from bitnet.ops import conv_chunks as CC
from bitnet.ops.binary import binary_conv2d

GEOMS = [  # (N, C, H, W, O, K, stride, padding, dilation, groups)
    (7, 4, 9, 7, 6, 3, 1, 1, 1, 1),    # 7 images: a last chunk shorter than the others
    (5, 4, 11, 8, 6, 3, 2, 1, 1, 2),
    (6, 3, 8, 9, 4, 2, 1, 0, 2, 1),
    (4, 4, 6, 6, 4, 3, 1, 2, 1, 4),    # depthwise
    (5, 2, 5, 5, 3, 5, 2, 2, 1, 1),    # kernel as large as the input
]


@pytest.fixture
def chunks(monkeypatch, chunk_calls):
    """``chunks(per)`` makes every rows-layout conv run its backward ``per`` images a chunk (None:
    the whole-batch form); returns the list of the chunked calls' ``per`` (``chunk_calls``)."""
    monkeypatch.setattr(C, "ROWS_MIN_CHANNELS", 1)

    def choose(per):
        monkeypatch.setattr(CC, "images_per_chunk", lambda n, row_bytes: per)
        chunk_calls.clear()
        return chunk_calls
    return choose


def _data(geom, integers):
    n, c, h, w_, o, k, s, p, d, g = geom
    rng = np.random.default_rng(sum(geom))
    if integers:  # every product and sum exact in float32: any order gives the same bits
        x, w, b = rng.integers(-3, 4, (n, c, h, w_)), rng.integers(-3, 4, (o, c // g, k, k)), rng.integers(-3, 4, o)
        return x.astype(np.float32), w.astype(np.float32), b.astype(np.float32)
    return (rng.standard_normal((n, c, h, w_)).astype(np.float32),
            rng.standard_normal((o, c // g, k, k)).astype(np.float32), rng.standard_normal(o).astype(np.float32))


def _grads(x, w, b, geom, conv=F.conv2d, gen=None, **kw):
    _, _, _, _, _, _, s, p, d, g = geom
    xt, wt, bt = (Tensor(a.copy(), requires_grad=True) for a in (x, w, b))
    y = conv(xt, wt, bt, stride=(s, s), padding=(p, p), dilation=(d, d), groups=g, **kw)
    gen = gen or (lambda shape: np.random.default_rng(1).standard_normal(shape).astype(np.float32))
    y.backward(gen(y.shape))
    return y.data, xt.grad, wt.grad, bt.grad


def _integer_grad(shape):
    return np.random.default_rng(1).integers(-4, 5, shape).astype(np.float32)


@pytest.mark.parametrize("geom", GEOMS, ids=str)
@pytest.mark.parametrize("per", [1, 2, 3])
def test_chunked_float_conv_backward_is_exact_where_the_sums_are(geom, per, chunks):
    x, w, b = _data(geom, integers=True)
    chunks(None)
    whole = _grads(x, w, b, geom, gen=_integer_grad)
    calls = chunks(per)
    parts = _grads(x, w, b, geom, gen=_integer_grad)
    assert calls == [per]
    for a, c in zip(whole, parts):
        np.testing.assert_array_equal(a, c)


@pytest.mark.parametrize("geom", GEOMS, ids=str)
def test_chunked_float_conv_backward_agrees_within_rounding(geom, chunks):
    x, w, b = _data(geom, integers=False)
    chunks(None)
    whole = _grads(x, w, b, geom)
    calls = chunks(2)
    parts = _grads(x, w, b, geom)
    assert calls == [2]
    # float32 sums of at most N*OH*OW terms of size ~1 in another order: a few ulps of the sum of |terms|
    for a, c in zip(whole, parts):
        np.testing.assert_allclose(a, c, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("geom", GEOMS, ids=str)
@pytest.mark.parametrize("pad_value", [0.0, 1.0, -1.0])
def test_chunked_binary_conv_backward_is_the_whole_batch_one(geom, pad_value, chunks):
    n, c, h, w_, o, k, s, p, d, g = geom
    rng = np.random.default_rng(sum(geom))
    x = np.where(rng.standard_normal((n, c, h, w_)) < 0, -1.0, 1.0).astype(np.float32)
    w = np.where(rng.standard_normal((o, c // g, k, k)) < 0, -1.0, 1.0).astype(np.float32)
    b = rng.integers(-3, 4, o).astype(np.float32)
    chunks(None)
    whole = _grads(x, w, b, geom, conv=binary_conv2d, gen=_integer_grad, pad_value=pad_value)
    calls = chunks(2)
    parts = _grads(x, w, b, geom, conv=binary_conv2d, gen=_integer_grad, pad_value=pad_value)
    assert calls == [2]
    for a, c_ in zip(whole, parts):
        np.testing.assert_array_equal(a, c_)


def test_chunked_gradients_are_the_same_bits_at_any_thread_count(chunks):
    geom = GEOMS[0]
    x, w, b = _data(geom, integers=False)
    chunks(1)
    before = numba.get_num_threads()
    try:
        results = []
        for threads in sorted({1, min(2, numba.config.NUMBA_NUM_THREADS), numba.config.NUMBA_NUM_THREADS}):
            numba.set_num_threads(threads)
            results.append(_grads(x, w, b, geom))
    finally:
        numba.set_num_threads(before)
    for other in results[1:]:
        for a, c in zip(results[0], other):
            np.testing.assert_array_equal(a, c)


def test_a_second_backward_of_a_retained_graph_gives_the_same_gradients(chunks):
    """Each backward lowers the saved input again: a second one sees what the first one saw."""
    geom = GEOMS[0]
    x, w, b = _data(geom, integers=False)
    chunks(2)
    _, _, _, _, _, _, s, p, d, g = geom
    xt, wt, bt = (Tensor(a.copy(), requires_grad=True) for a in (x, w, b))
    y = F.conv2d(xt, wt, bt, stride=s, padding=p, dilation=d, groups=g)
    seed = np.random.default_rng(1).standard_normal(y.shape).astype(np.float32)
    y.backward(seed, retain_graph=True)
    first = [t.grad.copy() for t in (xt, wt, bt)]
    for t in (xt, wt, bt):
        t.grad = None
    y.backward(seed)
    for a, t in zip(first, (xt, wt, bt)):
        np.testing.assert_array_equal(a, t.grad)


def test_a_chunked_float_conv_keeps_its_input_not_its_lowered_matrix(chunks):
    geom = GEOMS[0]
    x, w, b = _data(geom, integers=False)
    chunks(2)
    xt = Tensor(x, requires_grad=True)
    y = F.conv2d(xt, Tensor(w, requires_grad=True), padding=1)
    assert y._ctx.lowered is None and y._ctx.x is x
    chunks(None)
    y = F.conv2d(xt, Tensor(w, requires_grad=True), padding=1)
    assert y._ctx.lowered.shape == (7 * 9 * 7, 4 * 9)


def test_only_the_wanted_gradients_are_computed(chunks):
    geom = GEOMS[0]
    x, w, b = _data(geom, integers=True)
    chunks(2)
    _, _, _, _, _, _, s, p, d, g = geom
    xt, wt = Tensor(x), Tensor(w, requires_grad=True)
    F.conv2d(xt, wt, stride=s, padding=p, dilation=d, groups=g).sum().backward()
    assert xt.grad is None and wt.grad is not None
    xt, wt = Tensor(x, requires_grad=True), Tensor(w)
    F.conv2d(xt, wt, stride=s, padding=p, dilation=d, groups=g).sum().backward()
    assert wt.grad is None and xt.grad is not None


def test_images_per_chunk_keeps_a_chunk_near_the_target_and_every_thread_busy():
    mb = 1 << 20
    assert CC.images_per_chunk(64, 2 * mb, threads=2) == CC.CHUNK_BYTES // (2 * mb)
    assert CC.images_per_chunk(64, 64 * mb, threads=2) == 1        # an image above the target: one a chunk
    assert CC.images_per_chunk(3, 64 * mb, threads=2) == 1         # few images, each far above a cache
    assert CC.images_per_chunk(1, 64 * mb, threads=2) is None      # fewer chunks than threads
    assert CC.images_per_chunk(64, 400 * 1024, threads=2) is None  # LeNet's conv2: 26 MB stay in cache
    assert CC.images_per_chunk(128, 400 * 1024, threads=2) == 20   # at batch 128 (52 MB) it chunks
    assert CC.images_per_chunk(64, 2 * mb, threads=16) == 4        # 16 chunks for 16 threads
    assert CC.images_per_chunk(64, 2 * mb, threads=17) is None     # fewer chunks than threads


def test_resnet_stage_one_shapes_take_the_chunks_and_the_last_stage_does_not():
    """What the defaults choose for resnet18-binary at batch 64 (float32, 3x3, 64 -> 512 channels)."""
    for threads in (1, 2, 4, 5):
        per = [CC.images_per_chunk(64, hw * hw * 9 * c * 4, threads) for c, hw in ((64, 32), (128, 16), (256, 8),
                                                                                 (512, 4))]
        assert per == [3, 7, 14, None]  # the same chunks at 1 to 5 threads: the same bits
