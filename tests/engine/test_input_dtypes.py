"""The float ops' input dtypes (``bitnet.ops.dtypes``): integer and bool inputs are computed in float32,
float32 / float64 pass through untouched, anything else is a TypeError that says what to do. Also
batch norm in eval mode on an empty batch, ``Tensor.__array__``, Tensors assigned to buffers, and the
dtype inference of ``Tensor(...)``."""
import numpy as np
import pytest

import bitnet
import bitnet.functional as F
from bitnet import Parameter, Tensor, nn
from bitnet.gpu.arrays import emulate
from bitnet.ops.dtypes import float_operand, float_operands
from bitnet.ops.norm_pool import batch_norm_max_pool
from bitnet.tensor import Function

# the tester's example: one image of 1..4, one of almost zeros
X = np.array([[[[1, 2], [4, 4]]], [[[0, 0], [0, 1]]]])
RNG = np.random.default_rng(0)
IMAGES = RNG.integers(0, 256, (3, 2, 7, 6)).astype(np.uint8)

# every float op, as a function of one input tensor (N, C, H, W) = IMAGES' shape
FLOAT_OPS = {
    "conv2d": lambda x: F.conv2d(x, Tensor(np.linspace(-1, 1, 4 * 2 * 3 * 3, dtype=np.float32).reshape(4, 2, 3, 3))),
    "conv2d_rows": lambda x: F.conv2d(x.reshape(1, 18, 2, 7), Tensor(np.ones((2, 18, 1, 3), np.float32))),  # 16+ ch
    "linear": lambda x: F.linear(x.reshape(3, 84), Tensor(np.linspace(-1, 1, 5 * 84, dtype=np.float32).reshape(5, 84))),
    "matmul": lambda x: F.matmul(x.reshape(3, 84), Tensor(np.linspace(-1, 1, 84 * 2, dtype=np.float32).reshape(84, 2))),
    "max_pool2d": lambda x: F.max_pool2d(x, 2, padding=1),
    "avg_pool2d": lambda x: F.avg_pool2d(x, 3, 2, padding=1, ceil_mode=True, count_include_pad=False),
    "batch_norm_train": lambda x: F.batch_norm(x, np.zeros(2, np.float32), np.ones(2, np.float32)),
    "batch_norm_eval": lambda x: F.batch_norm(x, np.full(2, 100, np.float32), np.full(2, 900, np.float32),
                                              training=False),
    "batch_norm_max_pool": lambda x: batch_norm_max_pool(x, None, None, act="tanh"),
    "tanh": F.tanh,
    "sigmoid": F.sigmoid,
    "exp": F.exp,
    "log": F.log,
    "log_softmax": lambda x: F.log_softmax(x, dim=1),
    "softmax": lambda x: F.softmax(x, dim=3),
    "cross_entropy": lambda x: F.cross_entropy(x.reshape(3, 84), np.array([0, 5, 83])),
    "dropout": lambda x: F.dropout(x, 0.5, rng=np.random.default_rng(1)),
}


@pytest.mark.parametrize("dtype", [np.uint8, np.int32, np.int64, np.bool_])
@pytest.mark.parametrize("name", sorted(FLOAT_OPS))
def test_integer_and_bool_inputs_compute_in_float32(name, dtype):
    """The result is float32 and bit for bit the result on ``x.astype(np.float32)`` (no truncation, no
    float64, no cast error)."""
    op = FLOAT_OPS[name]
    data = IMAGES.astype(dtype) if dtype is not np.bool_ else IMAGES > 127
    with np.errstate(divide="ignore", over="ignore"):  # log(0), exp(255)
        got = op(Tensor(data))
        want = op(Tensor(data.astype(np.float32)))
    assert got.dtype == np.float32 and want.dtype == np.float32
    np.testing.assert_array_equal(got.data, want.data)


def test_the_testers_examples_give_exact_float_results():
    avg = nn.AvgPool2d(2)(Tensor(X))
    assert avg.dtype == np.float32
    np.testing.assert_array_equal(avg.data.ravel(), np.float32([2.75, 0.25]))
    bn = nn.BatchNorm2d(1)(Tensor(X))
    assert bn.dtype == np.float32
    np.testing.assert_array_equal(bn.data, nn.BatchNorm2d(1)(Tensor(X.astype(np.float32))).data)
    # (x - mean) / sqrt(var + eps) over the 8 values: not integers (the int path gave [0 0 1 1 0 0 0 0])
    np.testing.assert_allclose(bn.data.ravel(), (X.ravel() - 1.5) / np.sqrt(X.var() + 1e-5), rtol=1e-6)
    sig = nn.Sigmoid()(Tensor(np.array([-1, 2])))
    assert sig.dtype == np.float32
    np.testing.assert_array_equal(sig.data, F.sigmoid(Tensor(np.float32([-1, 2]))).data)
    np.testing.assert_allclose(sig.data, 1 / (1 + np.exp([1.0, -2.0])), rtol=1e-7)
    assert nn.Tanh()(Tensor(np.array([-1, 2]))).dtype == np.float32  # was float64 (NumPy's promotion)
    conv = nn.Conv2d(2, 4, 3, rng=0)
    out = conv(Tensor(IMAGES[:2]))
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out.data, conv(Tensor(IMAGES[:2].astype(np.float32))).data)


