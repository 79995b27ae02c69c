"""The quantizers on "cuda" (bitnet/gpu/ops/quantize.py) against the CPU's: forward and straight-through
backward, with zero, -0.0, NaN, infinities and the clip boundaries among the inputs.

Selects and single roundings are exact, so those compare with ``exact=True``. Where a GPU computes a
transcendental function (cosh, tanh) or a mean in another order than NumPy, a tolerance covers it: a
few ulps of float64 (rtol 1e-12); the emulation itself is exact there too."""
from __future__ import annotations

import numpy as np
import pytest

import bitnet
import bitnet.nn as nn
from bitnet import quantizers as Q
from bitnet.gpu import dispatch
from bitnet.gpu.arrays import emulate, is_device_array, to_host
from bitnet.nn.quantized import clip_unit

from compare import assert_same_on_both
from layer_compare import assert_layers_agree, run_layer

TRANSCENDENTAL = dict(rtol=1e-12, atol=1e-300)  # float64: a few ulps from the GPU's cosh / tanh / mean order


def edges(dtype, clip=1.0, n=37, seed=0):
    """Random values spread over [-2 clip, 2 clip] plus the special ones: zeros of both signs, NaN,
    infinities, +-clip and their float neighbours, tiny values."""
    rng = np.random.default_rng(seed)
    c = dtype(clip)
    special = [0.0, -0.0, np.nan, np.inf, -np.inf, c, -c, np.nextafter(c, dtype(9)), np.nextafter(-c, dtype(-9)),
               np.nextafter(c, dtype(0)), np.nextafter(-c, dtype(0)), 1e-30, -1e-30, 1.0, -1.0, 0.5, -0.5, 1.5]
    x = np.concatenate([np.array(special, dtype), (rng.standard_normal(n) * 2 * clip).astype(dtype)])
    return x.reshape(5, -1) if x.size % 5 == 0 else x


def finite(dtype, shape=(3, 4, 5), seed=1, scale=1.5):
    return (np.random.default_rng(seed).standard_normal(shape) * scale).astype(dtype)


def test_every_quantizer_function_has_a_gpu_implementation():
    gpu = dispatch.registered()
    for fn in (Q._SteSignFn, Q._ApproxSignFn, Q._SwishSignFn, Q._SteHeavisideFn, Q._MagnitudeAwareSignFn,
               Q._DoReFaActivationFn, Q._DoReFaWeightFn):
        assert fn in gpu and issubclass(gpu[fn], fn), fn.__name__


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("clip", [1.0, 0.3, 2.5, None])
def test_ste_sign(dtype, clip):
    x = edges(dtype, 1.0 if clip is None else clip)
    out, (g,) = assert_same_on_both(lambda t: Q.SteSign(clip_value=clip)(t), [x], 0, 0, exact=True)
    assert out.dtype == dtype
    np.testing.assert_array_equal(out, np.where(x < 0, -1, 1))  # the convention: NaN, 0 and -0.0 give +1
    if clip is not None:
        assert (g[np.isnan(x)] == 0).all() and (g[np.isinf(x)] == 0).all()


def test_ste_sign_boundary_is_compared_in_the_input_dtype():
    """float32(0.1) > 0.1: the clip is rounded to float32 before comparing, on both devices."""
    x = np.array([np.nextafter(np.float32(0.1), np.float32(0)), np.float32(0.1),
                  np.nextafter(np.float32(0.1), np.float32(1))], np.float32)
    _, (g,) = assert_same_on_both(lambda t: Q.SteSign(clip_value=0.1)(t), [x], 0, 0, exact=True)
    assert (g[:2] != 0).all() and g[2] == 0


def test_ste_sign_within_the_clip_everywhere_and_half_precision():
    x = np.linspace(-1, 1, 21)  # every |x| <= clip: the CPU returns g itself, the GPU selects it
    assert_same_on_both(lambda t: Q.SteSign()(t), [x], 0, 0, exact=True)
    h = np.array([-0.0, 0.0, -1, 1, np.nan, -3, 0.25], np.float16)  # NumPy's passes on the CPU, not the kernels
    out, _ = assert_same_on_both(lambda t: Q.SteSign()(t), [h], 0, 0, exact=True)
    assert out.dtype == np.float16


