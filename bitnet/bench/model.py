"""``bitnet bench model``: whole-network inference, packed vs float, PyTorch and ONNX Runtime.

Networks: ``lenet-binary`` (1 x 28 x 28) and ``resnet18-binary`` (CIFAR shape, 3 x 32 x 32), at
batch 1 and 64, with batch-norm statistics from a few training-mode passes (so folding is not
trivial). Methods, all on the same standard-normal input batch and the same number of threads:

- ``packed``: ``bitnet.pack(model)``; ``bitnet float``: the same model in eval mode on the float
  path (``forward_on_bits`` off); threads: ``numba.set_num_threads`` (bitnet keeps BLAS
  single-threaded and runs its own threads, ``bitnet.kernels.threads``);
- ``torch float32`` (when PyTorch is installed): the float twin of the architecture in PyTorch
  (``bitnet.bench.torch_models``), eval mode, ``torch.no_grad``, ``torch.set_num_threads``;
- ``ort fp32`` and ``ort int8`` (when torch, onnx and onnxruntime are installed): that twin
  exported to ONNX and run by ONNX Runtime, float32 and statically quantized to int8
  (``bitnet.bench.onnx_models``: how, and on which calibration data);
- ``lce`` (when tensorflow, tf-keras, larq and larq-compute-engine are installed): the same binary
  network built in Larq with the same weights (``bitnet.bench.larq_models``), converted by the Larq
  Compute Engine and run by its interpreter with the thread count (channels-last input, transposed
  once before timing): how a Larq user deploys a binary network.

Each method's timed calls (``timing.time_calls``: alternating rounds, a pause and warm-up calls
before each block) give its median, p90, max and max / median; the ratios are another method's
median over this one's (> 1: this one is faster): ``x bitnet_float``, ``x torch``, ``x ort_int8`` and ``x lce``.
With ``busy`` > 0 that many busy-looping processes (``bitnet.bench.load``) run while the calls are
timed.
"""
from __future__ import annotations

import numpy as np

from bitnet.bench import onnx_models

NETWORKS = {"lenet-binary": (1, 28, 28), "resnet18-binary": (3, 32, 32)}
BATCHES = (1, 64)
RATIOS = {"bitnet float": "ratio_vs_bitnet_float", "torch float32": "ratio_vs_torch", "ort int8": "ratio_vs_ort_int8",
          "lce": "ratio_vs_lce"}


def _model(name, shape):
    import bitnet
    from bitnet.tensor import Tensor, no_grad
    m = bitnet.models.get(name, seed=0)
    rng = np.random.default_rng(0)
    m.train()
    with no_grad():
        for _ in range(2):
            m(Tensor(rng.standard_normal((16,) + shape).astype(np.float32)))
    return m.eval()


