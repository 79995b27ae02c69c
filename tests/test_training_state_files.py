"""bitnet.load_training_state / TrainingState.restore on hostile checkpoints: every bad optimizer state
array, scheduler, RNG or param_groups value is a BitnetFileError naming the key (never an
OverflowError, AttributeError, ZeroDivisionError or KeyError), and a failed restore changes nothing."""
from __future__ import annotations

import copy
import json

import h5py
import numpy as np
import pytest

import bitnet
from bitnet import functional as F
from bitnet import nn
from bitnet.io import BitnetFileError
from bitnet.tensor import Tensor

STATE = "training/optimizer/state"


def _setup():
    model = nn.Sequential(nn.Conv2d(1, 4, 3, rng=0), nn.BatchNorm2d(4), nn.Flatten(), nn.Dense(4 * 6 * 6, 3, rng=1))
    opt = bitnet.optim.Adam(model.parameters(), lr=1e-2)
    sched = bitnet.optim.WarmupCosine(opt, warmup_steps=2, total_steps=10)
    return model, opt, sched


def _step(model, opt, sched, rng):
    x = Tensor(rng.standard_normal((5, 1, 8, 8)).astype(np.float32))
    opt.zero_grad()
    F.cross_entropy(model(x), Tensor(rng.integers(0, 3, 5))).backward()
    opt.step()
    sched.step()


@pytest.fixture
def ckpt(tmp_path):
    model, opt, sched = _setup()
    rng = np.random.default_rng(1)
    _step(model, opt, sched, rng)
    path = tmp_path / "ckpt.h5"
    bitnet.save(model, path, optimizer=opt, epoch=1, rng=rng, scheduler=sched)
    return path


def _replace(f, key, data, **kw):
    del f[key]
    f.create_dataset(key, data=data, **kw)


def _param_shape_data(f, dtype):
    return np.zeros(f[f"{STATE}/0/exp_avg"].shape, dtype)


def _json_attr(group, name, change):
    def edit(f):
        text = change(json.loads(f[group].attrs[name])) if callable(change) else change
        f[group].attrs[name] = np.bytes_(text if isinstance(text, str) else json.dumps(text))
    return edit


def _set(d, path, value):
    d = copy.deepcopy(d)
    target = d
    for k in path[:-1]:
        target = target[k]
    target[path[-1]] = value
    return d


def _nan(f):
    data = f[f"{STATE}/0/exp_avg"][()]
    data.flat[3] = np.nan
    _replace(f, f"{STATE}/0/exp_avg", data)


def _vlen(f):
    del f[f"{STATE}/0/exp_avg"]
    f.create_dataset(f"{STATE}/0/exp_avg", shape=(4,), dtype=h5py.string_dtype())


