"""bitnet.kernels.gemm.matmul: the threaded GEMM used by conv2d and dense layers."""
from __future__ import annotations

import threading

import numba
import numpy as np
import pytest

from bitnet.kernels import gemm as G
from bitnet.kernels import threads as TH

SHAPES = [(64, 1600, 8192), (1600, 64, 2048), (257, 1001, 333), (3000, 500, 40), (3, 5, 7), (1, 1, 1)]


@pytest.fixture
def restore_threads():
    n = numba.get_num_threads()
    yield
    numba.set_num_threads(n)


@pytest.mark.parametrize("m,k,n", SHAPES)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_matches_numpy_and_is_deterministic(m, k, n, dtype, restore_threads):
    rng = np.random.default_rng(m * 7 + n)
    a, b = rng.standard_normal((m, k)).astype(dtype), rng.standard_normal((k, n)).astype(dtype)
    # float32 rounding error of a K-term sum of N(0,1) products: about sqrt(K) * 6e-8 * sqrt(K)
    # in the worst case; 1e-5 * K (float32) and 1e-13 * K (float64) bound it with margin.
    ref = a.astype(np.float64) @ b.astype(np.float64)
    tol = (1e-5 if dtype == np.float32 else 1e-13) * k
    for t in sorted({1, numba.config.NUMBA_NUM_THREADS}):
        numba.set_num_threads(t)
        out = np.full((m, n), np.nan, dtype)  # poisoned: every element must be written
        G.matmul(a, b, out=out)
        np.testing.assert_allclose(out, ref, rtol=0, atol=tol)
        np.testing.assert_array_equal(G.matmul(a, b), out)  # same thread count: same bits


def test_transposed_and_sliced_operands(restore_threads):
    rng = np.random.default_rng(1)
    a = rng.standard_normal((900, 64)).astype(np.float32)
    b = rng.standard_normal((4000, 900)).astype(np.float32)
    np.testing.assert_allclose(G.matmul(a.T, b.T), a.T @ b.T, rtol=1e-4, atol=1e-3)
    out = np.zeros((64, 8000), np.float32)
    G.matmul(a.T, b.T, out=out[:, ::2][:, :4000])  # a strided output view
    np.testing.assert_allclose(out[:, ::2], a.T @ b.T, rtol=1e-4, atol=1e-3)
    assert not out[:, 1::2].any()


def test_restores_the_blas_thread_count():
    if TH._BLAS is None:
        pytest.skip("NumPy's BLAS is not an OpenBLAS that exposes its thread count")
    _, get_threads = TH._BLAS
    before = get_threads()
    G.matmul(np.ones((512, 512), np.float32), np.ones((512, 512), np.float32))
    assert get_threads() == before


