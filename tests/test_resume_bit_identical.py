"""Checkpoints resume bit-identically: a MultiOptimizer's state (bop_and_adam) and every Dropout's
generator are saved and restored, so that training N steps, saving, and training M more gives exactly
what loading the file, restoring its training state and training the same M steps gives (weights,
buffers and optimizer state), through bitnet.save / load and through fit with ModelCheckpoint; older
files without the generator states still load (fresh dropout streams); what cannot be saved fails
before the first training step."""
from __future__ import annotations

import json

import h5py
import numpy as np
import pytest

import bitnet
from bitnet import functional as F
from bitnet import nn, optim
from bitnet.callbacks import ModelCheckpoint
from bitnet.data import DataLoader
from bitnet.io import BitnetFileError
from bitnet.optim import Adam, Bop, MultiOptimizer, WarmupCosine, bop_and_adam
from bitnet.tensor import Tensor
from bitnet.training import fit


def _model(dropout=True, shared=None):
    """A small binary net with batch norms and (one or two) Dropout layers; ``shared``: a Generator
    given to both Dropout layers (they then draw from one stream)."""
    def drop(seed):
        return nn.Dropout(0.3, rng=shared if shared is not None else seed) if dropout else nn.Identity()
    return nn.Sequential(nn.Conv2d(1, 4, 3, rng=0), nn.BatchNorm2d(4), drop(5),
                         nn.QConv2d(4, 4, 3, bias=False, rng=1), nn.BatchNorm2d(4), nn.Flatten(), drop(6),
                         nn.Dense(4 * 4 * 4, 3, rng=2))


def _optimizers(model, multi=True):
    opt = (bop_and_adam(model, lr=1e-2, threshold=1e-6, gamma=0.1) if multi
           else Adam(model.parameters(), lr=1e-2))
    return opt, WarmupCosine(opt, warmup_steps=2, total_steps=20)


def _batches(n, seed):
    rng = np.random.default_rng(seed)
    return [(rng.standard_normal((6, 1, 8, 8)).astype(np.float32), rng.integers(0, 3, 6)) for _ in range(n)]


def _train(model, opt, sched, batches):
    model.train()
    for x, y in batches:
        opt.zero_grad()
        F.cross_entropy(model(Tensor(x)), y).backward()
        opt.step()
        sched.step()


def _optimizer_states(opt) -> list:
    """Every inner optimizer's state dict (one for a plain optimizer)."""
    sd = opt.state_dict()
    return sd["optimizers"] if "optimizers" in sd else [sd]


def assert_same_training_state(m1, o1, s1, m2, o2, s2):
    """Parameters, buffers, optimizer states and schedule equal exactly."""
    a, b = m1.state_dict(), m2.state_dict()
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_array_equal(np.asarray(a[k]), np.asarray(b[k]), err_msg=k)
        assert np.asarray(a[k]).dtype == np.asarray(b[k]).dtype
    for x, y in zip(_optimizer_states(o1), _optimizer_states(o2), strict=True):
        assert x["param_groups"] == y["param_groups"]
        assert x["state"].keys() == y["state"].keys()
        for i in x["state"]:
            assert x["state"][i].keys() == y["state"][i].keys()
            for name, value in x["state"][i].items():
                np.testing.assert_array_equal(np.asarray(value), np.asarray(y["state"][i][name]),
                                              err_msg=f"state {i}.{name}")
    assert s1.state_dict() == s2.state_dict()


# -- through bitnet.save / bitnet.load ---------------------------------------------------------------------

@pytest.mark.parametrize("multi", [True, False], ids=["bop_and_adam", "adam"])
@pytest.mark.parametrize("dropout", [True, False], ids=["dropout", "no-dropout"])
def test_save_train_vs_load_train_is_bit_identical(tmp_path, multi, dropout):
    first, more = _batches(3, 1), _batches(4, 2)
    model = _model(dropout)
    opt, sched = _optimizers(model, multi)
    _train(model, opt, sched, first)
    path = tmp_path / "ckpt.h5"
    bitnet.save(model, path, optimizer=opt, scheduler=sched, epoch=1)
    _train(model, opt, sched, more)

    again = bitnet.load(path)
    opt2, sched2 = _optimizers(again, multi)
    state = bitnet.load_training_state(path)
    assert state.optimizer_class == type(opt).__name__
    assert state.optimizer_classes == (["Bop", "Adam"] if multi else None)
    assert (state.module_rngs is not None) == dropout
    state.restore(opt2, scheduler=sched2)
    _train(again, opt2, sched2, more)
    assert_same_training_state(model, opt, sched, again, opt2, sched2)
    if multi:
        assert isinstance(opt2, MultiOptimizer) and all(o.state for o in opt2.optimizers)