LOAD_ERRORS = {
    # optimizer state arrays: dtypes, values, names, shapes, counts
    "NaN moment": (_nan, f"{STATE}/0/exp_avg", "finite"),
    "infinite moment": (lambda f: _replace(f, f"{STATE}/1/exp_avg", np.full(4, np.inf, np.float32)),
                        f"{STATE}/1/exp_avg", "finite"),
    "negative second moment": (lambda f: _replace(f, f"{STATE}/1/exp_avg_sq", -np.ones(4, np.float32)),
                               f"{STATE}/1/exp_avg_sq", ">= 0"),
    "negative step": (lambda f: _replace(f, f"{STATE}/0/step", np.int64(-1)), f"{STATE}/0/step", "step count"),
    "step 0": (lambda f: _replace(f, f"{STATE}/0/step", np.int64(0)), f"{STATE}/0/step", "step count"),
    "step 1.5": (lambda f: _replace(f, f"{STATE}/0/step", np.float64(1.5)), f"{STATE}/0/step", "step count"),
    "complex state": (lambda f: _replace(f, f"{STATE}/0/exp_avg", _param_shape_data(f, np.complex64)),
                      f"{STATE}/0/exp_avg", "plain numbers"),
    "S4096 state": (lambda f: _replace(f, f"{STATE}/0/exp_avg", _param_shape_data(f, "S4096")),
                    f"{STATE}/0/exp_avg", "plain numbers"),
    "compound state": (lambda f: _replace(f, f"{STATE}/0/exp_avg", _param_shape_data(f, [("a", "f4"), ("b", "i4")])),
                       f"{STATE}/0/exp_avg", "plain numbers"),
    "array dtype state": (lambda f: (f.__delitem__(f"{STATE}/1/exp_avg"), f.create_dataset(
        f"{STATE}/1/exp_avg", shape=(4,), dtype=np.dtype(("f4", (4096,))))), f"{STATE}/1/exp_avg", "plain numbers"),
    "variable-length state": (_vlen, f"{STATE}/0/exp_avg", "plain numbers"),
    "missing exp_avg": (lambda f: f.__delitem__(f"{STATE}/0/exp_avg"), f"{STATE}/0/exp_avg", "nothing"),
    "unknown state name": (lambda f: f.create_dataset(f"{STATE}/0/evil", data=np.zeros(3)), f"{STATE}/0/evil",
                           "state names of Adam"),
    "shape of no parameter": (lambda f: _replace(f, f"{STATE}/0/exp_avg", np.zeros((4, 9), np.float32)),
                              f"{STATE}/0/exp_avg", "shaped as one of the model's parameters"),
    "state of no parameter": (lambda f: f.copy(f[f"{STATE}/0"], f"{STATE}/99"), f"{STATE}/99", "index of a parameter"),
    "too many state arrays": (lambda f: [f.create_dataset(f"{STATE}/0/x{i}", data=0.0) for i in range(9)],
                              f"{STATE}/0", "at most 8 datasets"),
    # JSON attributes and the epoch
    "param_groups an object": (_json_attr("training/optimizer", "param_groups", lambda g: g[0]),
                               "param_groups", "a list of parameter groups"),
    "param_groups index out of range": (_json_attr("training/optimizer", "param_groups",
                                                   lambda g: _set(g, [0, "params", 0], 99)),
                                        "param_groups'[0].params", "distinct indices in 0..5"),
    "param_groups index twice": (_json_attr("training/optimizer", "param_groups",
                                            lambda g: _set(g, [0, "params", 1], 0)), "params", "distinct"),
    "param_groups lr infinite": (_json_attr("training/optimizer", "param_groups",
                                            lambda g: json.dumps(_set(g, [0, "lr"], 0.5)).replace("0.5", "1e400")),
                                 "param_groups'[0].lr", "a finite number"),
    "scheduler last_epoch infinite": (_json_attr("training", "scheduler",
                                                 lambda s: json.dumps(s).replace('"last_epoch": 1', '"last_epoch": 1e400')),
                                      "scheduler'.last_epoch", "a finite number"),
    "scheduler last_epoch 2^200": (_json_attr("training", "scheduler", lambda s: _set(s, ["last_epoch"], 2 ** 200)),
                                   "scheduler'.last_epoch", "within +-2^53"),
    "scheduler not an object": (_json_attr("training", "scheduler", [1, 2]), "scheduler", "'type'"),
    "rng state 2^200": (_json_attr("training", "rng", lambda r: _set(r, ["state", "state"], 2 ** 200)),
                        "rng", "PCG64"),
    "rng state negative": (_json_attr("training", "rng", lambda r: _set(r, ["state", "inc"], -1)), "rng",
                           "non-negative integer"),
    "rng state a float": (_json_attr("training", "rng", lambda r: _set(r, ["state", "state"], 1.5)), "rng",
                          "non-negative integer"),
    "rng has_uint32 5": (_json_attr("training", "rng", lambda r: _set(r, ["has_uint32"], 5)), "has_uint32", "0 or 1"),
    "rng of another kind": (_json_attr("training", "rng", lambda r: _set(r, ["bit_generator"], "os.system")), "rng",
                            "one of"),
    "negative epoch": (lambda f: f["training"].attrs.__setitem__("epoch", -1), "epoch", "0.."),
}


