"""Adam / AdamW against hand-computed values and a NumPy transcription of PyTorch's equations."""
import numpy as np
import pytest

from bitnet.optim import Adam, AdamW
from bitnet.tensor import Parameter

EPS = 1e-8


def run(cls, kwargs, grads, p0=1.0):
    p = Parameter(np.array([p0], dtype=np.float64))
    opt = cls([p], **kwargs)
    out = []
    for g in grads:
        p.grad = np.array([g], dtype=np.float64)
        opt.step()
        out.append(p.data[0])
    return np.array(out)


def test_constant_gradient_moves_lr_per_step():
    # with g constant, bias-corrected m_hat = g and v_hat = g**2 at every step
    got = run(Adam, dict(lr=0.1), [1.0] * 4)
    np.testing.assert_allclose(got, 1 - 0.1 * np.arange(1, 5) / (1 + EPS), rtol=1e-14)
    got = run(Adam, dict(lr=0.1), [2.0] * 3)
    np.testing.assert_allclose(got, 1 - 0.1 * 2 * np.arange(1, 4) / (2 + EPS), rtol=1e-14)


def test_adamw_decoupled_decay_by_hand():
    # p = p * (1 - lr * wd) - lr * 1/(1 + eps): 1 -> 0.99 - 0.1 = 0.89 -> 0.8811 - 0.1 = 0.7811
    step = 0.1 / (1 + EPS)
    got = run(AdamW, dict(lr=0.1, weight_decay=0.1), [1.0, 1.0])
    np.testing.assert_allclose(got, [0.99 - step, (0.99 - step) * 0.99 - step], rtol=1e-14)
    assert abs(got[1] - 0.7811) < 1e-8


def test_adam_l2_decay_by_hand():
    # step 1: g' = 1 + 0.5 * 1 = 1.5, m_hat = 1.5, v_hat = 2.25 -> p = 1 - 0.1 * 1.5/(1.5+eps)
    got = run(Adam, dict(lr=0.1, weight_decay=0.5), [1.0])
    np.testing.assert_allclose(got, [1 - 0.1 * 1.5 / (1.5 + EPS)], rtol=1e-14)


def test_amsgrad_by_hand():
    # gradients 1 then 0 with betas (0.9, 0.999):
    # step 1: m = 0.1, v = vmax = 0.001 -> p = 1 - 0.1/(1+eps)
    # step 2: m = 0.09, v = 0.000999, vmax = 0.001
    p1 = 1 - 0.1 / (1 + EPS)
    m_hat = 0.09 / (1 - 0.9 ** 2)
    for amsgrad, v in [(True, 0.001), (False, 0.000999)]:
        got = run(Adam, dict(lr=0.1, amsgrad=amsgrad), [1.0, 0.0])
        v_hat_sqrt = np.sqrt(v) / np.sqrt(1 - 0.999 ** 2)
        np.testing.assert_allclose(got, [p1, p1 - 0.1 * m_hat / (v_hat_sqrt + EPS)], rtol=1e-13)


def reference(p, grads, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0,
              amsgrad=False, decoupled=False):
    """PyTorch's Adam/AdamW, written out in float64 NumPy."""
    b1, b2 = betas
    p = p.astype(np.float64)
    m, v, vmax = np.zeros_like(p), np.zeros_like(p), np.zeros_like(p)
    for t, g in enumerate(grads, start=1):
        if decoupled:
            p = p * (1 - lr * weight_decay)
        else:
            g = g + weight_decay * p
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        vmax = np.maximum(vmax, v)
        v_hat = (vmax if amsgrad else v) / (1 - b2 ** t)
        p = p - lr * (m / (1 - b1 ** t)) / (np.sqrt(v_hat) + eps)
    return p


CONFIGS = [
    (Adam, dict(lr=0.01)),
    (Adam, dict(lr=0.01, betas=(0.8, 0.99), eps=1e-6)),
    (Adam, dict(lr=0.01, weight_decay=0.1)),
    (Adam, dict(lr=0.01, amsgrad=True)),
    (Adam, dict(lr=0.01, amsgrad=True, weight_decay=0.05)),
    (Adam, dict(lr=0.01, weight_decay=0.1, decoupled_weight_decay=True)),
    (AdamW, dict(lr=0.01)),
    (AdamW, dict(lr=0.01, weight_decay=0.3, amsgrad=True)),
]


