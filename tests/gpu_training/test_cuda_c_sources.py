"""The CUDA C source of bitnet's own GPU kernels (bitnet/kernels/cuda_batchnorm.py, cuda_pooling.py,
cuda_sign.py, cuda_im2col.py, cuda_flat.py) run on the CPU, against the host functions that the
emulation runs in their place (NumPy, or bitnet's CPU kernels for the sign, im2col / col2im and
average pooling); and compiled by NVRTC where there is one.

The kernels use no shared memory and no barriers, so the source compiles as C++ with CUDA's
``__global__``, ``__device__`` and ``blockIdx`` / ``threadIdx`` / ``blockDim`` defined by a small
shim, and a launch is a loop over every block and thread (``-ffp-contract=off``, as ``--fmad=false`` on the GPU). The
elementwise kernels and the finalizing ones, given the same inputs (the NumPy partial sums go into
both finalizers), must give the host functions' results EXACTLY: the same operations in the same
order, each rounded. The partial sums add up to M/J float64 terms (<= 600 here, each |term| <= ~100)
in another order than NumPy's pairwise sum: they differ by at most ~600 * 2^-52 * sum|terms|, below
1e-9 (atol), rtol 1e-12. Skipped without a C++ compiler.
"""
from __future__ import annotations

import numpy as np
import pytest

from bitnet.kernels import cuda_batchnorm as KB
from bitnet.kernels import cuda_flat as KF
from bitnet.kernels import cuda_im2col as KI
from bitnet.kernels import cuda_pooling as KP
from bitnet.kernels import cuda_sign as KS
from tests.gpu_training.c_shim import C_NAME, builder, compile_with_nvrtc, nvrtc_or_none, run_on_cpu

@pytest.fixture(scope="module")
def build(tmp_path_factory):
    return builder(tmp_path_factory, KB)


CASES = [  # (N, C, L), x's type, gamma's, beta's, running mean's, running var's
    ((4, 3, 300), np.float32, np.float32, np.float32, np.float32, np.float32),  # 2 partial sums per channel
    ((2, 5, 7), np.float64, np.float64, np.float64, np.float64, np.float64),
    ((3, 2, 1), np.float32, np.float64, np.float32, np.float64, np.float32),  # (N, C): L = 1; mixed types
    ((900, 2, 3), np.float32, np.float32, np.float32, np.float32, np.float32),  # J = 5 > L: the steps wrap
]


@pytest.mark.parametrize("shape,t,p,bt,r,v", CASES)
def test_the_cuda_source_gives_the_numpy_kernels_results(build, index, shape, t, p, bt, r, v):
    rng = np.random.default_rng(0)
    n, c, length = shape
    m = n * length
    parts = KB.parts_per_channel(c, m)
    x = (rng.standard_normal(shape) * 2 + 3).astype(t)
    g = rng.standard_normal(shape).astype(t)
    gamma, beta = rng.standard_normal(c).astype(p), rng.standard_normal(c).astype(bt)
    lib = build(BN_T=C_NAME[t], BN_P=C_NAME[p], BN_B=C_NAME[bt], BN_R=C_NAME[r], BN_V=C_NAME[v], **index)
    on = {"numpy": {}, "cpu-cuda": {}}  # NumPy first: its partial sums go into both finalizers
    for who, out in on.items():
        run = (lambda name, count, args: run_on_cpu(lib, name, count, args, KB)) if who == "cpu-cuda" else \
            (lambda name, count, args: KB.NUMPY[name](*args))
        part = np.full(2 * c * parts, np.nan)
        mean, invstd, a, b = (np.full(c, np.nan) for _ in range(4))
        rm, rv = np.linspace(-1, 1, c).astype(r), np.linspace(0.5, 2, c).astype(v)
        run("bn_stats_partial", c * parts, (x, n, c, length, parts, part))
        out["stats_partial"] = part.copy()
        part = on["numpy"].get("stats_partial", part).copy()  # the same partials into both finalizers
        run("bn_stats_finalize", c, (part, x, c, length, parts, m, 1e-5, 0.1, 1, gamma, beta, rm, rv, mean, invstd,
                                     a, b))
        out.update(mean=mean, invstd=invstd, a=a, b=b, running_mean=rm, running_var=rv)
        y = np.full(shape, np.nan, t)
        run("bn_normalize", x.size, (x, x.size, c, length, a, b, y))
        out["y"] = y
        gpart = np.full(2 * c * parts, np.nan)
        run("bn_grad_partial", c * parts, (g, x, n, c, length, parts, mean, gpart))
        out["grad_partial"] = gpart.copy()
        gpart = on["numpy"].get("grad_partial", gpart).copy()
        k, mg, mgx = (np.full(c, np.nan) for _ in range(3))
        dgamma, dbeta = np.full(c, np.nan, t), np.full(c, np.nan, t)
        run("bn_grad_finalize", c, (gpart, c, parts, m, invstd, gamma, k, mg, mgx, dgamma, dbeta))
        dx = np.full(shape, np.nan, t)
        run("bn_grad_input", x.size, (g, x, x.size, c, length, mean, k, mg, mgx, dx))
        out.update(k=k, mg=mg, mgx=mgx, dgamma=dgamma, dbeta=dbeta, dx=dx)
    for key in on["numpy"]:
        a, b = on["cpu-cuda"][key], on["numpy"][key]
        assert a.dtype == b.dtype and not np.isnan(b).any(), key
        if key.endswith("partial"):  # module docstring: sums of up to M/J terms in another order
            np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-9, err_msg=key)
        else:
            np.testing.assert_array_equal(a, b, err_msg=key)