@pytest.mark.parametrize("case", LOAD_ERRORS)
def test_bad_training_state_is_refused_at_load(case, ckpt):
    edit, key, expected = LOAD_ERRORS[case]
    with h5py.File(ckpt, "r+") as f:
        edit(f)
    with pytest.raises(BitnetFileError) as err:
        bitnet.load_training_state(ckpt)
    msg = str(err.value)
    assert str(ckpt) in msg and key in msg and expected in msg, msg


def _snapshot(opt, sched, rng):
    sd = opt.state_dict()
    return (json.dumps(sd["param_groups"]), {i: {k: np.asarray(v).tolist() for k, v in e.items()}
                                             for i, e in sd["state"].items()},
            json.dumps(sched.state_dict()), json.dumps(rng.bit_generator.state))


RESTORE_ERRORS = {
    "lr a string": (_json_attr("training/optimizer", "param_groups", lambda g: _set(g, [0, "lr"], "x")),
                    "training/optimizer", "lr must be a real number"),
    "betas out of range": (_json_attr("training/optimizer", "param_groups", lambda g: _set(g, [0, "betas"], [2, 0.5])),
                           "training/optimizer", "betas[0] must be in [0.0, 1.0)"),
    "moments of another parameter's shape": (
        lambda f: _replace(f, f"{STATE}/1/exp_avg", np.zeros((3,), np.float32)), "training/optimizer",
        "shape (3,) saved, the parameter has shape (4,)"),
    "scheduler T_max 0": (_json_attr("training", "scheduler", lambda s: _set(s, ["total_steps"], 0)),
                          "scheduler", "total_steps must be an integer >= 1"),
    "scheduler of another kind": (_json_attr("training", "scheduler", lambda s: _set(s, ["type"], "StepLR")),
                                  "scheduler", "is of a StepLR"),
    "scheduler lrs for two groups": (_json_attr("training", "scheduler", lambda s: _set(s, ["base_lrs"], [0.1, 0.1])),
                                     "scheduler", "base_lrs has 2 entries"),
}


@pytest.mark.parametrize("case", RESTORE_ERRORS)
def test_a_failed_restore_changes_nothing(case, ckpt):
    edit, key, expected = RESTORE_ERRORS[case]
    with h5py.File(ckpt, "r+") as f:
        edit(f)
    state = bitnet.load_training_state(ckpt)  # well-formed: what does not fit shows when restoring
    model, opt, sched = _setup()
    rng = np.random.default_rng(7)
    _step(model, opt, sched, rng)  # some state of its own, which must survive the failed restore
    before = _snapshot(opt, sched, rng)
    with pytest.raises(BitnetFileError) as err:
        state.restore(opt, rng, sched)
    msg = str(err.value)
    assert str(ckpt) in msg and key in msg and expected in msg, msg
    assert _snapshot(opt, sched, rng) == before


def test_a_good_checkpoint_restores_everything(ckpt):
    state = bitnet.load_training_state(ckpt)
    model, opt, sched = _setup()
    rng = np.random.default_rng(7)
    state.restore(opt, rng, sched)
    with h5py.File(ckpt) as f:
        assert rng.bit_generator.state == json.loads(f["training"].attrs["rng"])
        assert sched.state_dict() == json.loads(f["training"].attrs["scheduler"])
    assert state.epoch == 1 and all(s["step"] == 1 for s in opt.state.values())


@pytest.mark.parametrize("value", [np.nan, np.inf])
def test_a_diverged_optimizer_is_not_saved(value, tmp_path):
    model, opt, sched = _setup()
    _step(model, opt, sched, np.random.default_rng(0))
    next(iter(opt.state.values()))["exp_avg"].flat[0] = value
    with pytest.raises(ValueError, match="optimizer state 0.exp_avg holds 1 NaN or infinite values"):
        bitnet.save(model, tmp_path / "c.h5", optimizer=opt, epoch=1)
    assert not (tmp_path / "c.h5").exists()