@pytest.mark.parametrize("grad", [True, False])
def test_dense_on_int64_gives_float32_with_and_without_a_graph(grad):
    layer = nn.Dense(84, 5, rng=0)
    x = IMAGES.reshape(3, 84).astype(np.int64)
    if grad:
        y = layer(Tensor(x))
    else:
        with bitnet.no_grad():
            y = layer(Tensor(x))
    assert y.dtype == np.float32  # was float64
    np.testing.assert_array_equal(y.data, layer(Tensor(x.astype(np.float32))).data)


@pytest.mark.parametrize("make", [
    lambda: (nn.Conv2d(2, 3, 3, padding=1, rng=0), IMAGES),
    lambda: (nn.Sequential(nn.Flatten(), nn.Dense(84, 4, rng=1)), IMAGES),
    lambda: (nn.BatchNorm2d(2), IMAGES),
    lambda: (nn.Sequential(nn.BatchNorm2d(2), nn.Tanh(), nn.MaxPool2d(2)), IMAGES),  # the fused op
])
def test_parameter_gradients_from_integer_inputs_are_float32_and_exact(make):
    """An integer input needs no gradient itself; the parameters' gradients are those of the float32
    input, bit for bit, and float32 (not float64 from int64 @ float32)."""
    grads = []
    for data in (IMAGES.astype(np.int64), IMAGES.astype(np.float32)):
        model, _ = make()
        model(Tensor(data)).sum().backward()
        grads.append([p.grad for p in model.parameters()])
    for g_int, g_float in zip(*grads):
        assert g_int.dtype == np.float32
        np.testing.assert_array_equal(g_int, g_float)


def test_float_inputs_keep_their_gradients():
    x = Tensor(IMAGES.astype(np.float64) / 255, requires_grad=True)
    w = Tensor(np.ones((1, 2, 2, 2)), requires_grad=True)
    F.avg_pool2d(F.tanh(F.conv2d(x, w)), 2).sum().backward()
    assert x.grad.dtype == np.float64 and w.grad.dtype == np.float64 and np.abs(x.grad).sum() > 0


def test_float32_and_float64_are_passed_through_without_a_copy():
    a, b = np.ones((2, 3), np.float32), np.ones(3)
    arrays = (a, b)
    assert float_operands(arrays, "op") is arrays  # nothing rebuilt
    assert float_operand(a, "op") is a and float_operand(np.float64(1.0), "op") == 1.0
    assert float_operand(a.astype(">f4"), "op").dtype == np.dtype(">f4")  # byte order is not the dtype

    seen = []

    class Probe(Function):
        float_inputs = "probe"

        def forward(self, x, y):
            seen.extend([x, y])
            return x + y

    x, y = Tensor(a), Tensor(np.ones(3, np.float32))
    Probe.apply(x, y)
    assert seen[0] is x.data and seen[1] is y.data
    seen.clear()
    Probe.apply(Tensor(np.arange(3)), y)
    assert seen[0].dtype == np.float32 and seen[1] is y.data


@pytest.mark.parametrize("dtype", [np.float16, np.longdouble, np.complex64])
@pytest.mark.parametrize("call, name", [
    (lambda x: nn.Conv2d(2, 4, 3, rng=0)(x), "conv2d"),
    (lambda x: nn.Sequential(nn.Flatten(), nn.Dense(84, 2, rng=0))(x), "matmul"),
    (lambda x: nn.AvgPool2d(2)(x), "avg_pool2d"),
    (lambda x: nn.MaxPool2d(2)(x), "max_pool2d"),
    (lambda x: nn.BatchNorm2d(2)(x), "batch_norm"),
    (lambda x: nn.BatchNorm2d(2).eval()(x), "batch_norm"),
    (lambda x: nn.Sigmoid()(x), "sigmoid"),
    (lambda x: nn.Tanh()(x), "tanh"),
    (lambda x: F.exp(x), "exp"),
    (lambda x: F.log_softmax(x), "log_softmax"),
])
def test_unsupported_float_dtypes_raise_a_clear_type_error(call, name, dtype):
    x = Tensor(IMAGES.astype(dtype))
    with pytest.raises(TypeError) as info:
        call(x)
    msg = str(info.value)
    shape = (3, 84) if name == "matmul" else (3, 2, 7, 6)  # (after Flatten)
    assert msg.startswith(f"{name}: the input has dtype {np.dtype(dtype)} (shape {shape})")
    assert "float32 or float64 only" in msg and "x.astype(np.float32)" in msg