def test_the_dropout_stream_goes_on_where_it_was(tmp_path):
    """The loaded model's Dropout layers draw the masks the saved model's draw next."""
    model = _model()
    opt, sched = _optimizers(model)
    _train(model, opt, sched, _batches(2, 1))
    bitnet.save(model, tmp_path / "c.h5", optimizer=opt)
    again = bitnet.load(tmp_path / "c.h5")
    for key in ("2", "6"):
        assert again[int(key)].rng.bit_generator.state == model[int(key)].rng.bit_generator.state
        assert again[int(key)].rng.random() == model[int(key)].rng.random()
    with h5py.File(tmp_path / "c.h5") as f:
        saved = json.loads(f["training"].attrs["module_rngs"])
    assert saved["attributes"] == {"2.rng": 0, "6.rng": 1} and len(saved["generators"]) == 2


def test_a_shared_generator_is_shared_again_after_loading(tmp_path):
    model = _model(shared=np.random.default_rng(11))
    assert model[2].rng is model[6].rng
    opt, sched = _optimizers(model)
    more = _batches(3, 2)
    _train(model, opt, sched, _batches(2, 1))
    bitnet.save(model, tmp_path / "c.h5", optimizer=opt, scheduler=sched)
    _train(model, opt, sched, more)
    again = bitnet.load(tmp_path / "c.h5")
    assert again[2].rng is again[6].rng
    opt2, sched2 = _optimizers(again)
    bitnet.load_training_state(tmp_path / "c.h5").restore(opt2, scheduler=sched2)
    _train(again, opt2, sched2, more)
    assert_same_training_state(model, opt, sched, again, opt2, sched2)


def test_restore_gives_a_model_built_in_code_its_generators(tmp_path):
    """restore(model=) for a model not made by bitnet.load; all or nothing with the other parts."""
    model = _model()
    opt, sched = _optimizers(model)
    more = _batches(3, 2)
    _train(model, opt, sched, _batches(2, 1))
    bitnet.save(model, tmp_path / "c.h5", optimizer=opt, scheduler=sched)
    _train(model, opt, sched, more)

    built = _model()
    built.load_state_dict(bitnet.load(tmp_path / "c.h5").state_dict())
    generators = [built[2].rng, built[6].rng]
    opt2, sched2 = _optimizers(built)
    state = bitnet.load_training_state(tmp_path / "c.h5")
    state.restore(opt2, scheduler=sched2, model=built)
    assert [built[2].rng, built[6].rng] == generators  # set in place: same kind, not shared
    _train(built, opt2, sched2, more)
    assert_same_training_state(model, opt, sched, built, opt2, sched2)

    other = _model()
    before = [m.rng.bit_generator.state for m in (other[2], other[6])]
    opt3, _ = _optimizers(other)
    wrong_schedule = optim.StepLR(opt3, step_size=3)
    with pytest.raises(BitnetFileError, match="scheduler"):
        state.restore(opt3, scheduler=wrong_schedule, model=other)
    assert [m.rng.bit_generator.state for m in (other[2], other[6])] == before
    assert all(not o.state for o in opt3.optimizers)  # the optimizer restored first was put back
    with pytest.raises(BitnetFileError, match="generator attributes differ"):
        state.restore(model=_model(dropout=False))


def test_a_file_without_generator_states_still_loads_with_fresh_dropout_streams(tmp_path):
    """Files written before bitnet saved the Dropout generators: load, restore and resume; only the
    dropout masks differ from the uninterrupted run."""
    model = _model()
    opt, sched = _optimizers(model, multi=False)
    _train(model, opt, sched, _batches(2, 1))
    path = tmp_path / "old.h5"
    bitnet.save(model, path, optimizer=opt, scheduler=sched, epoch=1)
    with h5py.File(path, "r+") as f:
        del f["training"].attrs["module_rngs"]  # as an older bitnet wrote it
    again = bitnet.load(path)
    for k, v in model.state_dict().items():
        np.testing.assert_array_equal(again.state_dict()[k], v)
    state = bitnet.load_training_state(path)
    assert state.module_rngs is None and state.epoch == 1
    opt2, sched2 = _optimizers(again, multi=False)
    fresh = again[2].rng.bit_generator.state
    state.restore(opt2, scheduler=sched2, model=again)  # nothing to give the model: left as it is
    assert again[2].rng.bit_generator.state == fresh
    _train(again, opt2, sched2, _batches(1, 2))