def test_concurrent_callers_get_correct_results():
    rng = np.random.default_rng(2)
    pairs = [(rng.standard_normal((300, 400)), rng.standard_normal((400, 500))) for _ in range(6)]
    results = [None] * len(pairs)

    def work(i):
        results[i] = G.matmul(*pairs[i])

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(pairs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for (a, b), r in zip(pairs, results):
        np.testing.assert_allclose(r, a @ b, rtol=1e-12, atol=1e-10)


def test_nested_run_parallel_runs_inline_instead_of_deadlocking():
    def inner(i):
        return i * 10

    def outer(i):
        return sum(TH.run_parallel(inner, [(i,), (i + 1,), (i + 2,)]))

    assert TH.run_parallel(outer, [(0,), (1,), (2,), (3,)]) == [30, 60, 90, 120]


@pytest.mark.parametrize("shape", [(0,), (7,), (3, 100001), (1 << 19,)])
def test_parallel_ufunc_equals_the_ufunc(shape):
    a = np.random.default_rng(3).standard_normal(shape).astype(np.float32)
    for uf in (np.tanh, np.exp):
        out = TH.parallel_ufunc(uf, a)
        assert out.shape == a.shape and out.dtype == a.dtype
        np.testing.assert_array_equal(out, uf(a))  # same ufunc loop on each piece: same bits


@pytest.mark.parametrize("shape", [(0,), (7,), (3, 100001), (1 << 19,)])
def test_parallel_add_and_copy_equal_numpy_and_cover_every_element(shape):
    rng = np.random.default_rng(4)
    a, b = (rng.standard_normal(shape).astype(np.float32) for _ in range(2))
    out = np.full(shape, np.nan, np.float32)
    assert TH.parallel_binary(np.add, a, b, out) is out
    np.testing.assert_array_equal(out, a + b)
    out[...] = np.nan
    assert TH.parallel_copy(out, a) is out
    np.testing.assert_array_equal(out, a)


def test_parallel_add_and_copy_take_one_call_for_broadcasts_and_strided_arrays():
    rng = np.random.default_rng(5)
    a = rng.standard_normal((600, 1000)).astype(np.float32)
    row = rng.standard_normal(1000).astype(np.float32)
    out = np.empty_like(a)
    np.testing.assert_array_equal(TH.parallel_binary(np.add, a, row, out), a + row)
    strided = np.empty((1000, 600), np.float32).T  # not C-contiguous
    np.testing.assert_array_equal(TH.parallel_binary(np.add, a, a, strided), a + a)
    np.testing.assert_array_equal(TH.parallel_copy(strided, a), a)


# matmul_each / matmul_sum: the column-layout convolution's products per image (bitnet.ops.conv)
IMAGE_SHAPES = [(9, 64, 25, 576), (5, 7, 27, 33), (1, 3, 2, 5), (0, 4, 3, 6)]  # (N, M, K, P)


@pytest.mark.parametrize("n,m,k,p", IMAGE_SHAPES)
def test_matmul_each_on_a_column_layout_view(n, m, k, p, restore_threads):
    rng = np.random.default_rng(n * 31 + p)
    a = rng.standard_normal((m, k)).astype(np.float32)
    cols = rng.standard_normal((k, n * p)).astype(np.float32)
    b = cols.reshape(k, n, p).transpose(1, 0, 2)  # image i's columns cols[:, i*p:(i+1)*p], not a copy
    bias = rng.standard_normal(m).astype(np.float32)
    ref = np.einsum("mk,nkp->nmp", a.astype(np.float64), b.astype(np.float64))
    tol = 1e-5 * k  # float32 sums of k products of N(0,1) values, as above
    for t in sorted({1, numba.config.NUMBA_NUM_THREADS}):
        numba.set_num_threads(t)
        for with_bias in (False, True):
            out = np.full((n, m, p), np.nan, np.float32)  # poisoned: every element must be written
            G.matmul_each(a, b, out, bias if with_bias else None)
            np.testing.assert_allclose(out, ref + (bias[:, None] if with_bias else 0), rtol=0, atol=tol + 1e-6)


@pytest.mark.parametrize("n,m,k,p", IMAGE_SHAPES)
def test_matmul_sum_is_the_same_bits_at_every_thread_count(n, m, k, p, restore_threads):
    rng = np.random.default_rng(n * 17 + k)
    g = rng.standard_normal((n, m, p)).astype(np.float32)
    cols = rng.standard_normal((k, n * p)).astype(np.float32)
    b = cols.reshape(k, n, p).transpose(1, 0, 2).transpose(0, 2, 1)  # (N, P, K) views of cols
    ref = np.einsum("nmp,npk->mk", g.astype(np.float64), b.astype(np.float64))
    results = []
    for t in (1, 2, 3):
        numba.set_num_threads(min(t, numba.config.NUMBA_NUM_THREADS))
        out = np.full((m, k), np.nan, np.float32)
        G.matmul_sum(g, b, out)
        np.testing.assert_allclose(out, ref, rtol=0, atol=1e-5 * n * p)
        results.append(out)
    for out in results[1:]:  # blocks of images summed in a fixed order, whoever runs them
        np.testing.assert_array_equal(out, results[0])
