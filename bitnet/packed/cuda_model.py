"""Packed models on an NVIDIA GPU: ``CudaPackedModel`` runs a packed model (``bitnet.pack``) with its
weights copied to the device once, at construction, and its activations kept on the device from
the input copy to the output copy.

Built by ``bitnet.pack(model, device="cuda")`` or ``bitnet.load_packed(path, device="cuda")`` (or
either inside ``with bitnet.device("cuda"):``). It is the GPU executor of the packed model's lowering
(``bitnet.packed.lowering.lower``, which the CPU plans run too): every op becomes a *step*, a
function from one device activation (``DeviceMap``, a ``lowering.Activation`` of device arrays) to
the next:

- binary layers (``PackedConv2d``, ``PackedDense``, ``PackedResidualBlock``): binarize-and-pack
  (skipped where the previous binary layer handed over its signs packed), then on GPUs with 1-bit
  tensor cores (compute capability 8.0+) one implicit-GEMM launch per convolution group on the
  MMA (``bitnet.kernels.xnor_mma``), elsewhere bit im2col and the CUDA-core XOR-popcount GEMM
  (``bitnet.kernels.xnor_cuda``), both with the same epilogue; their outputs are bit-identical to
  the CPU packed model's for the same input (same bit convention, same float32 operations in the
  same order);
- float layers (``bitnet.kernels.cuda_float``): convolution, dense, eval-mode batch norm, pooling,
  tanh / ReLU / hardtanh, sign activations, flatten; they round differently from the CPU's BLAS
  (another summation order), within float32 rounding;
- sign chains (a CPU fusion) run as their layers, one by one.

The lowering reads the containers (``Sequential``, and modules that declare ``forward_chain``: the
names of children whose composition is their forward, e.g. the ResNet). A module without a GPU
step (``lowering``'s kind "module") raises ``NotImplementedError`` at construction, naming it.
"""
from __future__ import annotations

import numpy as np

from bitnet.packed.cuda_graph import GraphCache, GraphError
from bitnet.packed.lowering import Activation as DeviceMap  # (its data: device arrays)
from bitnet.packed.lowering import lower
from bitnet.tensor import Tensor