def test_object_and_string_inputs_raise_the_same_error():
    with pytest.raises(TypeError, match=r"tanh: the input has dtype object .* x.astype\(np.float32\)"):
        F.tanh(Tensor(np.array([1, "a"], dtype=object)))
    with pytest.raises(TypeError, match=r"matmul: operand 1 has dtype float16"):
        F.matmul(Tensor(np.ones((2, 2), np.float32)), Tensor(np.ones((2, 2), np.float16)))


def test_exact_integer_ops_keep_numpys_rules():
    i = Tensor(np.array([-2, 0, 3]))
    assert F.relu(i).dtype == np.int64 and F.relu(i).data.tolist() == [0, 0, 3]
    assert F.clip(i, -1, 1).dtype == np.int64 and (i + i).dtype == np.int64 and (i * 2).dtype == np.int64
    assert (i / 2).dtype == np.float64  # true division, as NumPy
    assert F.sum(i).dtype == np.int64


def test_the_policy_holds_on_the_gpu_path_too():
    with emulate():
        t = Tensor(np.arange(4).reshape(1, 1, 2, 2), device="cuda")
        for op in (F.tanh, F.sigmoid, lambda t: F.avg_pool2d(t, 2), lambda t: F.batch_norm(t, None, None)):
            y = op(t)
            assert y.device == "cuda" and y.dtype == np.float32
            want = op(Tensor(np.arange(4, dtype=np.float32).reshape(1, 1, 2, 2)))
            np.testing.assert_array_equal(y.cpu().data, want.data)
        with pytest.raises(TypeError, match="tanh: the input has dtype float16"):
            F.tanh(Tensor(np.ones(3, np.float16), device="cuda"))


# -- batch norm on an empty batch ---------------------------------------------------------------

@pytest.mark.parametrize("layer, shape", [(nn.BatchNorm2d(8), (0, 8, 4, 5)), (nn.BatchNorm1d(8), (0, 8)),
                                          (nn.BatchNorm1d(8), (0, 8, 3)), (nn.BatchNorm2d(8), (0, 8, 0, 2))])
def test_batch_norm_eval_on_an_empty_batch_returns_an_empty_output(layer, shape):
    layer.eval()
    x = Tensor(np.zeros(shape, np.float32), requires_grad=True)
    y = layer(x)
    assert y.shape == shape and y.dtype == np.float32
    y.sum().backward()
    assert x.grad.shape == shape
    np.testing.assert_array_equal(layer.weight.grad, np.zeros(8, np.float32))
    np.testing.assert_array_equal(layer.bias.grad, np.zeros(8, np.float32))
    np.testing.assert_array_equal(layer.running_mean, np.zeros(8, np.float32))  # untouched


def test_batch_norm_training_on_too_few_values_keeps_its_clear_error():
    for shape in [(0, 8, 4, 4), (1, 8, 1, 1), (1, 8)]:
        with pytest.raises(ValueError, match="needs more than one value per channel"):
            nn.BatchNorm2d(8)(Tensor(np.zeros(shape, np.float32))) if len(shape) == 4 else \
                nn.BatchNorm1d(8)(Tensor(np.zeros(shape, np.float32)))


# -- np.asarray(tensor), NumPy functions on tensors ------------------------------------------------

def test_asarray_of_a_tensor_is_its_data():
    t = Tensor(np.arange(6, dtype=np.float32).reshape(2, 3), requires_grad=True)
    a = np.asarray(t)
    assert a is t.data
    assert np.asarray(t, dtype=np.float32) is t.data
    c = np.array(t)  # np.array copies by default
    assert c is not t.data and np.array_equal(c, t.data)
    d = np.asarray(t, dtype=np.float64)
    assert d.dtype == np.float64 and np.array_equal(d, t.data)
    with pytest.raises(ValueError, match="a copy is needed"):
        np.asarray(t, dtype=np.float64, copy=False)
    assert np.asarray(t, copy=False) is t.data
    assert t.__array__(copy=True) is not t.data
    np.testing.assert_array_equal(np.asarray([Tensor(1.5), Tensor(2.5)]), np.float32([1.5, 2.5]))
    assert np.shape(t) == (2, 3)