def test_integer_inputs_become_float32():
    x = np.array([[-3, 0, 2], [1, -1, 0]], np.int64)
    for q in (Q.SteSign(), Q.ApproxSign(), Q.SteHeaviside(), Q.DoReFaActivation(3)):
        out, _ = assert_same_on_both(lambda t: q(t), [x], 0, 0, exact=True)
        assert out.dtype == np.float32, q


def test_sign_of_sign_is_skipped_on_cuda_too():
    x = edges(np.float32)
    with emulate():
        t = bitnet.Tensor(x, requires_grad=True, device="cuda")
        s = Q.SteSign()(t)
        assert Q.SteSign()(s) is s and Q.SteSign(clip_value=0.5)(s) is not s


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_approx_sign(dtype):
    out, (g,) = assert_same_on_both(lambda t: Q.ApproxSign()(t), [edges(dtype)], 0, 0, exact=True)
    assert out.dtype == dtype and g.dtype == dtype


@pytest.mark.parametrize("beta", [5.0, 0.7, 300.0])
def test_swish_sign(beta):
    x = edges(np.float64)  # beta 300: cosh overflows for |x| > ~2.4, whose gradient must be 0 (not NaN)
    out, (g,) = assert_same_on_both(lambda t: Q.SwishSign(beta=beta)(t), [x], **TRANSCENDENTAL)
    np.testing.assert_array_equal(out, np.where(x < 0, -1.0, 1.0))
    assert (g[np.isinf(x)] == 0).all()
    x32 = edges(np.float32)
    # float32: a few ulps of float32 from the GPU's cosh / tanh
    out, (g,) = assert_same_on_both(lambda t: Q.SwishSign(beta=beta)(t), [x32], rtol=1e-5, atol=1e-30)
    assert out.dtype == np.float32 and g.dtype == np.float32


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("clip", [1.0, 0.4, None])
def test_ste_heaviside(dtype, clip):
    x = edges(dtype, 1.0 if clip is None else clip)
    out, _ = assert_same_on_both(lambda t: Q.SteHeaviside(clip_value=clip)(t), [x], 0, 0, exact=True)
    np.testing.assert_array_equal(out, np.where(x < 0, 0, 1))  # NaN is not < 0: 1


@pytest.mark.parametrize("shape", [(4, 3, 3, 2), (5, 7), (3,)])
@pytest.mark.parametrize("clip", [1.0, 0.5])
def test_magnitude_aware_sign(shape, clip):
    w = finite(np.float64, shape, scale=0.8)
    w.reshape(shape[0], -1)[0, 0] = 0.0
    if len(shape) > 1:
        w[1] = 0.0  # a channel of zeros: alpha 0, output 0
    out, _ = assert_same_on_both(lambda t: Q.MagnitudeAwareSign(clip_value=clip)(t), [w], **TRANSCENDENTAL)
    if len(shape) > 1:
        assert (out[1] == 0).all()
    w32 = w.astype(np.float32)
    # float32 mean of up to 18 values in another order: a few float32 ulps
    out, (g,) = assert_same_on_both(lambda t: Q.MagnitudeAwareSign(clip_value=clip)(t), [w32], rtol=1e-6, atol=0)
    assert out.dtype == np.float32 and g.dtype == np.float32


def test_magnitude_aware_sign_scale_stays_on_the_device():
    w = finite(np.float32, (4, 3, 2, 2))
    want = Q.MagnitudeAwareSign.scale(w)
    with emulate():
        t = bitnet.Tensor(w, device="cuda")
        for arg in (t, t.data):
            alpha = Q.MagnitudeAwareSign.scale(arg)
            assert is_device_array(alpha) and alpha.dtype == np.float32 and alpha.shape == (4,)
            np.testing.assert_allclose(to_host(alpha), want, rtol=1e-6)  # float32 mean, any order


