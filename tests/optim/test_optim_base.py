"""Optimizer base class: groups, zero_grad, skipping, in-place updates, state_dict checks."""
import numpy as np
import pytest

from bitnet.optim import SGD, Adam, AdamW
from bitnet.tensor import Parameter, Tensor


def make_params(dtype=np.float32, seed=0):
    rng = np.random.default_rng(seed)
    return [Parameter(rng.standard_normal((3, 4)).astype(dtype)),
            Parameter(rng.standard_normal(5).astype(dtype)),
            Parameter(rng.standard_normal((2, 2)).astype(dtype))]


def set_grads(params, step, seed=1):
    rng = np.random.default_rng(seed * 1000 + step)
    for p in params:
        p.grad = (0.5 * p.data + rng.standard_normal(p.shape)).astype(p.dtype)


def test_groups_fill_defaults_and_override():
    a, b, c = make_params()
    opt = SGD([{"params": [a, b]}, {"params": [c], "lr": 0.01, "momentum": 0.5}],
              lr=0.1, momentum=0.9)
    g0, g1 = opt.param_groups
    assert g0["lr"] == 0.1 and g0["momentum"] == 0.9 and g0["nesterov"] is False
    assert g1["lr"] == 0.01 and g1["momentum"] == 0.5
    assert len(g1["params"]) == 1 and g1["params"][0] is c


def test_groups_with_different_lr_update_with_their_own_lr():
    a, b = Parameter(np.ones(2)), Parameter(np.ones(2))
    opt = SGD([{"params": [a]}, {"params": [b], "lr": 0.01}], lr=0.1)
    a.grad = np.ones(2)
    b.grad = np.ones(2)
    opt.step()
    np.testing.assert_array_equal(a.data, [0.9, 0.9])
    np.testing.assert_array_equal(b.data, [0.99, 0.99])


def test_add_param_group():
    a, b, _ = make_params()
    opt = Adam([a], lr=0.1)
    opt.add_param_group({"params": b, "lr": 0.5})
    assert len(opt.param_groups) == 2 and opt.param_groups[1]["params"][0] is b
    assert opt.param_groups[1]["lr"] == 0.5 and opt.param_groups[1]["betas"] == (0.9, 0.999)
    with pytest.raises(ValueError, match="more than once"):
        opt.add_param_group({"params": [a]})


@pytest.mark.parametrize("params, exc, msg", [
    (Parameter(np.ones(2)), TypeError, "single Tensor"),
    ([], ValueError, "empty parameter list"),
    ([np.ones(2)], TypeError, "ndarray"),
])
def test_bad_params(params, exc, msg):
    with pytest.raises(exc, match=msg):
        SGD(params, lr=0.1)


def test_duplicate_parameter_rejected():
    p = Parameter(np.ones(2))
    with pytest.raises(ValueError, match="more than once"):
        SGD([p, p], lr=0.1)
    with pytest.raises(ValueError, match="more than once"):
        SGD([{"params": [p]}, {"params": [p]}], lr=0.1)


def test_zero_grad():
    params = make_params()
    opt = SGD(params, lr=0.1)
    set_grads(params, 0)
    opt.zero_grad(set_to_none=False)
    assert all(np.array_equal(p.grad, np.zeros_like(p.data)) for p in params)
    opt.zero_grad()
    assert all(p.grad is None for p in params)


@pytest.mark.parametrize("make_opt", [
    lambda ps: SGD(ps, lr=0.1, momentum=0.9, weight_decay=0.1),
    lambda ps: Adam(ps, lr=0.1, weight_decay=0.1, amsgrad=True),
    lambda ps: AdamW(ps, lr=0.1),
])
def test_grad_none_params_are_untouched_and_get_no_state(make_opt):
    params = make_params()
    opt = make_opt(params)
    before = [p.data.copy() for p in params]
    for step in range(3):
        set_grads(params, step)
        params[1].grad = None
        opt.step()
    np.testing.assert_array_equal(params[1].data, before[1])
    assert params[1] not in opt.state
    assert not np.array_equal(params[0].data, before[0])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_update_is_in_place_and_records_no_graph(dtype):
    params = make_params(dtype)
    arrays = [p.data for p in params]
    opt = Adam(params, lr=0.1)
    set_grads(params, 0)
    opt.step()
    for p, arr in zip(params, arrays):
        assert p.data is arr and p.data.dtype == dtype and p._ctx is None