@pytest.mark.parametrize("shape,kernel", [((2, 3, 6, 8), (2, 2)), ((1, 2, 7, 5), (3, 2)), ((2, 1, 4, 4), (1, 1))])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_the_pooling_source_gives_the_numpy_kernels_results(build, index, shape, kernel, dtype):
    """Ties, NaNs (one and several in a window) and remainder rows / columns; out, tap and the scattered
    gradient exactly equal."""
    rng = np.random.default_rng(3)
    z = rng.integers(-2, 3, shape).astype(dtype)  # many ties
    z.reshape(-1)[rng.choice(z.size, z.size // 6, replace=False)] = np.nan
    kh, kw = kernel
    oh, ow = shape[2] // kh, shape[3] // kw
    g = rng.standard_normal((shape[0], shape[1], oh, ow)).astype(dtype)
    g.reshape(-1)[0] = -0.0
    lib = build(KP, PO_T=C_NAME[dtype], **index)
    results = []
    for run in (lambda name, count, args: run_on_cpu(lib, name, count, args, KP),
                lambda name, count, args: KP.NUMPY[name](*args)):
        out, tap = np.full(g.shape, 7.0, dtype), np.full(g.shape, -1, np.int32)
        run("pool_tiled_max", out.size, (z, out.size, shape[2], shape[3], kh, kw, out, tap))
        dense = np.full(shape, 7.0, dtype)
        run("pool_to_taps", dense.size, (g, tap, dense.size, shape[2], shape[3], kh, kw, dense))
        results.append((out, tap, dense))
    for a, b, what in zip(*results, ("out", "tap", "dense")):
        np.testing.assert_array_equal(a, b, err_msg=what)
        assert np.array_equal(np.signbit(a), np.signbit(b)), what
    assert np.isnan(results[1][0]).any() and ((results[1][1] > 0).any() or kernel == (1, 1))


AVG_CASES = [  # kernel, stride, padding, ceil_mode (as tests/gpu_training/test_gpu_conv_pool.py)
    ((2, 2), (2, 2), (0, 0), False), ((3, 3), (2, 2), (1, 1), False), ((3, 2), (2, 1), (1, 0), True),
    ((2, 2), (2, 2), (0, 0), True), ((3, 3), (1, 1), (1, 1), False), ((1, 1), (2, 2), (0, 0), False),
    ((4, 3), (3, 2), (2, 1), True)]


@pytest.mark.parametrize("include_pad", [1, 0])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("case", AVG_CASES)
def test_the_average_pool_source_gives_the_numpy_kernels_results(build, index, case, dtype, include_pad):
    from bitnet.ops.pool import _out_shape
    kernel, stride, padding, ceil_mode = case
    rng = np.random.default_rng(6)
    x = rng.standard_normal((2, 3, 7, 6)).astype(dtype)
    x[0, 0, 0, :2] = -0.0
    out_shape = _out_shape(x.shape, kernel, stride, padding, ceil_mode)
    g = rng.standard_normal(out_shape).astype(dtype)
    geometry = (7, 6) + out_shape[2:] + kernel + stride + padding + (include_pad,)
    lib = build(KP, PO_T=C_NAME[dtype], **index)
    results = []
    for run in (lambda name, count, args: run_on_cpu(lib, name, count, args, KP),
                lambda name, count, args: KP.NUMPY[name](*args)):
        y, dx = np.full(out_shape, 7.0, dtype), np.full(x.shape, 7.0, dtype)
        run("pool_avg_forward", y.size, (x, y.size) + geometry + (y,))
        run("pool_avg_backward", dx.size, (g, dx.size) + geometry + (dx,))
        results.append((y, dx))
    for a, b in zip(*results):
        np.testing.assert_array_equal(a, b)
        assert np.array_equal(np.signbit(a), np.signbit(b))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_the_flat_gather_and_scatter_source_gives_the_numpy_kernels_results(build, dtype):
    """Arrays of sizes 0 (first, middle and last), 1 and more: every element to its place and back."""
    rng = np.random.default_rng(8)
    sizes = [0, 5, 1, 0, 300, 7, 0]
    offsets, total = KF.offsets_of(sizes), sum(sizes)
    lib = build(KF, FL_T=C_NAME[dtype])
    results = []
    for run in (lambda name, count, a: run_on_cpu(lib, name, count, a, KF), lambda name, count, a: KF.NUMPY[name](*a)):
        arrays = [rng.standard_normal(n).astype(dtype) for n in sizes] if not results else \
            [a.copy() for a in results[0][0]]
        originals = [a.copy() for a in arrays]
        flat = np.full(total, 7.0, dtype)
        run("flat_gather", total, (arrays, offsets, len(sizes), total, flat))
        np.testing.assert_array_equal(flat, np.concatenate(originals))
        back = flat[::-1].copy()
        run("flat_scatter", total, (back, arrays, offsets, len(sizes), total))
        results.append((originals, flat, arrays))
    for (o1, f1, a1), (o2, f2, a2) in [results]:
        np.testing.assert_array_equal(f1, f2)
        for x, y, z in zip(a1, a2, np.split(f1[::-1], np.cumsum(sizes)[:-1])):
            np.testing.assert_array_equal(x, y)
            np.testing.assert_array_equal(x, z)


CONV_GEOMETRIES = [  # (N, C, H, W), (KH, KW), stride, padding, dilation, pad_value
    ((2, 3, 7, 6), (3, 3), (1, 1), (1, 1), (1, 1), 1.0), ((1, 2, 9, 8), (3, 2), (2, 1), (2, 1), (2, 2), -1.0),
    ((2, 2, 5, 5), (1, 1), (2, 2), (0, 0), (1, 1), 0.0), ((1, 3, 6, 7), (2, 3), (3, 2), (1, 2), (1, 1), 0.0)]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("geometry", CONV_GEOMETRIES)
def test_the_im2col_source_gives_the_numpy_kernels_results(build, index, geometry, dtype):
    from bitnet.gpu.ops.conv_pool import output_size
    shape, kernel, stride, padding, dilation, pad_value = geometry
    oh, ow = output_size(shape, (0, 0) + kernel, stride, padding, dilation)
    rng = np.random.default_rng(7)
    x = rng.standard_normal(shape).astype(dtype)
    x[0, 0, 0, 0] = -0.0
    rows, columns = shape[1] * kernel[0] * kernel[1], shape[0] * oh * ow
    dcols = rng.standard_normal((rows, columns)).astype(dtype)
    args = shape + kernel + stride + padding + dilation + (oh, ow)
    lib = build(KI, IC_T=C_NAME[dtype], **index)
    results = []
    for run in (lambda name, count, a: run_on_cpu(lib, name, count, a, KI), lambda name, count, a: KI.NUMPY[name](*a)):
        cols, dx = np.full((rows, columns), 7.0, dtype), np.full(shape, 7.0, dtype)
        run("im2col_fill", cols.size, (x,) + args + (pad_value, cols))
        run("col2im_add", dx.size, (dcols,) + args + (dx,))
        results.append((cols, dx))
    for a, b in zip(*results):
        np.testing.assert_array_equal(a, b)
        assert np.array_equal(np.signbit(a), np.signbit(b))


@pytest.mark.parametrize("xt,gt", [(np.float32, np.float32), (np.float64, np.float64), (np.float32, np.float64)])
def test_the_sign_source_gives_the_numpy_kernels_results(build, xt, gt):
    """Zeros of both signs, NaN, infinities, values at and next to the clip: the same bits."""
    special = [0.0, -0.0, np.nan, -np.nan, np.inf, -np.inf, 1.0, -1.0, 0.5, -1.5]
    x = np.concatenate([np.array(special), np.random.default_rng(4).standard_normal(300) * 2]).astype(xt)
    x[-1] = np.nextafter(xt(1), xt(2))
    g = np.random.default_rng(5).standard_normal(x.size).astype(gt)
    g[1] = -0.0
    lib = build(KS, SG_X=C_NAME[xt], SG_G=C_NAME[gt])
    results = []
    for run in (lambda name, count, args: run_on_cpu(lib, name, count, args, KS),
                lambda name, count, args: KS.NUMPY[name](*args)):
        y, dx = np.full(x.shape, 7.0, xt), np.full(x.shape, 7.0, gt)
        run("sign_forward", x.size, (x, x.size, y))
        run("ste_backward", x.size, (g, x, x.size, 1.0, dx))
        results.append((y, dx))
    for a, b in zip(*results):
        np.testing.assert_array_equal(a, b)
        assert np.array_equal(np.signbit(a), np.signbit(b))
    y, dx = results[1]
    assert list(y[:6]) == [1, 1, 1, 1, 1, -1] and dx[2] == 0 and dx[-1] == 0 and dx[6] == g[6]


def test_the_batch_statistics_are_the_cpu_kernels():
    """The NumPy functions (the emulation's) against bitnet's CPU kernel: the same mean and invstd up to
    the order of the float64 sums."""
    from bitnet.kernels import batchnorm
    x = (np.random.default_rng(1).standard_normal((6, 4, 400)) * 3 + 10).astype(np.float32)
    mean_cpu, invstd_cpu = np.empty(4), np.empty(4)
    batchnorm.channel_stats(x, 1e-5, mean_cpu, invstd_cpu)
    parts = KB.parts_per_channel(4, 2400)
    part = np.empty(2 * 4 * parts)
    KB.stats_partial(x, 6, 4, 400, parts, part)
    mean, invstd, a, b = (np.empty(4) for _ in range(4))
    KB.stats_finalize(part, x, 4, 400, parts, 2400, 1e-5, 0.1, 0, np.ones(4, np.float32), np.zeros(4, np.float32),
                      None, None, mean, invstd, a, b)
    assert parts > 1
    np.testing.assert_allclose(mean, mean_cpu, rtol=1e-13)
    np.testing.assert_allclose(invstd, invstd_cpu, rtol=1e-12)


@pytest.mark.parametrize("arch", ["compute_80", "compute_90"])
def test_the_cuda_source_compiles_with_nvrtc(arch):
    nvrtc = nvrtc_or_none()
    if nvrtc is None:
        pytest.skip("no NVRTC here (CuPy with its NVRTC library)")
    for module, macros in ((KB, ("BN_T", "BN_P", "BN_B", "BN_R", "BN_V")), (KP, ("PO_T",)), (KS, ("SG_X", "SG_G")),
                          (KI, ("IC_T",)), (KF, ("FL_T",))):
        compile_with_nvrtc(nvrtc, module, macros, arch)
