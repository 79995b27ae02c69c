"""Bop (Helwegen et al. 2019): flip rule by hand, momentum against NumPy, checkpoints, checks."""
import numpy as np
import pytest

from bitnet.optim import Bop
from bitnet.tensor import Parameter


def step(opt, p, g):
    p.grad = np.asarray(g, dtype=p.data.dtype)
    opt.step()
    return p.data.copy()


def sign(x):
    return np.where(x >= 0, 1.0, -1.0)


def reference(w0, grads, threshold, gamma):
    """Bop written out in float64 NumPy, one element-wise pass per step."""
    w, m, out = sign(np.asarray(w0, dtype=np.float64)), np.zeros(np.shape(w0)), []
    for g in grads:
        m = (1 - gamma) * m + gamma * np.asarray(g, dtype=np.float64)
        flip = (np.abs(m) > threshold) & (sign(m) == w)
        w = np.where(flip, -w, w)
        out.append((w.copy(), m.copy()))
    return out


def test_flip_rule_by_hand():
    # gamma = 0.5: m = 0.5 * g after one step; threshold 1.0
    w0 = np.array([1.0, 1.0, -1.0, -1.0, 1.0, -1.0, 0.3, -0.2, 0.0, 0.0, 1.0])
    g = np.array([4.0, -4.0, -4.0, 4.0, 2.0, -2.0, 4.0, 1.0, 3.0, 0.5, 0.0])
    # m:          2    -2    -2     2    1     -1    2    0.5   1.5  0.25   0
    want = np.array([
        -1.0,  # |m| > thr, same sign as w: flip
        1.0,   # opposite sign: keep
        1.0,   # negative w, negative m: flip to +1
        -1.0,  # opposite sign: keep
        1.0,   # |m| == threshold exactly: no flip (strict >)
        -1.0,  # same, negative
        -1.0,  # latent 0.3 read as +1, flips
        -1.0,  # latent -0.2 read as -1, |m| below threshold: binarized only
        -1.0,  # latent 0 is +1 (sign(0) = +1), flips
        1.0,   # latent 0 is +1, |m| below threshold: stays +1
        1.0,   # zero gradient: keep
    ])
    p = Parameter(w0.copy())
    opt = Bop([p], threshold=1.0, gamma=0.5)
    np.testing.assert_array_equal(step(opt, p, g), want)
    np.testing.assert_array_equal(opt.state[p]["exp_avg"], 0.5 * g)


def test_momentum_crosses_threshold_after_some_steps():
    # constant g = 1, gamma = 0.5: m = 0.5, 0.75, 0.875; threshold 0.8 -> flip at step 3 only
    p = Parameter(np.array([1.0]))
    opt = Bop([p], threshold=0.8, gamma=0.5)
    got = [step(opt, p, [1.0])[0] for _ in range(3)]
    assert got == [1.0, 1.0, -1.0]
    # now w = -1 and m = 0.875 > 0: opposite signs, gradient pushes w further down: keep
    assert step(opt, p, [1.0])[0] == -1.0
    assert opt.state[p]["step"] == 4


def test_momentum_and_weights_match_numpy_reference():
    rng = np.random.default_rng(0)
    w0 = rng.uniform(-1, 1, size=(7, 5))
    grads = [rng.normal(size=(7, 5)) * 1e-3 + 2e-4 * np.sin(t) for t in range(40)]
    threshold, gamma = 2e-5, 0.05
    ref = reference(w0, grads, threshold, gamma)
    p = Parameter(w0.copy())
    opt = Bop([p], threshold=threshold, gamma=gamma)
    flips = 0
    for t, (g, (w_ref, m_ref)) in enumerate(zip(grads, ref)):
        before = p.data.copy()
        step(opt, p, g)
        np.testing.assert_allclose(opt.state[p]["exp_avg"], m_ref, rtol=1e-12, atol=1e-18)
        np.testing.assert_array_equal(p.data, w_ref)
        if t:
            flips += int((p.data != before).sum())
    assert flips > 0  # the reference really exercises flipping
    assert opt.state[p]["step"] == len(grads)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_outputs_exactly_pm1_and_keep_dtype(dtype):
    rng = np.random.default_rng(1)
    p = Parameter(rng.normal(size=(64, 32)).astype(dtype))
    p.data[0, :4] = 0.0
    opt = Bop([p], threshold=1e-3, gamma=0.1)
    for _ in range(5):
        step(opt, p, rng.normal(size=p.shape) * 0.05)
        assert p.data.dtype == dtype
        assert set(np.unique(p.data).tolist()) <= {-1.0, 1.0}
    assert opt.state[p]["exp_avg"].dtype == dtype


