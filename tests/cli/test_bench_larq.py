"""The Larq side of `bitnet bench train` and `bitnet bench model` (``bitnet.bench.larq_models``): the
Keras twin computes the bitnet model's function from its weights (outputs, and in training mode the
loss and the gradients), Larq's step trains it, and the options that bring Larq in say clearly what
is wrong. Larq needs TensorFlow and NumPy < 2, so the twin's tests run only where it is installed
(a virtual environment of its own: docs/benchmarks.md, "Against Larq"); CI runs the others."""
from __future__ import annotations

import importlib.util
import sys

import numpy as np
import pytest

import bitnet
from bitnet import Tensor
from bitnet import functional as F
from bitnet.bench import larq_models, train
from bitnet.cli import main

HAVE_LARQ = larq_models.missing() is None
needs_larq = pytest.mark.skipif(not HAVE_LARQ, reason="tensorflow, tf-keras and larq are not installed")


def test_missing_names_every_absent_package_and_the_numpy_pin(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name in ("larq", "larq_compute_engine") else real(name, *a))
    why = larq_models.missing(lce=True)
    assert "larq, larq_compute_engine not installed" in why and "NumPy < 2" in why
    assert "larq" not in train.default_frameworks()
    assert train.default_frameworks(larq_python=sys.executable)[-1] == "larq"


def test_the_report_says_why_larq_is_not_measured(monkeypatch):
    monkeypatch.setattr(larq_models, "missing", lambda lce=False: "larq not installed (...)")
    why = train._larq_absent(None)
    assert why.startswith("Larq is not measured: larq not installed") and "--larq-python PYTHON" in why
    assert train._larq_absent(sys.executable) == "Larq not measured (--no-larq)"  # given, then left out
    monkeypatch.setattr(larq_models, "missing", lambda lce=False: None)
    assert train._larq_absent(None) == "Larq not measured (--no-larq)"


def test_larq_python_must_be_an_executable_file(tmp_path, capsys):
    not_executable = tmp_path / "python"
    not_executable.write_text("")
    for bad in (str(tmp_path / "absent"), str(not_executable)):
        with pytest.raises(SystemExit) as e:
            main(["bench", "train", "--larq-python", bad])
        assert e.value.code == 2
        err = capsys.readouterr().err
        assert "expected an executable Python interpreter" in err and repr(bad) in err


def test_no_larq_and_larq_python_together_is_refused(capsys):
    assert main(["bench", "train", "--no-larq", "--larq-python", sys.executable]) != 0
    assert "--larq-python runs the Larq worker, --no-larq skips it" in capsys.readouterr().err


# -- the twin (where Larq is installed) -------------------------------------------------------------

def _twin_case(name):
    if name == "lenet-binary":
        return bitnet.models.get(name, seed=3), (1, 28, 28)
    return bitnet.models.get("resnet18-binary", image_size=8, seed=3), (3, 8, 8)


def _warm(model, shape, rng):
    model.train()
    with bitnet.no_grad():
        model(Tensor(rng.standard_normal((8,) + shape).astype(np.float32)))
    return model


@needs_larq
@pytest.mark.parametrize("name", ["lenet-binary", "resnet18-binary"])
def test_the_twin_computes_the_bitnet_model(name):
    """Eval mode with running statistics: float rounding apart, the same outputs (a sign flip at a
    near-tie would show as a large difference; these inputs have none)."""
    rng = np.random.default_rng(0)
    model, shape = _twin_case(name)
    _warm(model, shape, rng)
    twin = larq_models.larq_twin(model, shape)
    x = rng.standard_normal((4,) + shape).astype(np.float32)
    assert larq_models.check_twin(model, twin, x) < 1e-4
    clipped = [layer for layer in twin.layers if type(layer).__name__ in ("QuantConv2D", "QuantDense")]
    expected = {"lenet-binary": 2, "resnet18-binary": 16}[name]
    assert len(clipped) == expected and all(layer.kernel_constraint is not None for layer in clipped)


@needs_larq
def test_the_twin_has_bitnets_training_loss_and_gradients():
    """Training mode (batch statistics), the same loss; the first convolution's and the binary dense
    layer's gradients equal bitnet's to float32 rounding of sums over the batch."""
    tf = larq_models._tf()
    rng = np.random.default_rng(1)
    model, shape = _twin_case("lenet-binary")
    twin = larq_models.larq_twin(model, shape)
    x = rng.standard_normal((16,) + shape).astype(np.float32)
    y = rng.integers(0, 10, 16)
    model.train()
    loss = F.cross_entropy(model(Tensor(x)), y)
    loss.backward()
    with tf.GradientTape() as tape:
        logits = twin(larq_models.to_nhwc(x), training=True)
        theirs = tf.reduce_mean(tf.keras.losses.sparse_categorical_crossentropy(y, logits, from_logits=True))
    grads = tape.gradient(theirs, twin.trainable_weights)
    assert float(theirs) == pytest.approx(float(loss.data), rel=1e-5)
    by_shape = {tuple(v.shape): g.numpy() for v, g in zip(twin.trainable_weights, grads)}
    conv0 = np.transpose(model[0].weight.grad, (2, 3, 1, 0))
    np.testing.assert_allclose(by_shape[conv0.shape], conv0, rtol=1e-3, atol=1e-5 * np.abs(conv0).max())
    dense_grad = model[13].weight.grad.T  # the float classifier (1000 -> 10)
    np.testing.assert_allclose(by_shape[dense_grad.shape], dense_grad, rtol=1e-3, atol=1e-5 * np.abs(dense_grad).max())


@needs_larq
def test_the_larq_worker_trains(data_dir):
    """``bitnet bench train``'s Larq worker (its own process, as the bench runs it): steps on MNIST whose
    loss falls."""
    worker = train.Worker("larq", "lenet-binary", 64, 1, data_dir)
    try:
        assert worker.info["source"] == "mnist"
        reply = worker.run(12)
    finally:
        worker.close()
    losses = reply["losses"]
    assert len(reply["times"]) == 12 and all(np.isfinite(losses))
    assert np.mean(losses[-3:]) < np.mean(losses[:3])


@needs_larq
def test_lce_runs_the_twin_with_bitnets_outputs():
    pytest.importorskip("larq_compute_engine")
    from bitnet.bench.model import Contenders
    c = Contenders("lenet-binary", torch_too=False, ort_too=False)
    note = [n for n in c.notes if n.startswith("lce:")]
    assert note and "same class as bitnet float on 100.0% of 64 inputs" in note[0], c.notes
    x = np.random.default_rng(3).standard_normal((2, 1, 28, 28)).astype(np.float32)
    out = c.methods(x, 1)["lce"]()
    with bitnet.no_grad():
        np.testing.assert_allclose(out, c.model(Tensor(x)).data, atol=1e-4)


def test_the_larq_columns_are_skipped_with_a_reason_where_larq_is_absent():
    if HAVE_LARQ and importlib.util.find_spec("larq_compute_engine"):
        pytest.skip("Larq is installed here")
    from bitnet.bench.model import Contenders
    c = Contenders("lenet-binary", torch_too=False, ort_too=False)
    assert any(n.startswith("lce skipped:") and "not installed" in n for n in c.notes), c.notes
    assert "lce" not in c.methods(np.zeros((1, 1, 28, 28), np.float32), 1)