@pytest.mark.parametrize("dtype, rtol", [(np.float64, 1e-12), (np.float32, 1e-4)])
@pytest.mark.parametrize("cls, cfg", CONFIGS)
def test_matches_reference_for_several_steps(cls, cfg, dtype, rtol):
    rng = np.random.default_rng(1)
    p0 = rng.standard_normal((3, 5))
    grads = [rng.standard_normal((3, 5)) for _ in range(8)]
    p = Parameter(p0.astype(dtype))
    opt = cls([p], **cfg)
    for g in grads:
        p.grad = g.astype(dtype)
        opt.step()
    st = opt.state[p]
    assert p.data.dtype == dtype and st["step"] == 8
    assert st["exp_avg"].dtype == dtype and st["exp_avg_sq"].dtype == dtype
    assert ("max_exp_avg_sq" in st) == cfg.get("amsgrad", False)
    ref_cfg = dict(cfg)
    ref_cfg["decoupled"] = cls is AdamW or ref_cfg.pop("decoupled_weight_decay", False)
    if cls is AdamW:
        ref_cfg.setdefault("weight_decay", 1e-2)
    expected = reference(p0.astype(dtype), [g.astype(dtype) for g in grads], **ref_cfg)
    np.testing.assert_allclose(p.data, expected, rtol=rtol, atol=rtol)


def test_step_counts_are_per_parameter():
    a, b = Parameter(np.ones(2)), Parameter(np.ones(2))
    opt = Adam([a, b], lr=0.1)
    for i in range(3):
        a.grad = np.ones(2)
        b.grad = np.ones(2) if i == 2 else None
        opt.step()
    assert opt.state[a]["step"] == 3 and opt.state[b]["step"] == 1
    np.testing.assert_allclose(b.data, 1 - 0.1 / (1 + EPS), rtol=1e-14)


def test_adamw_defaults():
    g = AdamW([Parameter(np.ones(2))]).param_groups[0]
    assert g["weight_decay"] == 1e-2 and g["decoupled_weight_decay"] is True and g["lr"] == 1e-3
    g = Adam([Parameter(np.ones(2))]).param_groups[0]
    assert g["weight_decay"] == 0 and g["decoupled_weight_decay"] is False


@pytest.mark.parametrize("kwargs, exc, msg", [
    (dict(lr=-1e-3), ValueError, r"Adam: lr must be >= 0.0, got -0.001"),
    (dict(betas=(1.0, 0.999)), ValueError, r"betas\[0\] must be in \[0.0, 1.0\), got 1.0"),
    (dict(betas=(0.9, -0.1)), ValueError, r"betas\[1\] must be in \[0.0, 1.0\), got -0.1"),
    (dict(betas=0.9), ValueError, r"betas must be a pair \(beta1, beta2\), got 0.9"),
    (dict(eps=-1e-8), ValueError, r"eps must be >= 0.0, got -1e-08"),
    (dict(weight_decay=-0.1), ValueError, r"weight_decay must be >= 0.0, got -0.1"),
])
def test_bad_hyperparameters(kwargs, exc, msg):
    with pytest.raises(exc, match=msg):
        Adam([Parameter(np.ones(2))], **kwargs)
    with pytest.raises(exc, match=msg.replace("Adam:", "AdamW:")):
        AdamW([Parameter(np.ones(2))], **kwargs)


def test_adam_updates_non_contiguous_parameters_in_place():
    """A parameter that is a strided view is updated in place like a contiguous one."""
    import numpy as np
    from bitnet.optim import Adam
    from bitnet.tensor import Parameter
    base = np.arange(24, dtype=np.float64).reshape(4, 6)
    strided, contiguous = Parameter(base[:, ::2]), Parameter(base[:, ::2].copy())
    assert not strided.data.flags.c_contiguous
    grad = np.linspace(-1, 1, 12).reshape(4, 3)
    opts = [Adam([p], lr=0.1, amsgrad=True) for p in (strided, contiguous)]
    for _ in range(3):
        for p, opt in zip((strided, contiguous), opts):
            p.grad = grad.copy()
            opt.step()
    np.testing.assert_array_equal(strided.data, contiguous.data)
    np.testing.assert_array_equal(base[:, ::2], contiguous.data)  # the view wrote through
