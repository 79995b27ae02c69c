"""Shared helpers for the engine tests: a float64 central-difference gradient check.

``gradcheck(fn, arrays)`` builds leaf tensors from ``arrays`` (float64), evaluates
``out = fn(*tensors)``, back-propagates ``sum(out * W)`` for a fixed random ``W`` of the output's
shape, and compares every input's ``.grad`` with central differences of the same scalar, computed
by perturbing *every* element of every input by +-eps (no graph is recorded for those evaluations).

Tolerances: with eps = 1e-6 the truncation error of a central difference is O(eps^2 |f'''|) ~ 1e-12
and the rounding error is O(u |f| / eps) ~ 1e-16 * 10 / 1e-6 = 1e-9 for the small sums used here,
so rtol = 1e-5 / atol = 1e-6 leave three orders of magnitude of margin while still catching any
wrong factor, sign, transposition or missing broadcast sum (those give O(1) relative errors).
"""
from __future__ import annotations

import numpy as np

from bitnet import Tensor, no_grad

EPS = 1e-6
RTOL = 1e-5
ATOL = 1e-6


def _scalar(fn, arrays, weights):
    with no_grad():
        out = fn(*(Tensor(a) for a in arrays))
    return float(np.sum(np.asarray(out.data, dtype=np.float64) * weights))


def numeric_grads(fn, arrays, weights, eps=EPS):
    arrays = [np.array(a, dtype=np.float64, copy=True) for a in arrays]
    grads = []
    for a in arrays:
        g = np.zeros_like(a)
        flat, gflat = a.reshape(-1), g.reshape(-1)  # views: perturb in place
        for k in range(flat.size):
            orig = flat[k]
            flat[k] = orig + eps
            fp = _scalar(fn, arrays, weights)
            flat[k] = orig - eps
            fm = _scalar(fn, arrays, weights)
            flat[k] = orig
            gflat[k] = (fp - fm) / (2 * eps)
        grads.append(g)
    return grads


def gradcheck(fn, arrays, *, seed=0, eps=EPS, rtol=RTOL, atol=ATOL, check=None):
    """Assert that backward() of ``fn`` matches central differences for every input.

    ``fn`` maps tensors to one tensor; ``arrays`` are float64 arrays; ``check`` optionally lists
    which inputs to check (default: all). Returns the analytic gradients.
    """
    arrays = [np.asarray(a, dtype=np.float64) for a in arrays]
    check = range(len(arrays)) if check is None else check
    leaves = [Tensor(a.copy(), requires_grad=(i in check)) for i, a in enumerate(arrays)]
    out = fn(*leaves)
    assert out.dtype == np.float64, f"float64 inputs gave a {out.dtype} output"
    assert out.requires_grad, "output does not require grad although its inputs do"
    weights = np.random.default_rng(seed + 12345).standard_normal(out.shape)
    (out * Tensor(weights)).sum().backward()
    numeric = numeric_grads(fn, arrays, weights, eps)
    analytic = []
    for i in check:
        g = leaves[i].grad
        assert g is not None, f"input {i} received no gradient"
        assert g.shape == arrays[i].shape, f"input {i}: grad shape {g.shape} != {arrays[i].shape}"
        assert g.dtype == np.float64, f"input {i}: grad dtype {g.dtype}"
        np.testing.assert_allclose(g, numeric[i], rtol=rtol, atol=atol,
                                   err_msg=f"gradient of input {i} (shape {arrays[i].shape})")
        analytic.append(g)
    return analytic


def away_from(rng, shape, points=(0.0,), margin=0.05, low=-2.0, high=2.0):
    """Uniform samples in [low, high] at least ``margin`` away from each of ``points``."""
    x = rng.uniform(low, high, size=shape)
    for _ in range(100):
        bad = np.zeros(x.shape, bool)
        for p in points:
            bad |= np.abs(x - p) < margin
        if not bad.any():
            return x
        x[bad] = rng.uniform(low, high, size=int(bad.sum()))
    raise AssertionError("could not sample away from the given points")


def distinct(rng, shape, spacing=0.1):
    """Values with no ties: a random permutation of an arithmetic grid plus small jitter."""
    n = int(np.prod(shape))
    return (rng.permutation(n) * spacing + rng.uniform(0, spacing / 4, n) - n * spacing / 2).reshape(shape)
