"""Float GEMM on NumPy's BLAS, run single-threaded and split across bitnet's own threads.

``matmul(a, b, out=None)`` computes ``out = a @ b`` for 2-D float arrays. Every output element
comes from one single-threaded BLAS call over the full K. Results are deterministic for a given
thread count; across thread counts, and against ``np.matmul``, they may differ in the last bits
because OpenBLAS picks its code path by block shape. (Products of +-1 values, as in binary layers,
are exact whatever the order while sums stay below 2^24.) Why BLAS runs single-threaded: see
``bitnet.kernels.threads``.
"""
from __future__ import annotations

import numpy as np

from bitnet.kernels.threads import num_threads, run_parallel, single_threaded_blas

_MIN_WORK = 1 << 22  # m*n*k below which one thread is faster than the hand-off (~20 us)
# m*n*k below which OpenBLAS itself uses one thread (its interface/gemm.c: 65536 * GEMM_MULTITHREAD_THRESHOLD,
# 4 by default): no need to set its thread count (a few microseconds a call)
_BLAS_SERIAL = 1 << 16
MIN_BLOCK = 32       # rows / columns of a block at least


def _blocks(n, parts):
    step = -(-n // parts)
    return [slice(i, min(n, i + step)) for i in range(0, n, step)]


def matmul(a: np.ndarray, b: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """out = a @ b for 2-D arrays; see the module docstring."""
    m, k = a.shape
    n = b.shape[1]
    if out is None:
        out = np.empty((m, n), dtype=np.result_type(a, b))
    # Small products run single-threaded too: a multi-threaded call would wake OpenBLAS's pool,
    # which would then spin through the next Numba kernels.
    if m * n * k < _BLAS_SERIAL:  # OpenBLAS runs these on one thread anyway
        return np.matmul(a, b, out=out)
    # two blocks a thread: a thread that runs takes the block of one that does not (kernels.threads);
    # but blocks of at least MIN_BLOCK rows / columns: every block packs the whole other operand, and
    # thin blocks run BLAS's slow edge code (LeNet conv1's dW, (64, 73728) @ (73728, 25) on 2
    # threads: 3.9 ms in 2 blocks of 32 rows, 8.4 ms in 4 of 16, 5.6 ms on one thread)
    parts = 2 * num_threads() if m * n * k >= _MIN_WORK else 1
    parts = max(1, min(parts, max(n, m) // MIN_BLOCK))
    if parts == 1:
        with single_threaded_blas():
            return np.matmul(a, b, out=out)
    if n >= m:  # column blocks: out[:, j] = a @ b[:, j]
        jobs = [(a, b[:, s], out[:, s]) for s in _blocks(n, parts)]
    else:       # row blocks: out[i] = a[i] @ b
        jobs = [(a[s], b, out[s]) for s in _blocks(m, parts)]
    with single_threaded_blas():
        run_parallel(lambda x, y, o: np.matmul(x, y, out=o), jobs)
    return out


IMAGES_PER_TASK = 4  # images a task of ``matmul_each`` / ``matmul_sum`` takes (a LeNet conv1 image's output: 147 KB)


def _image_blocks(n):
    return [slice(i, min(n, i + IMAGES_PER_TASK)) for i in range(0, n, IMAGES_PER_TASK)]


def matmul_each(a: np.ndarray, b: np.ndarray, out: np.ndarray, bias: np.ndarray | None = None) -> np.ndarray:
    """out[n] = a @ b[n] (+ bias[:, None]) for every n: a (M, K), b (N, K, P), out (N, M, P), each
    matrix with a unit stride on its last axis (a view into a larger array is fine: BLAS reads
    ``b[n]`` with its own row stride). One single-threaded BLAS call per block of
    ``IMAGES_PER_TASK`` images, the blocks split across bitnet's threads; the bias is added to a
    block right after its product, while it is in cache.

    Why: the column layout's convolution (``bitnet.ops.conv``) wrote y = W @ cols as one (O, N*P)
    product and then moved it to NCHW; a product per image writes NCHW directly, and its output
    (O x P) stays in cache (LeNet's first layer, (64 x 25) @ (25 x 576) per image, 128 images, one
    thread: 4.2 ms against 6.9 ms for the one product and the move)."""
    def task(s):
        np.matmul(a, b[s], out=out[s])
        if bias is not None:
            out[s] += bias[:, None]
    with single_threaded_blas():
        run_parallel(task, [(s,) for s in _image_blocks(b.shape[0])])
    return out


def matmul_sum(a: np.ndarray, b: np.ndarray, out: np.ndarray) -> np.ndarray:
    """out = sum_n a[n] @ b[n]: a (N, M, P), b (N, P, K) (views with a unit stride on one axis of
    each matrix, as BLAS takes them), out (M, K). The images' products are summed in blocks of
    ``IMAGES_PER_TASK`` in image order, then the blocks' sums in block order: the same bits at
    every thread count. (A convolution's weight gradient in the column layout, sum_n G_n @ cols_n^T,
    without moving G to (O, N*P) first.)"""
    blocks = _image_blocks(a.shape[0])
    parts = np.empty((len(blocks),) + out.shape, out.dtype)

    def task(j, s):
        np.sum(np.matmul(a[s], b[s]), axis=0, out=parts[j])
    with single_threaded_blas():
        run_parallel(task, list(enumerate(blocks)))
    return np.sum(parts, axis=0, out=out)
