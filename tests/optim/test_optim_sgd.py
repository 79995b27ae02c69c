"""SGD against hand-computed values and a NumPy transcription of PyTorch's update equations."""
import numpy as np
import pytest

from bitnet.optim import SGD
from bitnet.tensor import Parameter


def run(opt_kwargs, grads, p0=1.0):
    """Scalar parameter p0, fed the given gradient sequence; returns the trajectory."""
    p = Parameter(np.array([p0], dtype=np.float64))
    opt = SGD([p], **opt_kwargs)
    out = []
    for g in grads:
        p.grad = np.array([g], dtype=np.float64)
        opt.step()
        out.append(p.data[0])
    return out


@pytest.mark.parametrize("kwargs, expected", [
    # plain: p -= 0.1 * 1 each step
    (dict(lr=0.1), [0.9, 0.8, 0.7]),
    # momentum 0.9: b = 1, 1.9, 2.71
    (dict(lr=0.1, momentum=0.9), [0.9, 0.71, 0.439]),
    # nesterov: b = 1, 1.9;  d = 1 + 0.9 b = 1.9, 2.71
    (dict(lr=0.1, momentum=0.9, nesterov=True), [0.81, 0.539]),
    # dampening 0.5: b = 1 (first step is undamped), 0.9 + 0.5 = 1.4, 1.26 + 0.5 = 1.76
    (dict(lr=0.1, momentum=0.9, dampening=0.5), [0.9, 0.76, 0.584]),
    # weight decay 0.1: d = 1 + 0.1 p = 1.1, 1.089
    (dict(lr=0.1, weight_decay=0.1), [0.89, 0.7811]),
])
def test_hand_computed(kwargs, expected):
    got = run(kwargs, [1.0] * len(expected))
    np.testing.assert_allclose(got, expected, rtol=1e-14, atol=1e-15)


def reference(p, grads, lr, momentum=0.0, dampening=0.0, weight_decay=0.0, nesterov=False):
    """PyTorch's SGD, written out in float64 NumPy."""
    p, buf = p.astype(np.float64), None
    for g in grads:
        g = g + weight_decay * p
        if momentum:
            buf = g.copy() if buf is None else momentum * buf + (1 - dampening) * g
            g = g + momentum * buf if nesterov else buf
        p = p - lr * g
    return p


CONFIGS = [
    dict(lr=0.1),
    dict(lr=0.05, momentum=0.9),
    dict(lr=0.05, momentum=0.9, nesterov=True),
    dict(lr=0.05, momentum=0.8, dampening=0.3),
    dict(lr=0.05, weight_decay=0.01),
    dict(lr=0.05, momentum=0.9, weight_decay=0.01, nesterov=True),
    dict(lr=0.05, momentum=0.5, dampening=0.1, weight_decay=0.2),
]


@pytest.mark.parametrize("dtype, rtol", [(np.float64, 1e-13), (np.float32, 2e-5)])
@pytest.mark.parametrize("cfg", CONFIGS)
def test_matches_reference_for_several_steps(cfg, dtype, rtol):
    rng = np.random.default_rng(0)
    p0 = rng.standard_normal((4, 3))
    grads = [rng.standard_normal((4, 3)) for _ in range(6)]
    p = Parameter(p0.astype(dtype))
    opt = SGD([p], **cfg)
    for g in grads:
        p.grad = g.astype(dtype)
        opt.step()
    assert p.data.dtype == dtype
    if cfg.get("momentum"):
        assert opt.state[p]["momentum_buffer"].dtype == dtype
    # float32 run is compared with the float64 reference fed the same float32-rounded inputs
    expected = reference(p0.astype(dtype), [g.astype(dtype) for g in grads], **cfg)
    np.testing.assert_allclose(p.data, expected, rtol=rtol, atol=rtol)


@pytest.mark.parametrize("kwargs, exc, msg", [
    (dict(lr=-0.1), ValueError, r"SGD: lr must be >= 0.0, got -0.1"),
    (dict(lr="0.1"), TypeError, r"lr must be a real number, got '0.1'"),
    (dict(lr=float("nan")), ValueError, "lr must be a number, got nan"),
    (dict(lr=0.1, momentum=-0.5), ValueError, r"momentum must be >= 0.0, got -0.5"),
    (dict(lr=0.1, weight_decay=-1), ValueError, r"weight_decay must be >= 0.0, got -1"),
    (dict(lr=0.1, nesterov=True), ValueError, r"nesterov=True needs momentum > 0"),
    (dict(lr=0.1, momentum=0.9, dampening=0.1, nesterov=True), ValueError,
     r"needs momentum > 0 and dampening = 0, got momentum=0.9, dampening=0.1"),
])
def test_bad_hyperparameters(kwargs, exc, msg):
    with pytest.raises(exc, match=msg):
        SGD([Parameter(np.ones(2))], **kwargs)


def test_bad_hyperparameter_in_a_group():
    with pytest.raises(ValueError, match="momentum must be >= 0.0, got -1"):
        SGD([{"params": [Parameter(np.ones(2))], "momentum": -1}], lr=0.1)