def test_grad_is_not_modified_by_step():
    params = make_params(np.float64)
    opt = SGD(params, lr=0.1, momentum=0.9, weight_decay=0.5)
    set_grads(params, 0)
    grads = [p.grad.copy() for p in params]
    opt.step()
    opt.step()
    for p, g in zip(params, grads):
        np.testing.assert_array_equal(p.grad, g)


def test_closure_is_called_and_its_loss_returned():
    p = Parameter(np.ones(2))
    opt = SGD([p], lr=0.5)

    def closure():
        p.grad = 2 * p.data
        return 7.0

    assert opt.step(closure) == 7.0
    np.testing.assert_array_equal(p.data, [0.0, 0.0])


# -- state_dict ---------------------------------------------------------------------------------
def _assert_plain(obj):
    if isinstance(obj, dict):
        for k, v in obj.items():
            assert isinstance(k, (str, int))
            _assert_plain(v)
    elif isinstance(obj, list):
        for v in obj:
            _assert_plain(v)
    else:
        assert isinstance(obj, (bool, int, float, str, np.ndarray)), type(obj)
        assert not isinstance(obj, Tensor)


OPTIMIZERS = {
    "sgd": lambda ps: SGD([{"params": ps[:2]}, {"params": ps[2:], "lr": 0.05}], lr=0.1,
                          momentum=0.9, nesterov=True, weight_decay=1e-2),
    "adam": lambda ps: Adam([{"params": ps[:1]}, {"params": ps[1:], "lr": 0.02}], lr=0.01,
                            amsgrad=True, weight_decay=1e-2),
    "adamw": lambda ps: AdamW(ps, lr=0.01, betas=(0.8, 0.99)),
}


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_state_dict_is_plain_data_keyed_by_position(name):
    params = make_params()
    opt = OPTIMIZERS[name](params)
    set_grads(params, 0)
    opt.step()
    sd = opt.state_dict()
    _assert_plain(sd)
    assert sorted(sd["state"]) == [0, 1, 2]
    assert [i for g in sd["param_groups"] for i in g["params"]] == [0, 1, 2]
    # a copy: stepping again does not change the saved arrays
    saved = {k: v.copy() for k, v in sd["state"][0].items() if isinstance(v, np.ndarray)}
    set_grads(params, 1)
    opt.step()
    for k, v in saved.items():
        np.testing.assert_array_equal(sd["state"][0][k], v)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("name", OPTIMIZERS)
def test_state_dict_round_trip_continues_identically(name, dtype):
    params = make_params(dtype)
    opt = OPTIMIZERS[name](params)
    for step in range(3):
        set_grads(params, step)
        opt.step()
    sd = opt.state_dict()
    saved_data = [p.data.copy() for p in params]
    for step in range(3, 6):
        set_grads(params, step)
        opt.step()

    fresh = [Parameter(d.copy()) for d in saved_data]
    opt2 = OPTIMIZERS[name](fresh)
    opt2.load_state_dict(sd)
    for step in range(3, 6):
        set_grads(fresh, step)
        opt2.step()
    for p, q in zip(params, fresh):
        assert q.data.dtype == dtype
        np.testing.assert_array_equal(p.data, q.data)


