"""Packed models on the GPU (``bitnet.pack(model, device="cuda")``) against the same packed models on
the CPU, run under Numba's CUDA simulator by tests/gpu/test_cuda_model.py (or on a real GPU:
``python tests/gpu/cuda_model_checks.py``). A model whose every layer is binary (sign activations,
binary convolutions and dense layers, folded batch norms) must give identical outputs; models with
float layers (convolution, dense, pooling) agree within float32 rounding. Tiny shapes: the simulator
runs one Python thread per CUDA thread."""
from __future__ import annotations

import os
import sys
import tempfile

import numpy as np

import bitnet
import bitnet.backend
from bitnet import nn
from bitnet.tensor import Tensor, no_grad

rng = np.random.default_rng(0)


def _stats(model):
    """Non-trivial batch-norm statistics, so folding is not an identity."""
    for m in model.modules():
        if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
            c = m.num_features
            m.running_mean[...] = rng.standard_normal(c).astype(np.float32)
            m.running_var[...] = rng.uniform(0.5, 2.0, c).astype(np.float32)
            m.weight.data[...] = rng.standard_normal(c).astype(np.float32)
            m.bias.data[...] = rng.standard_normal(c).astype(np.float32)
    return model.eval()


def _compare(model, x, exact, what, binary_kernels=None):
    cpu = bitnet.pack(model)
    gpu = bitnet.pack(model, device="cuda", binary_kernels=binary_kernels)
    with no_grad():
        want = cpu(Tensor(x)).data
    got = gpu(x).data
    if got.shape != want.shape:
        raise AssertionError(f"{what}: GPU output {got.shape}, CPU {want.shape}")
    if exact:
        if not np.array_equal(got, want):
            raise AssertionError(f"{what}: {int(np.sum(got != want))} of {want.size} outputs differ from the CPU's "
                                 f"(max {np.abs(got - want).max()})")
    else:
        # float layers sum in another order than the CPU's BLAS: float32 rounding of sums of at most
        # a few hundred terms of size ~1, carried through a few layers; a sign flip before a binary
        # layer would show as an error of ~2 * |scale|, far above this
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4, err_msg=what)
    return gpu


def binary_sequential():
    sign = dict(act_bit=1)
    return _stats(nn.Sequential(
        nn.QActivation(1),
        nn.QConv2d(3, 70, 3, padding=1, bias=False, pad_value=-1, rng=rng, **sign), nn.BatchNorm2d(70),
        nn.QActivation(1),
        nn.QConv2d(70, 16, 3, stride=2, padding=1, bias=False, pad_value=0, rng=rng, **sign), nn.BatchNorm2d(16),
        nn.QActivation(1),
        nn.QConv2d(16, 8, 1, groups=2, bias=True, rng=rng, **sign),
        nn.QActivation(1),
        nn.Flatten(),
        nn.QDense(8 * 3 * 2, 10, bias=True, rng=rng, **sign), nn.BatchNorm1d(10)))


def check_binary_sequential():
    model = binary_sequential()
    x = rng.standard_normal((2, 3, 5, 4)).astype(np.float32)
    gpu = _compare(model, x, exact=True, what="binary Sequential")
    # the model keeps its activation buffers between calls: other batch sizes, then the first again
    cpu = bitnet.pack(model)
    outs = []
    for xi in (x[:1], rng.standard_normal((3, 3, 5, 4)).astype(np.float32), x):
        got, want = gpu(xi).data, cpu(Tensor(xi)).data
        if not np.array_equal(got, want):
            raise AssertionError(f"a repeated call with batch {len(xi)} differs from the CPU")
        outs.append(got)
    held = gpu.run_device(bitnet.backend.cuda_module().to_device(x))
    gpu(x[:1])
    if not np.array_equal(held.copy_to_host(), outs[2]):
        raise AssertionError("run_device's result was overwritten by the next call")
    if gpu.packed_layers != bitnet.pack(model).packed_layers or len(gpu.packed_layers) != 4:
        raise AssertionError(f"packed layers {gpu.packed_layers}")
    empty = gpu(x[:0]).data  # an empty batch: the output of none, with the shape of one's
    if empty.shape != (0,) + outs[0].shape[1:] or empty.dtype != outs[0].dtype:
        raise AssertionError(f"an empty batch gave {empty.dtype} {empty.shape}")


