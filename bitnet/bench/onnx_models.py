"""ONNX Runtime columns of ``bitnet bench model``: the PyTorch float twins exported to ONNX and run
by ONNX Runtime in float32 (``ort fp32``) and statically quantized to int8 (``ort int8``).

How, following ONNX Runtime's quantization guide for x86 CPUs:

- export: ``torch.onnx.export`` (the TorchScript exporter, ``dynamo=False``, which needs no
  onnxscript), opset 17, batch axis dynamic, the twin in eval mode (ONNX Runtime folds its batch
  norms into the convolutions when it loads the model);
- int8: ``quant_pre_process`` (shape inference and graph optimization), then ``quantize_static``
  in QDQ format, per-channel int8 weights, no ``reduce_range`` (the guide keeps it for CPUs
  without VNNI), MinMax calibration on real inputs read by a ``CalibrationDataReader``: 128 MNIST
  training images normalized as bitnet trains (``Normalize(MNIST_MEAN, MNIST_STD)``) for
  lenet-binary; for resnet18-binary (CIFAR shape, no CIFAR files here) standard-normal images,
  the same kind of input the benchmark times. ``calibration_source`` says which was used.
  Activations: uint8 (``"u8s8"``, the default) or int8 (``"s8s8"``, the guide's first choice).
  Measured with ONNX Runtime 1.32 on an AVX-512 VNNI Xeon: with S8S8 the CPU provider fuses only
  8 of the ResNet's 20 convolutions (each block's second one) into ``QLinearConv`` and leaves the
  other 12 and the 8 residual additions in float between QuantizeLinear / DequantizeLinear, about
  3x slower than U8S8, which it fuses completely (20 ``QLinearConv``, 8 ``QLinearAdd``; its u8 x s8 dot
  products are what VNNI's VPDPBUSD computes, so the guide's saturation caveat does not apply).
  So the column times the faster form; ``--ort-int8 s8s8`` times the other;
- sessions: ``intra_op_num_threads`` = the benchmark's threads, ``inter_op_num_threads`` 1,
  sequential execution, all graph optimizations, CPU execution provider.

Everything is written to a temporary directory that ``close()`` removes; nothing is cached.
Needs torch (for the export), onnx and onnxruntime: ``missing()`` says what is absent.
"""
from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
import warnings

import numpy as np

CALIBRATION_IMAGES = 128
CALIBRATION_BATCH = 16
INSTALL_HINT = ("pip install onnx onnxruntime, and torch for the export "
                "(CPU build: pip install torch --index-url https://download.pytorch.org/whl/cpu)")


def installed(module: str) -> bool:
    """Whether ``module`` can be imported (without importing it)."""
    return importlib.util.find_spec(module) is not None


def missing() -> str | None:
    """None when the ONNX Runtime columns can run, else why not (in words)."""
    absent = [m for m in ("torch", "onnx", "onnxruntime") if not installed(m)]
    if not absent:
        return None
    why = "; they need PyTorch to export the float twins to ONNX" if "torch" in absent else ""
    return f"{', '.join(absent)} not installed{why} ({INSTALL_HINT})"


def calibration_inputs(name, shape, data_dir=None, n=CALIBRATION_IMAGES):
    """``(images float32 (n, *shape), source)``: MNIST training images normalized as bitnet trains
    for the MNIST-shaped network, standard-normal images otherwise (or when MNIST is absent)."""
    if shape == (1, 28, 28):
        try:
            from bitnet.data import MNIST_MEAN, MNIST_STD, Normalize, load_mnist
            x, _ = load_mnist("train", data_dir=data_dir)
            return Normalize(MNIST_MEAN, MNIST_STD)(x[:n]).astype(np.float32), f"{n} MNIST training images"
        except Exception:  # noqa: BLE001 - the benchmark also runs without the data set
            pass
    x = np.random.default_rng(2).standard_normal((n,) + tuple(shape)).astype(np.float32)
    return x, f"{n} standard-normal images of shape {tuple(shape)} (no {name} data set here)"


def _reader(input_name, images):
    from onnxruntime.quantization import CalibrationDataReader

    class Reader(CalibrationDataReader):
        """Feeds the calibration images in batches of ``CALIBRATION_BATCH``."""

        def __init__(self):
            self.batches = iter([{input_name: images[i:i + CALIBRATION_BATCH]}
                                 for i in range(0, len(images), CALIBRATION_BATCH)])

        def get_next(self):
            return next(self.batches, None)
    return Reader()


class OrtModels:
    """One network's ONNX files (float32 and int8: ``int8`` is ``"u8s8"`` or ``"s8s8"``) in a
    temporary directory, and ONNX Runtime sessions on them for a given thread count."""

    def __init__(self, torch_model, name, shape, data_dir=None, int8="u8s8"):
        import torch
        from onnxruntime.quantization import QuantFormat, QuantType, quantize_static
        from onnxruntime.quantization.shape_inference import quant_pre_process
        self.dir = tempfile.mkdtemp(prefix="bitnet-bench-onnx-")
        try:
            self.fp32 = os.path.join(self.dir, f"{name}.onnx")
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notice
                torch.onnx.export(torch_model.eval(), (torch.zeros((1,) + tuple(shape)),), self.fp32,
                                  opset_version=17, dynamo=False, input_names=["x"], output_names=["y"],
                                  dynamic_axes={"x": {0: "batch"}, "y": {0: "batch"}})
            prepared = os.path.join(self.dir, f"{name}.prep.onnx")
            quant_pre_process(self.fp32, prepared)
            self.int8 = os.path.join(self.dir, f"{name}.int8.onnx")
            images, self.calibration_source = calibration_inputs(name, shape, data_dir)
            quantize_static(prepared, self.int8, _reader("x", images), quant_format=QuantFormat.QDQ,
                            per_channel=True, weight_type=QuantType.QInt8,
                            activation_type=QuantType.QUInt8 if int8 == "u8s8" else QuantType.QInt8)
            self.int8_format = int8
            self.calibration_images = images
        except BaseException:
            self.close()
            raise
        self._sessions = {}

    def sessions(self, threads) -> dict:
        """``{"ort fp32": session, "ort int8": session}`` running on ``threads`` threads."""
        if threads not in self._sessions:
            import onnxruntime as ort
            opts = ort.SessionOptions()
            opts.intra_op_num_threads = threads
            opts.inter_op_num_threads = 1
            opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
            opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
            self._sessions[threads] = {
                label: ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])
                for label, path in (("ort fp32", self.fp32), ("ort int8", self.int8))}
        return self._sessions[threads]

    def int8_agreement(self) -> float:
        """Fraction of the calibration images on which int8 and float32 pick the same class."""
        s = self.sessions(1)
        a = s["ort fp32"].run(None, {"x": self.calibration_images})[0].argmax(1)
        b = s["ort int8"].run(None, {"x": self.calibration_images})[0].argmax(1)
        return float(np.mean(a == b))

    def close(self) -> None:
        self._sessions = {}
        shutil.rmtree(self.dir, ignore_errors=True)