def test_parameter_without_gradient_is_untouched():
    a, b = Parameter(np.array([0.3, -0.4])), Parameter(np.array([0.5]))
    opt = Bop([a, b])
    a.grad = np.array([1.0, 1.0])
    opt.step()
    np.testing.assert_array_equal(b.data, [0.5])
    assert b not in opt.state


def test_state_dict_round_trip_continues_identically():
    rng = np.random.default_rng(2)
    grads = [rng.normal(size=(4, 6)) * 1e-2 for _ in range(12)]
    w0 = rng.uniform(-1, 1, size=(4, 6))

    p = Parameter(w0.copy())
    opt = Bop([p], threshold=1e-3, gamma=0.2)
    for g in grads[:6]:
        step(opt, p, g)
    sd = opt.state_dict()
    saved_w = p.data.copy()
    for g in grads[6:]:
        step(opt, p, g)
    want_w, want_m = p.data.copy(), opt.state[p]["exp_avg"].copy()

    assert sd["param_groups"][0]["threshold"] == 1e-3 and sd["param_groups"][0]["gamma"] == 0.2
    assert isinstance(sd["state"][0]["exp_avg"], np.ndarray)
    q = Parameter(saved_w)
    opt2 = Bop([q], threshold=0.5, gamma=0.9)  # hyperparameters come from the state dict
    opt2.load_state_dict(sd)
    assert opt2.param_groups[0]["gamma"] == 0.2
    for g in grads[6:]:
        step(opt2, q, g)
    np.testing.assert_array_equal(q.data, want_w)
    np.testing.assert_array_equal(opt2.state[q]["exp_avg"], want_m)


def test_param_groups_with_own_hyperparameters():
    a, b = Parameter(np.array([1.0])), Parameter(np.array([1.0]))
    opt = Bop([{"params": [a]}, {"params": [b], "threshold": 10.0}], threshold=0.1, gamma=1.0)
    a.grad = b.grad = np.array([1.0])
    opt.step()
    assert a.data[0] == -1.0 and b.data[0] == 1.0


def test_load_state_dict_of_other_optimizer_is_rejected():
    from bitnet.optim import Adam
    p = Parameter(np.array([1.0]))
    adam = Adam([p])
    p.grad = np.array([1.0])
    adam.step()
    with pytest.raises(ValueError, match="threshold|gamma"):
        Bop([Parameter(np.array([1.0]))]).load_state_dict(adam.state_dict())


@pytest.mark.parametrize("kwargs, match", [
    (dict(threshold=-1e-8), "threshold must be >= 0"),
    (dict(gamma=0.0), r"gamma.*in \(0"),
    (dict(gamma=-0.1), r"gamma.*in \(0"),
    (dict(gamma=1.5), r"gamma.*in \(0.*1"),
    (dict(gamma=float("nan")), "gamma.*nan"),
])
def test_bad_hyperparameters(kwargs, match):
    with pytest.raises(ValueError, match=match):
        Bop([Parameter(np.zeros(2))], **kwargs)


def test_gamma_one_and_threshold_zero_are_allowed():
    p = Parameter(np.array([1.0, 1.0]))
    opt = Bop([p], threshold=0.0, gamma=1.0)  # m = g: flip wherever g has the weight's sign
    np.testing.assert_array_equal(step(opt, p, [0.5, -0.5]), [-1.0, 1.0])


def test_bad_hyperparameter_types_and_lr():
    with pytest.raises(TypeError, match="threshold must be a real number"):
        Bop([Parameter(np.zeros(2))], threshold="1e-8")
    with pytest.raises(TypeError):
        Bop([Parameter(np.zeros(2))], lr=0.1)  # Bop has no learning rate