def test_numpy_functions_on_tensors():
    t = Tensor(np.float32([1, 2, 6]), requires_grad=True)
    m = np.mean(t)  # NumPy calls t.mean(axis=None, dtype=None, out=None)
    assert isinstance(m, Tensor) and m.item() == 3.0 and m.requires_grad
    assert np.sum(t).item() == 9.0 and np.max(t).item() == 6.0 and np.argmax(t).item() == 2
    with pytest.raises(TypeError, match="dtype= and out= are not supported"):
        np.mean(t, dtype=np.float64)
    assert np.array_equal(np.exp(t), np.exp(t.data))  # a ufunc on a tensor: its array, no graph
    # ndarray (op) Tensor still dispatches to the Tensor's reflected operators (a graph)
    y = np.float32([1, 1, 1]) * t
    assert isinstance(y, Tensor) and y.requires_grad
    assert isinstance(np.float32(2) + t, Tensor)


def test_asarray_of_a_device_tensor_is_refused():
    with emulate():
        t = Tensor(np.ones(3, np.float32), device="cuda")
        with pytest.raises(TypeError, match=r"on cuda .*\.cpu\(\)"):
            np.asarray(t)
        assert np.array_equal(np.asarray(t.cpu()), np.ones(3))


# -- buffers ----------------------------------------------------------------------------------------

def test_assigning_a_tensor_to_a_buffer_stores_its_array(tmp_path):
    bn = nn.BatchNorm2d(3)
    t = Tensor(np.float32([1, 2, 3]))
    bn.running_mean = t
    assert type(bn.running_mean) is np.ndarray and bn.running_mean is t.data
    assert bn.state_dict()["running_mean"].dtype == np.float32
    bn.running_var = Tensor(np.float32([4, 5, 6]), requires_grad=True)
    assert type(bn.running_var) is np.ndarray and bn.running_var.dtype == np.float32
    assert [n for n, _ in bn.named_parameters()] == ["weight", "bias"]
    path = tmp_path / "bn.h5"
    bitnet.save_state_dict(bn, path)
    state = bitnet.load_state_dict(path)
    np.testing.assert_array_equal(state["running_mean"], [1, 2, 3])
    np.testing.assert_array_equal(state["running_var"], [4, 5, 6])
    bn.register_buffer("extra", Tensor(np.int64([7])))
    assert type(bn.extra) is np.ndarray and bn.extra.tolist() == [7]


def test_a_buffer_of_objects_is_refused():
    bn = nn.BatchNorm2d(2)
    with pytest.raises(TypeError, match=r"buffer 'running_mean': expected an array of numbers .* dtype object"):
        bn.running_mean = np.array([None, 1], dtype=object)
    with pytest.raises(TypeError, match="buffer 'names'"):
        bn.register_buffer("names", np.array(["a", "b"]))
    np.testing.assert_array_equal(bn.running_mean, np.zeros(2, np.float32))  # unchanged
    bn.running_mean = None
    assert bn.running_mean is None


# -- Tensor(...) dtypes -----------------------------------------------------------------------------

def test_tensor_dtype_inference_as_documented():
    assert Tensor(3).dtype == np.int64 and Tensor([1, 2]).dtype == np.int64
    assert Tensor(3.0).dtype == np.float32 and Tensor([1, 2.5]).dtype == np.float32
    assert Tensor(True).dtype == np.bool_
    assert Tensor(np.float64(2.0)).dtype == np.float64 and Tensor(np.ones(2)).dtype == np.float64
    assert Tensor(np.ones(2, np.int32)).dtype == np.int32
    assert Tensor([1, 2], dtype=np.float32, requires_grad=True).requires_grad
    assert Parameter([1, 2]).dtype == np.float32


def test_requires_grad_on_integers_says_what_to_do():
    with pytest.raises(TypeError) as info:
        Tensor([1, 2], requires_grad=True)
    msg = str(info.value)
    assert "got dtype int64 (shape (2,))" in msg
    assert "Tensor([1.0, 2.0], requires_grad=True)" in msg and "dtype=np.float32" in msg
    with pytest.raises(TypeError, match="got dtype bool"):
        Tensor(np.array([True]), requires_grad=True)


def test_global_average_pool_follows_the_float_policy():
    x = np.arange(16).reshape(1, 1, 4, 4)
    out = nn.GlobalAvgPool2d()(Tensor(x)).data
    assert out.dtype == np.float32 and out[0, 0] == np.float32(7.5)
    with pytest.raises(TypeError, match=r"global_avg_pool2d: the input has dtype float16"):
        nn.GlobalAvgPool2d()(Tensor(x.astype(np.float16)))
    f64 = nn.GlobalAvgPool2d()(Tensor(x.astype(np.float64))).data
    assert f64.dtype == np.float64 and f64[0, 0] == 7.5
