"""Empty arrays (a batch of 0 samples, e.g. the last slice of a split) go through forward and
backward with empty results, not errors: the parallel runtime once divided by the thread count it
picked for 0 items (``kernels.threads.parallel``)."""
import contextlib

import numpy as np
import pytest

import bitnet.functional as F
from bitnet import Tensor, nn
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


# -- layers whose shape arithmetic once resolved -1 against a batch of 0 ---------------------------

@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_channels_last_conv_on_empty_batch(dtype):
    """A float convolution with >= ROWS_MIN_CHANNELS channels lowers channels-last: its reshape of an
    empty batch to (0, C, -1) once failed ("cannot reshape array of size 0")."""
    from bitnet.ops.conv import ROWS_MIN_CHANNELS
    layer = nn.Conv2d(ROWS_MIN_CHANNELS, 8, 3, padding=1)
    x = Tensor(np.zeros((0, ROWS_MIN_CHANNELS, 6, 6), dtype), requires_grad=True)
    y = layer(x)
    assert y.shape == (0, 8, 6, 6) and y.dtype == dtype
    y.sum().backward()
    assert x.grad.shape == x.shape
    np.testing.assert_array_equal(layer.weight.grad, 0)
    np.testing.assert_array_equal(layer.bias.grad, 0)


@pytest.mark.parametrize("train", [False, True])
def test_binary_dense_on_empty_batch(train):
    """A binary QDense multiplies on bits through xnor_gemm, which once read 0 rows as a 1 x 0 image
    too small for its kernel."""
    layer = nn.QDense(100, 4, act_bit=1, weight_bit=1).train(train)
    x = Tensor(np.zeros((0, 100), np.float32), requires_grad=True)
    y = layer(x)
    assert y.shape == (0, 4) and y.dtype == np.float32
    y.sum().backward()
    assert x.grad.shape == x.shape
    np.testing.assert_array_equal(layer.weight.grad, 0)


def test_xnor_gemm_with_no_rows_of_b():
    from bitnet.kernels.xnor_conv import xnor_gemm
    a = np.full((5, 2), 0x0123456789ABCDEF, np.uint64)
    dots = xnor_gemm(a, np.zeros((0, 2), np.uint64), 100)
    assert dots.shape == (5, 0) and dots.dtype == np.int32


@pytest.mark.parametrize("name", ["lenet-binary", "resnet18-binary", "resnet18"])
@pytest.mark.parametrize("device", ["cpu", "cuda"])
def test_zoo_models_in_eval_mode_map_an_empty_batch_to_no_rows(name, device):
    """An evaluation over a split whose last slice is empty: (0, classes) out, on the CPU and on the
    GPU engine ("cuda" runs on the NumPy emulation where there is no GPU, tests/gpu_training)."""
    from bitnet import models
    import bitnet.gpu.arrays as arrays
    size = 28 if "lenet" in name else 32
    with (arrays.emulate() if device == "cuda" else contextlib.nullcontext()):
        model = models.get(name).to(device).eval()
        channels = next(m.in_channels for m in model.modules() if hasattr(m, "in_channels"))
        y = model(Tensor(np.zeros((0, channels, size, size), np.float32), device=device))
        assert y.shape == (0, 10) and y.device == device