def test_nested_multi_optimizers_are_flattened_and_saved(tmp_path):
    model = _model(dropout=False)
    binary, other = optim.split_parameters(model)
    multi = MultiOptimizer([MultiOptimizer([Bop(binary, threshold=1e-6, gamma=0.1)]), Adam(other, lr=1e-2)])
    assert [type(o) for o in multi.optimizers] == [Bop, Adam]
    sched = WarmupCosine(multi, warmup_steps=2, total_steps=20)
    _train(model, multi, sched, _batches(2, 1))
    bitnet.save(model, tmp_path / "c.h5", optimizer=multi)
    with h5py.File(tmp_path / "c.h5") as f:
        assert "optimizer" not in f["training"] and sorted(f["training/optimizers"]) == ["0", "1"]
        assert [f[f"training/optimizers/{i}"].attrs["class"] for i in "01"] == [b"Bop", b"Adam"]


def test_restore_names_an_optimizer_of_another_kind(tmp_path):
    model = _model(dropout=False)
    opt, sched = _optimizers(model)
    _train(model, opt, sched, _batches(1, 1))
    bitnet.save(model, tmp_path / "c.h5", optimizer=opt)
    state = bitnet.load_training_state(tmp_path / "c.h5")
    with pytest.raises(ValueError, match="a MultiOptimizer of Bop, Adam, got a Adam"):
        state.restore(Adam(model.parameters()))
    binary, other = optim.split_parameters(model)
    with pytest.raises(ValueError, match="of Bop, Adam, got a MultiOptimizer of Adam, Bop"):
        state.restore(MultiOptimizer([Adam(other), Bop(binary)]))
    with pytest.raises(BitnetFileError, match="training/optimizers"):  # same classes, other parameters
        state.restore(MultiOptimizer([Bop(other[:1]), Adam(other[1:] + binary)]))


# -- through fit and ModelCheckpoint ----------------------------------------------------------------------

def _loader(seed):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((40, 1, 8, 8)).astype(np.float32)
    y = rng.integers(0, 3, 40)
    return DataLoader((x, y), 8, shuffle=True, rng=seed)


def test_fit_with_model_checkpoint_resumes_bit_identically(tmp_path):
    """The original failure: fit with a MultiOptimizer and ModelCheckpoint trained an epoch, then raised.
    Now: a run of 3 epochs, and a run resumed from its epoch-1 checkpoint, end identical."""
    train = _loader(3)
    model = _model()
    opt, sched = _optimizers(model)
    ck = ModelCheckpoint(tmp_path / "run-{epoch}.h5", monitor="loss", rng=train.rng)
    fit(model, opt, train, epochs=3, scheduler=sched, callbacks=[ck], progress=False, log=None)
    assert [p.rsplit("/", 1)[1] for p in ck.saved] == ["run-1.h5", "run-2.h5", "run-3.h5"]

    again = bitnet.load(tmp_path / "run-1.h5")
    opt2, sched2 = _optimizers(again)
    train2 = _loader(99)  # another seed: the checkpoint's rng sets the data order
    state = bitnet.load_training_state(tmp_path / "run-1.h5")
    state.restore(opt2, train2.rng, sched2)
    fit(again, opt2, train2, epochs=3, start_epoch=state.epoch + 1, scheduler=sched2, progress=False, log=None,
        callbacks=[ModelCheckpoint(tmp_path / "resumed.h5", monitor="loss", rng=train2.rng)])
    assert_same_training_state(model, opt, sched, again, opt2, sched2)
    final = bitnet.load_training_state(tmp_path / "resumed.h5")
    assert final.rng == bitnet.load_training_state(tmp_path / "run-3.h5").rng == train.rng.bit_generator.state


class _Opaque(Adam):
    """An optimizer whose state_dict a checkpoint cannot hold."""

    def state_dict(self):
        return {"moments": {}}


class _OddBits(np.random.PCG64):
    """A bit generator that is not one of numpy's five by name."""