class Contenders:
    """Everything timed for one network, built once and reused for every batch and thread count.
    ``notes`` says which columns were skipped and why, and where ONNX Runtime's calibration
    data came from."""

    def __init__(self, name, torch_too=True, ort_too=True, data_dir=None, ort_int8="u8s8", lce_too=True):
        import bitnet
        self.name, self.shape, self.notes = name, NETWORKS[name], []
        model = _model(name, self.shape)
        self.packed = bitnet.pack(model, device="cpu")
        for m in model.modules():  # the float path proper: binary layers' forward in float GEMMs
            if hasattr(m, "forward_on_bits"):
                m.forward_on_bits = False
        self.model, self.torch_model, self.ort = model, None, None
        have_torch = onnx_models.installed("torch")
        if torch_too and not have_torch:
            self.notes.append("torch float32 skipped: PyTorch is not installed "
                              "(pip install torch --index-url https://download.pytorch.org/whl/cpu)")
        twin = None
        if have_torch and (torch_too or ort_too):
            import torch
            from bitnet.bench.torch_models import float_twin
            torch.manual_seed(0)
            twin = float_twin(name).eval()
            self.torch_model = twin if torch_too else None
        if ort_too:
            why = onnx_models.missing()
            if why:
                self.notes.append(f"ort fp32 / ort int8 skipped: {why}")
            else:
                self.ort = onnx_models.OrtModels(twin, name, self.shape, data_dir, ort_int8)
                self.notes.append(f"ort int8 ({ort_int8}, QDQ, per-channel) calibrated on "
                                  f"{self.ort.calibration_source}; same class as ort fp32 on "
                                  f"{100 * self.ort.int8_agreement():.1f}% of them")
        self.lce_twin, self._lce = None, {}
        if lce_too:
            from bitnet.bench import larq_models
            why = larq_models.missing(lce=True)
            if why:
                self.notes.append(f"lce skipped: {why}")
            else:
                self.lce_twin = larq_models.larq_twin(model, self.shape)
                self.notes.append("lce: the Larq twin (bitnet.bench.larq_models) converted by the Larq Compute "
                                  f"Engine; {self.lce_agreement()}")

    def methods(self, x, threads) -> dict:
        """``{method: callable}`` running each contender on ``x`` with ``threads`` threads."""
        import numba
        from bitnet.tensor import Tensor, no_grad
        numba.set_num_threads(threads)
        xt = Tensor(x)

        def run(m):
            with no_grad():
                return m(xt).data
        methods = {"packed": lambda: run(self.packed), "bitnet float": lambda: run(self.model)}
        if self.torch_model is not None:
            import torch
            torch.set_num_threads(threads)
            xtorch = torch.from_numpy(x)

            def run_torch():
                with torch.no_grad():
                    return self.torch_model(xtorch)
            methods["torch float32"] = run_torch
        if self.ort is not None:
            for label, sess in self.ort.sessions(threads).items():
                methods[label] = lambda s=sess: s.run(None, {"x": x})
        if self.lce_twin is not None:
            from bitnet.bench import larq_models
            interpreter, nhwc = self.lce(threads), larq_models.to_nhwc(x)
            methods["lce"] = lambda: interpreter.predict(nhwc)
        return methods

    def lce(self, threads):
        """The LCE interpreter of the twin with ``threads`` threads (made once per thread count)."""
        if threads not in self._lce:
            from bitnet.bench import larq_models
            self._lce[threads] = larq_models.lce_interpreter(self.lce_twin, threads)
        return self._lce[threads]

    def lce_agreement(self, n=64) -> str:
        """How the LCE model's outputs compare with the bitnet float model's on ``n`` standard-normal
        inputs: same class, largest |difference| (float rounding, and the LCE's own rounding of its
        folded batch norms, where a value within it of 0 takes the other sign)."""
        from bitnet.bench import larq_models
        from bitnet.tensor import Tensor, no_grad
        x = np.random.default_rng(2).standard_normal((n,) + self.shape).astype(np.float32)
        with no_grad():
            ours = self.model(Tensor(x)).data
        theirs = self.lce(1).predict(larq_models.to_nhwc(x))
        same = float(np.mean(ours.argmax(1) == theirs.argmax(1)))
        return f"same class as bitnet float on {100 * same:.1f}% of {n} inputs, largest |difference| " \
               f"{float(np.abs(ours - theirs).max()):.3g}"

    def close(self) -> None:
        if self.ort is not None:
            self.ort.close()


def bench_network(contenders, batch, rounds, repeats, threads, busy=0):
    """Records of one network at one batch size and thread count (see the module docstring)."""
    from bitnet.bench import load
    from bitnet.bench.timing import records_for, time_calls
    name, shape = contenders.name, contenders.shape
    x = np.random.default_rng(1).standard_normal((batch,) + shape).astype(np.float32)
    methods = contenders.methods(x, threads)
    # packed vs float outputs: equal up to float rounding, except where a value within rounding of
    # 0 took the other sign before a binary layer (it happens at this scale; docs/benchmarks.md)
    diff = float(np.abs(methods["packed"]() - methods["bitnet float"]()).max())
    with load.busy(busy):
        calls = time_calls(methods, rounds, repeats)
    med = {m: float(np.median(ts)) for m, ts in calls.items()}
    recs = records_for(f"{name} batch {batch}, {threads} thr", med, "bitnet float",
                       ratio_key="ratio_vs_bitnet_float", calls=calls, network=name, batch=batch,
                       threads=threads, busy=busy, max_abs_diff_vs_float=diff)
    for ref, key in RATIOS.items():
        if ref in med and key != "ratio_vs_bitnet_float":
            for r in recs:
                r[key] = med[ref] / r["median_s"]
    return recs