def test_load_state_dict_accepts_hdf5_like_values():
    """String keys, NumPy scalars and list-valued betas (what an HDF5 reader gives back)."""
    params = make_params(np.float64)
    opt = Adam(params, lr=0.01)
    set_grads(params, 0)
    opt.step()
    sd = opt.state_dict()
    sd["state"] = {str(k): {n: (np.int64(v) if n == "step" else v) for n, v in e.items()}
                   for k, e in sd["state"].items()}
    sd["param_groups"][0]["lr"] = np.float64(0.01)
    sd["param_groups"][0]["params"] = np.arange(3)
    opt2 = Adam([Parameter(p.data.copy()) for p in params], lr=0.5)
    opt2.load_state_dict(sd)
    g = opt2.param_groups[0]
    assert g["lr"] == 0.01 and type(g["lr"]) is float and g["betas"] == (0.9, 0.999)
    assert all(type(s["step"]) is int for s in opt2.state.values())


def test_load_state_dict_restores_hyperparameters():
    params = make_params()
    opt = SGD(params, lr=0.3, momentum=0.7)
    opt2 = SGD(make_params(), lr=0.1)
    opt2.load_state_dict(opt.state_dict())
    assert opt2.param_groups[0]["lr"] == 0.3 and opt2.param_groups[0]["momentum"] == 0.7


def _trained(make, params):
    opt = make(params)
    set_grads(params, 0)
    opt.step()
    return opt


def test_load_state_dict_wrong_group_count():
    sd = _trained(lambda ps: SGD(ps, lr=0.1, momentum=0.9), make_params()).state_dict()
    ps = make_params()
    opt = SGD([{"params": ps[:1]}, {"params": ps[1:]}], lr=0.1, momentum=0.9)
    with pytest.raises(ValueError, match=r"1 parameter group\(s\), this optimizer has 2"):
        opt.load_state_dict(sd)


def test_load_state_dict_wrong_param_count():
    sd = _trained(lambda ps: SGD(ps, lr=0.1, momentum=0.9), make_params()).state_dict()
    opt = SGD(make_params()[:2], lr=0.1, momentum=0.9)
    with pytest.raises(ValueError, match=r"group 0: 3 parameter\(s\) saved, 2 in this optimizer"):
        opt.load_state_dict(sd)


def test_load_state_dict_wrong_shape_reports_all_and_changes_nothing():
    sd = _trained(lambda ps: Adam(ps, lr=0.1), make_params()).state_dict()
    ps = [Parameter(np.zeros((4, 3))), Parameter(np.zeros(5)), Parameter(np.zeros((2, 2)))]
    opt = Adam(ps, lr=0.7)
    with pytest.raises(ValueError) as err:
        opt.load_state_dict(sd)
    msg = str(err.value)
    assert "state[0]['exp_avg']: shape (3, 4) saved, the parameter has shape (4, 3)" in msg
    assert "state[0]['exp_avg_sq']" in msg
    assert opt.state == {} and opt.param_groups[0]["lr"] == 0.7


def test_load_state_dict_of_another_optimizer_type():
    sd = _trained(lambda ps: SGD(ps, lr=0.1, momentum=0.9), make_params()).state_dict()
    with pytest.raises(ValueError, match="betas"):
        Adam(make_params(), lr=0.1).load_state_dict(sd)


def test_load_state_dict_bad_index_and_bad_structure():
    sd = _trained(lambda ps: SGD(ps, lr=0.1, momentum=0.9), make_params()).state_dict()
    sd["state"][7] = sd["state"].pop(2)
    with pytest.raises(ValueError, match="parameter index 7"):
        SGD(make_params(), lr=0.1).load_state_dict(sd)
    with pytest.raises(ValueError, match="'state' and 'param_groups'"):
        SGD(make_params(), lr=0.1).load_state_dict({"state": {}})


def test_load_state_dict_with_bad_hyperparameter_raises():
    sd = SGD(make_params(), lr=0.1).state_dict()
    sd["param_groups"][0]["lr"] = -1.0
    opt = SGD(make_params(), lr=0.1)
    with pytest.raises(ValueError, match="lr must be >= 0.0, got -1.0"):
        opt.load_state_dict(sd)
    assert opt.param_groups[0]["lr"] == 0.1


def test_repr():
    assert "group 0: 3 params" in repr(SGD(make_params(), lr=0.1))