@pytest.mark.parametrize("bits", [2, 3, 8])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_dorefa_activation(bits, dtype):
    n = 2 ** bits - 1
    half_steps = (np.arange(2 * n + 1) / (2 * n)).astype(dtype)  # ties of the rounding: half to even
    x = np.concatenate([edges(dtype).ravel(), half_steps, [0.0, 1.0, -0.0, 1.0000001]]).astype(dtype)
    out, (g,) = assert_same_on_both(lambda t: Q.DoReFaActivation(bits)(t), [x], 0, 0, exact=True)
    assert out.dtype == dtype and g.dtype == dtype


@pytest.mark.parametrize("bits", [2, 4])
@pytest.mark.parametrize("shape", [(4, 3, 3, 3), (6, 5)])
def test_dorefa_weight(bits, shape):
    w = finite(np.float64, shape)
    out, _ = assert_same_on_both(lambda t: Q.DoReFaWeight(bits)(t), [w], **TRANSCENDENTAL)
    # float32: tanh on the GPU may differ by an ulp of float32; the output levels are 2 / (2^k - 1) apart, and
    # a level could only flip at an exact tie, which these random weights avoid
    out, (g,) = assert_same_on_both(lambda t: Q.DoReFaWeight(bits)(t), [w.astype(np.float32)], rtol=1e-5, atol=1e-6)
    assert out.dtype == np.float32 and g.dtype == np.float32


def test_dorefa_weight_all_zero_empty_and_nan():
    zeros = np.zeros((3, 2), np.float64)  # m = 0 -> 1 (on the device: no host read of m)
    out, (g,) = assert_same_on_both(lambda t: Q.DoReFaWeight(2)(t), [zeros], 0, 0, exact=True)
    np.testing.assert_array_equal(g, np.random.default_rng(0).standard_normal((3, 2)))  # (1 - 0) / 1 = 1
    assert_same_on_both(lambda t: Q.DoReFaWeight(3)(t), [np.zeros((0, 4))], 0, 0, exact=True)
    w = finite(np.float64, (2, 3))
    w[0, 1] = np.nan  # m is NaN: every output NaN, on both devices
    out, _ = assert_same_on_both(lambda t: Q.DoReFaWeight(2)(t), [w], 0, 0, exact=True)
    assert np.isnan(out).all()


def test_identity_keeps_the_tensor_on_cuda():
    x = edges(np.float32)
    out, (g,) = assert_same_on_both(lambda t: Q.Identity()(t) * 1, [x], 0, 0, exact=True)
    with emulate():
        t = bitnet.Tensor(x, device="cuda")
        assert Q.Identity()(t) is t


def test_clip_unit_clips_device_weights_in_place():
    w = np.array([-3.0, -1.0, -0.5, 0.0, np.nextafter(1.0, 2.0), 2.0, np.inf], np.float32)
    with emulate():
        d = bitnet.Tensor(w, device="cuda").data
        clip_unit(d)
        assert is_device_array(d)
        np.testing.assert_array_equal(to_host(d), np.clip(w, -1, 1))


def test_bad_quantizer_arguments_are_still_clear():
    with pytest.raises(ValueError, match="bits must be an integer in 2..31"):
        Q.DoReFaActivation(1)
    with emulate():
        t = bitnet.Tensor(np.ones((2, 2), np.float32), device="cuda")
        host = bitnet.Tensor(np.ones((2, 2), np.float32))
        with pytest.raises(RuntimeError, match="different devices"):
            Q._SteSignFn.apply(t, host)


# -- quantized layers on "cuda" (model.to("cuda")) ----------------------------------------------------
# Float32 layers. Outputs of binary layers are integers (+ bias) on both devices: exact. Float paths (k-bit
# or float inputs) sum up to 54 products in another order than the CPU's BLAS: a few float32 ulps of the
# sums' magnitude (<= ~50), so rtol 1e-5 and atol 1e-4; the gradients, sums of as many terms, the same.
LAYER_TOL = dict(rtol=1e-5, atol=1e-4)