class CudaPackedModel:
    """A packed model running on the GPU; see the module docstring. ``model(x)`` takes a float32
    ``(N, ...)`` array or Tensor on the host and returns a Tensor on the host; ``run_device``
    takes and returns device arrays. ``cpu_model`` is the packed CPU model it was built from.
    ``binary_kernels`` ("mma", "popcount" or None to choose by the GPU; see
    ``choose_binary_kernels``) is fixed when the model is built; ``graphs`` (None: on, except in
    the simulator) records each input shape's forward pass as a CUDA graph (``run_device``)."""

    def __init__(self, packed, binary_kernels=None, graphs=None):
        import threading

        from bitnet.backend import cuda_module
        from numba import config
        self.cuda = cuda_module()
        self._buffers, self._next, self._lock = [], 0, threading.Lock()
        self._eager_buffers, self._graph_buffers, self._graph_cache = self._buffers, {}, None
        self.graphs = (not config.ENABLE_CUDASIM) if graphs is None else bool(graphs)
        from bitnet.kernels import cuda_float, xnor_cuda, xnor_mma  # numba.cuda only now
        self.xc, self.cf, self.xm = xnor_cuda, cuda_float, xnor_mma
        self.binary_kernels = choose_binary_kernels(binary_kernels, _compute_capability(self.cuda))
        self.cpu_model = packed
        self.packed_layers = list(getattr(packed, "packed_layers", []))
        self._step = self._plan(packed)

    # -- running --------------------------------------------------------------------------------

    def __call__(self, x):
        data = x.data if isinstance(x, Tensor) else np.asarray(x)
        if data.ndim not in (2, 4):
            raise ValueError(f"CudaPackedModel expects a batch (N, C, H, W) or (N, F), got shape {data.shape}")
        if data.shape[0] == 0:  # an empty batch: its output has the shape of one sample's, without the row
            from bitnet.packed.model import _empty_batch
            return _empty_batch(self, data)
        out = self.run_device(self.cuda.to_device(np.ascontiguousarray(data, np.float32)))
        return Tensor(out.copy_to_host())

    forward = __call__

    def run_device(self, x):
        """Device array in (NCHW or (N, F) float32), a new device array out (the model's output
        layout). The activations in between live in buffers kept from call to call: with
        ``graphs`` (the default on a GPU) one set per input shape, the forward pass recorded once
        per shape as a CUDA graph and replayed (``bitnet.packed.cuda_graph``); without, one set,
        reallocated when the input's shape changes. Calls on one model are serialized."""
        with self._lock:
            out, stream = None, 0
            if self.graphs:
                try:
                    if self._graph_cache is None:
                        self._graph_cache = GraphCache(self.cuda)
                    self._buffers = self._graph_buffers.setdefault((tuple(x.shape), x.dtype.str), [])
                    out, stream = self._graph_cache.run(x, self._forward), self._graph_cache.stream
                except GraphError as e:
                    import warnings
                    warnings.warn(f"CUDA graphs are off for this model ({e}); its kernels are launched one by one",
                                  RuntimeWarning, stacklevel=2)
                    self.graphs = False
            if out is None:
                self._buffers = self._eager_buffers
                out = self._forward(x)
            result = self.cuda.device_array(out.shape, out.dtype)
            result.copy_to_device(out, stream=stream)
            return result

    def _forward(self, x):
        """Every step's kernels, from the device input ``x`` to the output array (a buffer)."""
        self._next = 0
        dm = self._step(DeviceMap(x, "nchw" if x.ndim == 4 else "flat"))
        return self._nchw(dm).data if dm.layout == "nhwc" else dm.data

    training = False  # inference only, as the CPU packed model: train() / eval() change nothing else

    def eval(self):
        return self.train(False)

    def train(self, mode: bool = True):
        self.training = bool(mode)
        return self

    def __repr__(self):
        return f"CudaPackedModel({self.cpu_model!r})"

    # -- steps: one per op of the lowered model (bitnet.packed.lowering) ----------------------------

    def _plan(self, packed):
        return self._steps(lower(packed))

    def _steps(self, ops):
        """One function ``DeviceMap -> DeviceMap`` running ``ops`` in order."""
        steps = [self._step_for(op) for op in ops]

        def run(dm):
            for step in steps:
                dm = step(dm)
            return dm
        return run

    def _step_for(self, op):
        m, kind = op.module, op.kind
        if kind == "sign_chain":  # no fused chain on the GPU: its layers one by one
            return self._steps(op.parts["layers"])
        if kind == "residual_block":
            return self._residual_block(op)
        if kind == "add":
            return self._add(op)
        if kind in ("global_pool", "flatten"):
            return getattr(self, "_" + kind)
        if kind == "unary":
            params = dict(op.params)
            return self._unary(params.pop("op"), params)
        build = {"binary_conv": self._packed_conv, "binary_dense": self._packed_dense,
                 "cl_conv": self._channels_last_conv, "cl_shortcut": self._channels_last_shortcut,
                 "float_conv": self._float_conv, "dense": self._dense, "batchnorm": self._batchnorm,
                 "pool": self._pool}.get(kind)
        if build is None:
            raise NotImplementedError(f"no CUDA step for module {op.name or '(root)'}: {m!r}; run this model on "
                                      "the CPU (device='cpu')")
        return build(m)

    # -- layouts --------------------------------------------------------------------------------

    def _empty(self, shape, dtype=np.float32):
        """The run's next device buffer: the one the previous run allocated at this point, when its
        shape and dtype match (the steps allocate in the same order every run), else a new one."""
        shape, dtype, i = tuple(int(v) for v in shape), np.dtype(dtype), self._next
        self._next += 1
        if i < len(self._buffers) and self._buffers[i].shape == shape and self._buffers[i].dtype == dtype:
            return self._buffers[i]
        buf = self.cuda.device_array(shape, dtype)
        if i < len(self._buffers):
            self._buffers[i] = buf
        else:
            self._buffers.append(buf)
        return buf

    def _nchw(self, dm):
        if dm.layout == "nchw":
            return dm
        if dm.layout != "nhwc":
            raise ValueError(f"expected a feature map, got a {dm.layout} activation of shape {dm.data.shape}")
        n, h, w, c = dm.data.shape
        out = self._empty((n, c, h, w))
        self.cf.rows_to_nchw(dm.data.reshape(n * h * w, c), n, h, w, out)
        return DeviceMap(out, "nchw")

    def _nhwc(self, dm):
        if dm.layout == "nhwc":
            return dm
        if dm.layout != "nchw":
            raise ValueError(f"expected a feature map, got a {dm.layout} activation of shape {dm.data.shape}")
        n, c, h, w = dm.data.shape
        out = self._empty((n, h, w, c))
        self.cf.nchw_to_rows(dm.data, out.reshape(n * h * w, c))
        return DeviceMap(out, "nhwc")

    # -- binary layers --------------------------------------------------------------------------

    def _packed_conv(self, layer):
        """The GPU twin of ``PackedConv2d.forward`` (NCHW or channels-last input, channels-last
        output with its signs packed when ``layer.emit_signs``)."""
        from bitnet.kernels.xnor_conv import unpanel_words
        cuda, xc = self.cuda, self.xc
        g, o = layer.groups, layer.out_channels
        mg, cg = o // g, layer.in_channels // g
        (kh, kw), (sh, sw), (ph, pw), (dh, dw) = layer.kernel_size, layer.stride, layer.padding, layer.dilation
        rows = unpanel_words(layer.filters, mg)  # (G, Mg, KH * KW * CWg)
        filters = [cuda.to_device(np.ascontiguousarray(rows[i])) for i in range(g)]
        scale, shift = cuda.to_device(layer.scale), cuda.to_device(layer.shift)
        padword = cuda.to_device(layer._padword)
        k = cg * kh * kw
        corr_cache = {}

        def step(dm, residual=None):
            xb = self._packed_input(dm, layer.in_channels, g)
            n, h, w = xb.shape[:3]
            oh = (h + 2 * ph - dh * (kh - 1) - 1) // sh + 1
            ow = (w + 2 * pw - dw * (kw - 1) - 1) // sw + 1
            p = n * oh * ow
            corr = None
            cpu_corr = layer._correction((h, w))
            if cpu_corr is not None:
                if (h, w) not in corr_cache:
                    corr_cache[(h, w)] = cuda.to_device(np.ascontiguousarray(cpu_corr, np.int32))
                corr = corr_cache[(h, w)]
            out = self._empty((p, o))
            res = None if residual is None else self._nhwc(residual).data.reshape(p, o)
            direct = g == 1 and (kh, kw, sh, sw, ph, pw) == (1, 1, 1, 1, 0, 0)
            words = -(-o // 64)
            bits = self._empty((p, words), np.uint64) if layer.emit_signs else None
            fused = bits is not None and (g == 1 or mg % 64 == 0)  # the epilogue packs the signs
            epilogue = dict(corr=corr, scale=scale, shift=shift, residual=res, bits=bits if fused else None)
            for gi in range(g):
                if self.binary_kernels == "mma":  # one launch: the bit im2col is in the tile loader
                    self.xm.xnor_conv(xb, gi, (kh, kw), (sh, sw), (ph, pw), (dh, dw), padword, filters[gi], k, out,
                                      col0=gi * mg, **epilogue)
                    continue
                if direct:
                    a = xb.reshape(p, xb.shape[4])
                else:
                    a = self._empty((p, kh * kw * xb.shape[4]), np.uint64)
                    xc.im2col_bits(xb, gi, (kh, kw), (sh, sw), (ph, pw), (dh, dw), padword, a)
                xc.xnor_gemm(a, filters[gi], k, out, col0=gi * mg, **epilogue)
            if bits is not None:
                if not fused:
                    xc.pack_rows(out, bits)
                bits = bits.reshape(n, oh, ow, 1, words)
            return DeviceMap(out.reshape(n, oh, ow, o), "nhwc", bits)
        return step

    def _packed_input(self, dm, channels, groups):
        """The signs of ``dm`` packed ``(N, H, W, G, CWg)``: its handed-over bits, or packed now."""
        xc = self.xc
        if dm.bits is not None and groups == 1:
            return dm.bits
        if dm.layout == "nchw":
            n, c, h, w = dm.data.shape
            out = self._empty((n, h, w, groups, -(-(c // groups) // 64)), np.uint64)
            _check_channels(c, channels)
            return xc.pack_nchw(dm.data, groups, out)
        if dm.layout == "nhwc":
            n, h, w, c = dm.data.shape
            _check_channels(c, channels)
            cwg = -(-(c // groups) // 64)
            out = self._empty((n * h * w * groups, cwg), np.uint64)
            xc.pack_rows(dm.data.reshape(n * h * w * groups, c // groups), out)
            return out.reshape(n, h, w, groups, cwg)
        raise ValueError(f"a binary convolution needs a feature map, got a {dm.layout} activation of shape "
                         f"{dm.data.shape}")

    def _packed_dense(self, layer):
        conv = self._packed_conv(layer.conv)

        def step(dm):
            if dm.layout != "flat":
                raise ValueError(f"{layer!r} expects (N, {layer.in_features}), got a {dm.layout} map")
            n, f = dm.data.shape
            out = conv(DeviceMap(dm.data.reshape(n, 1, 1, f), "nhwc"))
            return DeviceMap(out.data.reshape(n, layer.out_features), "flat")
        return step

    def _residual_block(self, op):
        conv1, conv2 = self._step_for(op.parts["conv1"][0]), self._step_for(op.parts["conv2"][0])
        shortcut = self._steps(op.parts["shortcut"]) if op.parts["shortcut"] else None

        def step(dm):
            fm = self._nhwc(dm) if dm.layout == "nchw" else dm
            s = fm if shortcut is None else shortcut(fm)
            y = conv1(fm, residual=s)
            return conv2(y, residual=y)
        return step

    def _add(self, op):
        """Both parts on the input, their outputs added (NCHW where either is a feature map)."""
        a, b = self._steps(op.parts["a"]), self._steps(op.parts["b"])

        def step(dm):
            x, y = a(dm), b(dm)
            if "nhwc" in (x.layout, y.layout):
                x, y = self._nchw(x), self._nchw(y)
            if x.data.shape != y.data.shape:
                raise ValueError(f"{op.name or '(root)'}: cannot add a residual of shape {y.data.shape} to "
                                 f"{x.data.shape}")
            out = self._empty(x.data.shape)
            self.cf.add(x.data, y.data, out)
            return DeviceMap(out, x.layout)
        return step

    # -- float layers ---------------------------------------------------------------------------

    def _float_conv(self, conv):
        if conv.groups != 1:
            raise NotImplementedError(f"no CUDA step for a grouped float convolution: {conv!r}")
        cuda, cf = self.cuda, self.cf
        w2d = cuda.to_device(np.ascontiguousarray(conv.weight.data.reshape(conv.out_channels, -1), np.float32))
        bias = None if conv.bias is None else cuda.to_device(np.asarray(conv.bias.data, np.float32))

        def step(dm):
            x = self._nchw(dm).data
            n, c, h, w = x.shape
            (kh, kw), (sh, sw), (ph, pw), (dh, dw) = conv.kernel_size, conv.stride, conv.padding, conv.dilation
            oh = (h + 2 * ph - dh * (kh - 1) - 1) // sh + 1
            ow = (w + 2 * pw - dw * (kw - 1) - 1) // sw + 1
            out = self._empty((n, conv.out_channels, oh, ow))
            work = self._empty((cf.conv2d_workspace_size(x.shape, conv.out_channels, conv.kernel_size, conv.stride,
                                                         conv.padding, conv.dilation),))
            cf.conv2d_nchw(x, w2d, bias, conv.kernel_size, conv.stride, conv.padding, conv.dilation, out, work)
            return DeviceMap(out, "nchw")
        return step

    def _channels_last_conv(self, conv):
        """``ChannelsLastConv2d`` (the packed ResNet's stem): im2col of the NCHW input, one GEMM with
        the folded batch norm's shift as bias, ReLU; channels-last out."""
        cuda, cf = self.cuda, self.cf
        (kh, kw), o, c = conv.kernel_size, conv.out_channels, conv.in_channels
        w2d = conv.weight_t.reshape(kh, kw, c, o).transpose(3, 2, 0, 1).reshape(o, -1)
        w2d, shift = cuda.to_device(np.ascontiguousarray(w2d, np.float32)), cuda.to_device(conv.shift)

        def step(dm):
            x = self._nchw(dm).data
            n, _, h, w = x.shape
            (sh, sw), (ph, pw) = conv.stride, conv.padding
            oh, ow = (h + 2 * ph - kh) // sh + 1, (w + 2 * pw - kw) // sw + 1
            cols = self._empty((n * oh * ow, c * kh * kw))
            cf.im2col_nchw(x, conv.kernel_size, conv.stride, conv.padding, (1, 1), cols)
            out = self._empty((n * oh * ow, o))
            cf.sgemm_nt(cols, w2d, out, bias=shift)
            if conv.relu:
                cf.unary(out, "relu", out)
            return DeviceMap(out.reshape(n, oh, ow, o), "nhwc")
        return step

    def _channels_last_shortcut(self, sc):
        cuda, cf = self.cuda, self.cf
        w = cuda.to_device(np.ascontiguousarray(sc.weight_t.T, np.float32))
        shift = cuda.to_device(sc.shift)
        k = sc.pool

        def step(dm):
            fm = self._nhwc(dm)
            if k > 1:
                x = self._nchw(fm).data
                n, c, h, w_ = x.shape
                pooled = self._empty((n, c, *sc.pooled_size(h, w_)))
                cf.avgpool2d_nchw(x, (k, k), (k, k), (0, 0), pooled, ceil_mode=sc.ceil_mode)
                fm = self._nhwc(DeviceMap(pooled, "nchw"))
            n, h, w_, c = fm.data.shape
            out = self._empty((n * h * w_, w.shape[0]))
            cf.sgemm_nt(fm.data.reshape(-1, c), w, out, bias=shift)
            return DeviceMap(out.reshape(n, h, w_, -1), "nhwc")
        return step

    def _dense(self, dense):
        cuda, cf = self.cuda, self.cf
        w = cuda.to_device(np.ascontiguousarray(dense.weight.data, np.float32))
        bias = None if dense.bias is None else cuda.to_device(np.asarray(dense.bias.data, np.float32))

        def step(dm):
            if dm.layout != "flat":
                raise ValueError(f"{dense!r} expects (N, {dense.in_features}), got a {dm.layout} map")
            out = self._empty((dm.data.shape[0], dense.out_features))
            cf.sgemm_nt(dm.data, w, out, bias=bias)
            return DeviceMap(out, "flat")
        return step

    def _batchnorm(self, bn):
        from bitnet.packed.fold import batchnorm_affine
        g, b = batchnorm_affine(bn)
        scale, shift = self.cuda.to_device(g.astype(np.float32)), self.cuda.to_device(b.astype(np.float32))

        def step(dm):
            x = self._nchw(dm).data
            out = self._empty(x.shape)
            self.cf.channel_affine_nchw(x, scale, shift, out)
            return DeviceMap(out, "nchw")
        return step

    def _pool(self, pool):
        from bitnet.kernels.pooling import pool_output_size
        from bitnet.nn.layers import MaxPool2d
        options = {"ceil_mode": pool.ceil_mode}
        if isinstance(pool, MaxPool2d):
            fn = self.cf.maxpool2d_nchw
        else:
            fn, options["count_include_pad"] = self.cf.avgpool2d_nchw, pool.count_include_pad

        def step(dm):
            x = self._nchw(dm).data
            n, c, h, w = x.shape
            (kh, kw), (sh, sw), (ph, pw) = pool.kernel_size, pool.stride, pool.padding
            out = self._empty((n, c, pool_output_size(h, kh, sh, ph, pool.ceil_mode),
                               pool_output_size(w, kw, sw, pw, pool.ceil_mode)))
            fn(x, pool.kernel_size, pool.stride, pool.padding, out, **options)
            return DeviceMap(out, "nchw")
        return step

    def _global_pool(self, dm):
        if dm.layout == "flat":
            raise ValueError(f"GlobalAvgPool2d expects a feature map, got shape {dm.data.shape}")
        x = dm.data
        n, c = (x.shape[0], x.shape[3]) if dm.layout == "nhwc" else x.shape[:2]
        out = self._empty((n, c))
        (self.cf.global_avgpool_nhwc if dm.layout == "nhwc" else self.cf.global_avgpool_nchw)(x, out)
        return DeviceMap(out, "flat")

    def _flatten(self, dm):
        if dm.layout == "flat":
            return dm
        x = self._nchw(dm).data
        return DeviceMap(x.reshape(x.shape[0], -1), "flat")

    def _unary(self, op, params):
        def step(dm):
            out = self._empty(dm.data.shape)
            self.cf.unary(dm.data, op, out, **params)
            return DeviceMap(out, dm.layout)  # element-wise: the packed signs no longer apply
        return step


BINARY_KERNELS = ("mma", "popcount")


def choose_binary_kernels(requested, compute_capability):
    """The binary layers' kernels: "mma" (the 1-bit tensor cores, ``bitnet.kernels.xnor_mma``) where
    the GPU has them (compute capability 8.0 and newer), else "popcount" (``xnor_cuda``: CUDA-core
    XOR and popcount, any GPU). ``requested`` (None: choose) is checked against the GPU; in the
    simulator (``compute_capability`` None) "mma" runs the MMA's emulation and the default is
    "popcount"."""
    from bitnet.kernels.bmma import MIN_COMPUTE_CAPABILITY
    if requested is not None and requested not in BINARY_KERNELS:
        raise ValueError(f"binary_kernels must be one of {BINARY_KERNELS} or None (choose by GPU), got {requested!r}")
    has_mma = compute_capability is not None and tuple(compute_capability) >= MIN_COMPUTE_CAPABILITY
    if requested is None:
        return "mma" if has_mma else "popcount"
    if requested == "mma" and compute_capability is not None and not has_mma:
        cc = ".".join(map(str, compute_capability))
        raise ValueError(f'binary_kernels="mma" needs the 1-bit tensor-core MMA (compute capability 8.0 or newer); '
                         f'this GPU has {cc}: use binary_kernels="popcount" or None')
    return requested


def _compute_capability(cuda):
    """The current GPU's (major, minor); None in Numba's CUDA simulator."""
    from numba import config
    return None if config.ENABLE_CUDASIM else tuple(cuda.get_current_device().compute_capability)


def _check_channels(got, want):
    if got != want:
        raise ValueError(f"a binary convolution over {want} channels got a map with {got}")
