"""Empty arrays (a batch of 0 samples, e.g. the last slice of a split) go through forward and
backward with empty results, not errors: the parallel runtime once divided by the thread count it
picked for 0 items (``kernels.threads.parallel``)."""
import numpy as np
import pytest

import bitnet.functional as F
from bitnet import Tensor
from bitnet.kernels.threads import parallel
from bitnet.kernels import atomics


@pytest.mark.parametrize("op", [F.tanh, F.sigmoid, F.relu, F.hardtanh, F.exp])
def test_elementwise_forward_and_backward_on_empty(op):
    x = Tensor(np.zeros((0, 3), np.float32), requires_grad=True)
    y = op(x)
    assert y.shape == (0, 3)
    y.sum().backward()
    assert x.grad.shape == (0, 3)


def test_conv_and_pooling_on_empty_batch():
    x = Tensor(np.zeros((0, 2, 8, 8), np.float32), requires_grad=True)
    w = Tensor(np.ones((4, 2, 3, 3), np.float32), requires_grad=True)
    y = F.max_pool2d(F.tanh(F.conv2d(x, w)), 2)
    assert y.shape == (0, 4, 3, 3)
    y.sum().backward()
    assert x.grad.shape == x.shape
    np.testing.assert_array_equal(w.grad, np.zeros_like(w.data))


def test_parallel_with_zero_items_runs_no_item():
    import numba

    @numba.njit(nogil=True)
    def worker(out, counter, chunk):
        while True:
            start, stop = atomics.claim(counter, chunk, out.size)
            if start >= stop:
                return
            out[start:stop] += 1

    out = np.zeros(0, np.int64)
    parallel(worker, 0, out)
    assert out.size == 0