def check_float_and_binary_sequential():
    model = nn.Sequential(  # lenet-binary's layer kinds, small
        nn.Conv2d(1, 8, 3, rng=rng), nn.BatchNorm2d(8), nn.Tanh(), nn.MaxPool2d(2),
        nn.QActivation(1), nn.QConv2d(8, 16, 3, padding=1, bias=False, rng=rng), nn.BatchNorm2d(16),
        nn.AvgPool2d(2), nn.Flatten(), nn.QActivation(1), nn.QDense(16, 12, rng=rng), nn.BatchNorm1d(12),
        nn.HardTanh(), nn.ReLU(), nn.Dense(12, 3, rng=rng))
    x = rng.standard_normal((2, 1, 6, 6)).astype(np.float32)
    _compare(_stats(model), x, exact=False, what="float + binary Sequential")
    model = nn.Sequential(  # PyTorch's pooling options and an affine=False batch norm folded into a binary layer
        nn.Conv2d(1, 8, 3, rng=rng), nn.MaxPool2d(2, ceil_mode=True),
        nn.QConv2d(8, 8, 3, padding=1, bias=False, rng=rng), nn.BatchNorm2d(8, affine=False),
        nn.AvgPool2d(3, 2, padding=1, ceil_mode=True, count_include_pad=False), nn.Flatten(), nn.Dense(8 * 2 * 2, 3, rng=rng))
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean[...] = rng.standard_normal(8).astype(np.float32)
    x = rng.standard_normal((2, 1, 7, 7)).astype(np.float32)
    _compare(model.eval(), x, exact=False, what="ceil_mode / count_include_pad / affine=False")


def check_resnets():
    from bitnet.models.resnet import ResNet
    for shortcuts in (True, False):  # BMXNet's binary 1x1 shortcut; Bi-Real's avg-pool + float 1x1
        model = ResNet(blocks=(1, 1), binary_stages=(1, 2), binary_shortcuts=shortcuts, num_classes=5, seed=1)
        x = rng.standard_normal((2, 3, 4, 4)).astype(np.float32)
        _compare(_stats(model), x, exact=False, what=f"ResNet binary_shortcuts={shortcuts}")
    # an odd map before the downsampling: the avg-pool shortcut's last window clipped (ceil mode)
    model = ResNet(blocks=(1, 1), binary_stages=(1, 2), num_classes=5, seed=2, stem_relu=False)
    _compare(_stats(model), rng.standard_normal((1, 3, 5, 3)).astype(np.float32), exact=False,
             what="ResNet on a 5x3 map")
    # blocks that stay unpacked run from their forward_program (bitnet.packed.lowering): a float stage
    # 1 before a binary stage 2 (BMXNet's partially binarized models), and a float ResNet whose
    # downsampling shortcut is a strided float 1x1 convolution
    for stages, what in (((2,), "ResNet with a float stage 1"), ((), "float ResNet")):
        model = ResNet(blocks=(1, 1), binary_stages=stages, num_classes=5, seed=3)
        _compare(_stats(model), rng.standard_normal((2, 3, 4, 4)).astype(np.float32), exact=False, what=what)


def check_tensor_core_kernels():
    """The binary layers on the 1-bit MMA (emulated in the simulator): one launch per convolution
    group, bit-identical to the CPU packed model; the ResNet's float layers as before."""
    x = rng.standard_normal((2, 3, 5, 4)).astype(np.float32)
    gpu = _compare(binary_sequential(), x, exact=True, what="binary Sequential on the MMA", binary_kernels="mma")
    if gpu.binary_kernels != "mma":
        raise AssertionError(f"binary_kernels={gpu.binary_kernels!r}")
    from bitnet.models.resnet import ResNet
    model = ResNet(blocks=(1, 1), binary_stages=(1, 2), binary_shortcuts=True, num_classes=5, seed=1)
    _compare(_stats(model), rng.standard_normal((2, 3, 4, 4)).astype(np.float32), exact=False,
             what="ResNet on the MMA", binary_kernels="mma")


class FakeGraphDriver:
    """Stands in for the CUDA driver's capture calls in the simulator (which has no graphs): counts
    the calls; a real driver replays the recorded launches, this one replays nothing."""

    def __init__(self, fail_at=None):
        self.calls, self.fail_at = [], fail_at

    def _call(self, name, value=None):
        from bitnet.packed.cuda_graph import GraphError
        self.calls.append(name)
        if name == self.fail_at:
            raise GraphError(f"{name} refused (test)")
        return value

    def begin(self, stream):
        self._call("begin")

    def end(self, stream):
        return self._call("end", object())

    def instantiate(self, graph):
        return self._call("instantiate", object())

    def launch(self, exe, stream):
        self._call("launch")

    def destroy(self, graph, exe):
        self.calls.append("destroy")