def _layer_cases():
    r = lambda: np.random.default_rng(3)  # noqa: E731 - the same weights for both devices
    return {
        "act1": (lambda: nn.QActivation(1), (3, 7), True),
        "act4": (lambda: nn.QActivation(4), (3, 7), True),
        "act32": (lambda: nn.QActivation(32), (3, 7), True),
        "act_approx": (lambda: nn.QActivation(quantizer="approx_sign"), (3, 7), True),
        "dense_1_1": (lambda: nn.QDense(13, 5, rng=r()), (4, 13), True),
        "dense_1_1_3d": (lambda: nn.QDense(13, 5, rng=r()), (2, 3, 13), True),   # not 2-D: the float path
        "dense_channel": (lambda: nn.QDense(13, 5, scaling="channel", rng=r()), (4, 13), False),
        "dense_2_3": (lambda: nn.QDense(13, 5, act_bit=2, weight_bit=3, rng=r()), (4, 13), False),
        "dense_32_1": (lambda: nn.QDense(13, 5, act_bit=32, weight_bit=1, bias=False, rng=r()), (4, 13), False),
        "conv_1_1": (lambda: nn.QConv2d(6, 4, 3, padding=1, rng=r()), (2, 6, 5, 5), True),
        "conv_1_1_zero_pad": (lambda: nn.QConv2d(6, 4, 3, padding=1, pad_value=0, stride=2, rng=r()),
                              (2, 6, 5, 6), True),
        "conv_1_1_groups": (lambda: nn.QConv2d(6, 4, 3, padding=1, pad_value=-1, groups=2, rng=r()),
                            (2, 6, 5, 5), True),
        "conv_channel": (lambda: nn.QConv2d(6, 4, 3, padding=(1, 0), scaling="channel", rng=r()),
                         (2, 6, 5, 5), False),
        "conv_2_2": (lambda: nn.QConv2d(6, 4, 3, padding=1, act_bit=2, weight_bit=2, rng=r()), (2, 6, 5, 5), False),
        "conv_32_4": (lambda: nn.QConv2d(6, 4, 2, act_bit=32, weight_bit=4, dilation=2, rng=r()), (2, 6, 5, 5),
                      False),
    }


@pytest.mark.parametrize("case", list(_layer_cases()))
def test_quantized_layers_on_cuda(case):
    make, shape, exact = _layer_cases()[case]
    x = (np.random.default_rng(7).standard_normal(shape) * 0.8).astype(np.float32)
    x.reshape(-1)[:3] = [0.0, -0.0, 1.0]
    cpu = run_layer(make, x, "cpu")
    with emulate():
        gpu = run_layer(make, x, "cuda")
    assert_layers_agree(gpu, cpu, exact_out=exact, what=case, **LAYER_TOL)


def test_quantized_layer_weights_stay_on_the_device_and_are_clipped_there():
    with emulate():
        layer = nn.QConv2d(3, 2, 3, scaling="channel", rng=np.random.default_rng(0)).to("cuda")
        assert is_device_array(layer.weight.data) and is_device_array(layer.kernel_scale())
        layer.weight.data[...] = layer.weight.data * 100
        layer.weight.constraint(layer.weight.data)
        assert is_device_array(layer.weight.data) and float(abs(layer.weight.data).max()) == 1.0


def test_quantized_layer_errors_are_still_clear_on_cuda():
    with emulate():
        layer = nn.QDense(13, 5).to("cuda")
        with pytest.raises(ValueError, match="expects inputs with 13 features"):
            layer(bitnet.Tensor(np.ones((2, 12), np.float32), device="cuda"))
        with pytest.raises(RuntimeError, match="different devices"):
            layer(bitnet.Tensor(np.ones((2, 13), np.float32)))