@pytest.mark.parametrize("case", ["optimizer", "schedule", "dropout generator", "loader generator"])
def test_what_cannot_be_saved_fails_before_the_first_step(tmp_path, case):
    model = _model()
    opt, sched = _optimizers(model, multi=False)
    rng = None
    if case == "optimizer":
        opt = _Opaque(model.parameters(), lr=1e-2)
        sched = None
        expected = "state_dict\\(\\) has the keys \\['moments'\\]"
    elif case == "schedule":
        sched.base_lrs = [float("nan")]
        expected = "schedule's state_dict\\(\\) is not plain JSON"
    elif case == "dropout generator":
        model[2].rng = np.random.Generator(_OddBits(0))
        expected = "2.rng is a Generator of a _OddBits bit generator"
    else:
        rng = np.random.Generator(_OddBits(0))
        expected = "rng is a Generator of a _OddBits"
    before = {k: np.array(v, copy=True) for k, v in model.state_dict().items()}
    steps = []
    with pytest.raises(TypeError, match=expected):
        fit(model, opt, _loader(0), epochs=1, scheduler=sched, progress=False, log=None, after_step=steps.append,
            callbacks=[ModelCheckpoint(tmp_path / "c.h5", monitor="loss", rng=rng)])
    assert steps == []
    for k, v in model.state_dict().items():
        np.testing.assert_array_equal(v, before[k])
    with pytest.raises(TypeError, match=expected):
        bitnet.save(model, tmp_path / "c.h5", optimizer=opt, scheduler=sched, rng=rng)
    assert not (tmp_path / "c.h5").exists()


@bitnet.nn.register("test-resume.LateNoise")
class LateNoise(nn.Module):
    """A module of one's own that makes its generator only when asked: the model ``load`` builds lacks it."""

    def __init__(self, width=4):
        super().__init__()
        self.width = width

    def forward(self, x):
        return x


def test_a_generator_the_rebuilt_model_lacks_is_refused_when_saving(tmp_path):
    model = nn.Sequential(nn.Dense(4, 4, rng=0), LateNoise())
    model[1].noise = np.random.default_rng(0)
    with pytest.raises(TypeError, match="1.noise holds a Generator, but a LateNoise built from its config"):
        bitnet.save(model, tmp_path / "c.h5", epoch=1)
    bitnet.save(model, tmp_path / "c.h5")  # no training state: no generators saved, nothing to refuse


# -- hostile files: every bad item a BitnetFileError naming it ----------------------------------------------

@pytest.fixture
def multi_ckpt(tmp_path):
    model = _model()
    opt, sched = _optimizers(model)
    _train(model, opt, sched, _batches(2, 1))
    path = tmp_path / "ckpt.h5"
    bitnet.save(model, path, optimizer=opt, scheduler=sched, epoch=1, rng=np.random.default_rng(0))
    return path


def _edit_json(name, change):
    def edit(f):
        f["training"].attrs[name] = np.bytes_(json.dumps(change(json.loads(f["training"].attrs[name]))))
    return edit


def _set_rngs(**items):
    return _edit_json("module_rngs", lambda v: {**v, **items})


def _replace(key, data):
    def edit(f):
        del f[key]
        f.create_dataset(key, data=data)
    return edit