def check_graphs():
    """The graph path's plumbing (the driver faked): a shape is run once, recorded on the same
    buffers, then replayed; each shape has its own buffers and graph; a driver that refuses turns
    graphs off with one warning and the model still gives the CPU's outputs."""
    import warnings

    from bitnet.packed import cuda_graph
    from bitnet.packed.cuda_model import CudaPackedModel
    model = binary_sequential()
    cpu = bitnet.pack(model)
    original = cuda_graph.DriverGraphs
    try:
        cuda_graph.DriverGraphs = FakeGraphDriver
        gpu = CudaPackedModel(bitnet.pack(model), graphs=True)
        xs = [rng.standard_normal((n, 3, 5, 4)).astype(np.float32) for n in (2, 1, 2)]
        for i, x in enumerate(xs):
            got = gpu(x).data
            if i < 2 and not np.array_equal(got, cpu(Tensor(x)).data):  # (the fake replays nothing)
                raise AssertionError(f"call {i}: the recorded forward pass differs from the CPU")
        calls = gpu._graph_cache.driver.calls
        if calls != ["begin", "end", "instantiate", "launch"] * 2 + ["launch"] or len(gpu._graph_cache) != 2:
            raise AssertionError(f"driver calls {calls}")
        if set(gpu._graph_buffers) != {((2, 3, 5, 4), "<f4"), ((1, 3, 5, 4), "<f4")}:
            raise AssertionError(f"buffer sets {list(gpu._graph_buffers)}")
        for fail_at in ("begin", "instantiate"):
            cuda_graph.DriverGraphs = lambda fail_at=fail_at: FakeGraphDriver(fail_at)
            gpu = CudaPackedModel(bitnet.pack(model), graphs=True)
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                got = gpu(xs[0]).data
            if gpu.graphs or len(caught) != 1 or "CUDA graphs are off" not in str(caught[0].message):
                said = [str(w.message) for w in caught]
                raise AssertionError(f"fail at {fail_at}: graphs={gpu.graphs}, warnings {said}")
            if not np.array_equal(got, cpu(Tensor(xs[0])).data):
                raise AssertionError(f"fail at {fail_at}: the fallback differs from the CPU")
            if fail_at == "instantiate" and gpu._graph_cache.driver.calls[-1] != "destroy":
                raise AssertionError(f"the graph was not freed: {gpu._graph_cache.driver.calls}")
    finally:
        cuda_graph.DriverGraphs = original
    if bitnet.pack(model, device="cuda").graphs:
        raise AssertionError("graphs must default to off in the simulator")


def check_files_and_device_blocks():
    model = binary_sequential()
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "model.packed.h5")
        bitnet.convert(model, path)
        x = rng.standard_normal((2, 3, 5, 4)).astype(np.float32)
        with bitnet.device("cuda"):
            if bitnet.current_device() != "cuda":
                raise AssertionError("the with block did not set the device")
            from_file = bitnet.load_packed(path)
        if bitnet.current_device() != "cpu":
            raise AssertionError("the with block did not restore the device")
        want = bitnet.load_packed(path)(Tensor(x)).data
        if not np.array_equal(from_file(x).data, want):
            raise AssertionError("load_packed(device='cuda') differs from the CPU packed model of the same file")
    try:
        with bitnet.device("cuda"):
            raise KeyError("boom")
    except KeyError:
        pass
    if bitnet.current_device() != "cpu":
        raise AssertionError("an exception inside the with block left the device set")
    try:
        bitnet.pack(nn.Sequential(nn.Dense(3, 3, rng=rng), nn.Sigmoid()), device="cuda")
    except NotImplementedError as e:
        if "no CUDA step for module 1: Sigmoid" not in str(e):
            raise AssertionError(f"unclear error: {e}") from None
    else:
        raise AssertionError("a module without a GPU step was accepted")


def check_cli():
    import contextlib
    import io

    from bitnet.cli import main
    model = binary_sequential()
    with tempfile.TemporaryDirectory() as tmp:
        path, images = os.path.join(tmp, "m.packed.h5"), os.path.join(tmp, "x.npy")
        bitnet.convert(model, path)
        np.save(images, rng.uniform(0, 1, (3, 3, 5, 4)).astype(np.float32))
        outputs = {}
        for device in ("cpu", "cuda"):
            buf = io.StringIO()
            with contextlib.redirect_stdout(buf):
                code = main(["predict", path, images, "--device", device])
            outputs[device] = (code, buf.getvalue())
        if outputs["cpu"][0] != 0 or outputs["cpu"] != outputs["cuda"]:
            raise AssertionError(f"bitnet predict --device cuda printed {outputs['cuda']}, on the CPU {outputs['cpu']}")
        if len(outputs["cpu"][1].splitlines()) != 3:
            raise AssertionError(f"expected one line per image: {outputs['cpu'][1]!r}")


CHECKS = {"binary": check_binary_sequential, "mixed": check_float_and_binary_sequential,
          "resnet": check_resnets, "mma": check_tensor_core_kernels, "graphs": check_graphs,
          "files": check_files_and_device_blocks, "cli": check_cli}

if __name__ == "__main__":
    for name in sys.argv[1:] or CHECKS:
        CHECKS[name]()
        print(f"{name}: ok", flush=True)