RNGS = "training attribute 'module_rngs'"
MULTI = "training/optimizers"
BAD_FILES = {
    "module_rngs a list": (_edit_json("module_rngs", lambda v: [1]), RNGS, "an object with 'generators'"),
    "unknown attribute": (_set_rngs(attributes={"2.rng": 0, "6.rng": 1, "7.rng": 0}), "attributes",
                          "the model's generator attributes"),
    "attribute missing": (_set_rngs(attributes={"2.rng": 0}), "attributes", "the model's generator attributes"),
    "index out of range": (_set_rngs(attributes={"2.rng": 0, "6.rng": 5}), "attributes.6.rng", "an index in 0..1"),
    "index a bool": (_set_rngs(attributes={"2.rng": 0, "6.rng": True}), "attributes.6.rng", "an index"),
    "generator unused": (_set_rngs(attributes={"2.rng": 0, "6.rng": 0}), "attributes", "every generator held"),
    "too many generators": (_edit_json("module_rngs", lambda v: {**v, "generators": v["generators"] * 2}),
                            "generators", "a list of 1..2 generator states"),
    "state 2^200": (_edit_json("module_rngs", lambda v: {**v, "generators": [
        {**v["generators"][0], "state": {**v["generators"][0]["state"], "state": 2 ** 200}}, v["generators"][1]]}),
        "generators[0]", "PCG64"),
    "state of no generator": (_edit_json("module_rngs", lambda v: {**v, "generators": [
        {**v["generators"][0], "bit_generator": "os.system"}, v["generators"][1]]}), "generators[0]", "one of"),
    "optimizer and optimizers": (lambda f: f.copy(f[f"{MULTI}/1"], "training/optimizer"), MULTI, "both"),
    "inner group missing": (lambda f: f.move(f"{MULTI}/1", f"{MULTI}/7"), MULTI, "groups '0'..'n-1'"),
    "more optimizers than parameters": (lambda f: [f.copy(f[f"{MULTI}/1"], f"{MULTI}/{i}") for i in range(2, 40)],
                                        MULTI, "40 members"),
    "inner index out of range": (lambda f: f[f"{MULTI}/0"].attrs.__setitem__(
        "param_groups", np.bytes_(json.dumps([{"params": [70], "threshold": 1e-6, "gamma": 0.1}]))),
        f"{MULTI}/0 attribute 'param_groups'[0].params", "distinct indices"),
    "inner lists no parameter": (lambda f: f[f"{MULTI}/0"].attrs.__setitem__(
        "param_groups", np.bytes_(json.dumps([{"params": [], "threshold": 1e-6, "gamma": 0.1}]))),
        f"{MULTI}/0 attribute 'param_groups'", "at least one parameter"),
    "inner NaN moment": (_replace(f"{MULTI}/1/state/0/exp_avg", np.full((4, 1, 3, 3), np.nan, np.float32)),
                         f"{MULTI}/1/state/0/exp_avg", "finite"),
    "Bop step 0": (_replace(f"{MULTI}/0/state/0/step", np.int64(0)), f"{MULTI}/0/state/0/step", "step count"),
    "inner class missing": (lambda f: f[f"{MULTI}/1"].attrs.__delitem__("class"), f"{MULTI}/1 attribute 'class'",
                            "the optimizer's class name"),
    "inner state of no parameter": (lambda f: f.copy(f[f"{MULTI}/0/state/0"], f"{MULTI}/0/state/3"),
                                    f"{MULTI}/0/state/3", "index of a parameter"),
}


@pytest.mark.parametrize("case", BAD_FILES)
def test_bad_training_state_is_refused(case, multi_ckpt):
    edit, key, expected = BAD_FILES[case]
    with h5py.File(multi_ckpt, "r+") as f:
        edit(f)
    loaders = [bitnet.load_training_state]
    if RNGS in key or key.startswith(("attributes", "generators")):
        loaders.append(bitnet.load)  # load gives the model its generators: it checks them too
    for load in loaders:
        with pytest.raises(BitnetFileError) as err:
            load(multi_ckpt)
        msg = str(err.value)
        assert str(multi_ckpt) in msg and key in msg and expected in msg, msg


def test_the_optimizer_state_budget_is_shared_by_a_multi_optimizers_optimizers(tmp_path):
    """4 x the model's parameter bytes (+ 1 MiB) for all of a MultiOptimizer's state together: two
    optimizers each within it, together beyond it, are refused."""
    model = nn.Sequential(nn.Dense(256, 256, rng=0), nn.Dense(256, 256, rng=1))
    multi = MultiOptimizer([Adam(model[0].parameters()), Adam(model[1].parameters())])
    x = Tensor(np.ones((2, 256), np.float32))
    F.cross_entropy(model(x), np.array([0, 1])).backward()
    multi.step()
    path = tmp_path / "c.h5"
    bitnet.save(model, path, optimizer=multi)
    bitnet.load_training_state(path)
    budget = 4 * 2 * (256 * 256 + 256) * 4 + (1 << 20)
    with h5py.File(path, "r+") as f:
        for i in "01":
            f[f"{MULTI}/{i}"].attrs["class"] = np.bytes_(b"MyAdam")  # not one of bitnet's: any state names
            for j in range(3):  # each optimizer: 2 x 262,144 + 2 x 1,024 + 3 x 524,288 bytes, under the budget
                f[f"{MULTI}/{i}/state/0"].create_dataset(f"pad{j}", data=np.zeros((256, 256)))
        own = sum(d.size * d.dtype.itemsize for d in _datasets(f[f"{MULTI}/0"]))
        assert own < budget < 2 * own
    with pytest.raises(BitnetFileError, match=f"{MULTI}/1/state/0/.*optimizer state of at most 4 x"):
        bitnet.load_training_state(path)


def _datasets(group):
    out = []
    group.visititems(lambda name, obj: out.append(obj) if isinstance(obj, h5py.Dataset) else None)
    return out
