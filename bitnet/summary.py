"""``bitnet.summary(model, input_shape)``: layers, bit widths, packed size and MACs by precision.

One row per leaf layer, and one for every other module that holds parameters or buffers of its
own (not inside a child), so that the rows add up to the whole model (``num_parameters()``); a
module the forward pass does not call keeps its row, with "-" as its output. For each row it
reports the output shape (from one forward pass of a batch of two zero inputs, every module in
eval mode and back in its own mode afterwards, without recording a graph; two, because a batch
norm without running statistics normalizes with the batch's), the parameters by bit width, their
size in packed form and the multiply-accumulates per image by precision. Packed form (what the
packed file of ``bitnet convert`` stores):

- the kernel of a layer that runs on bits (``bitnet.packed.packable``: binary input and kernel) is
  stored as uint64 words, each output channel's row holding KH * KW taps of ceil(C/groups / 64)
  words (a dense layer: ceil(in_features / 64) words): O * KH * KW * ceil(C/groups / 64) * 8 bytes,
  plus one float32 scale and shift per channel (8 * O bytes) holding the layer's bias, its
  magnitude-aware scale and the batch norm after it, when one folds in (``bitnet.packed.fold``;
  that batch norm is shown as "folded" and takes nothing);
- everything else (float layers, biases, batch-norm parameters and running statistics, k-bit
  kernels) as float32, 4 bytes per value (an integer buffer, e.g. a batch count, at its own size).

A packed model (``bitnet.pack(model)``, ``bitnet.load_packed``) is summarized as it is: its
``PackedConv2d`` / ``PackedDense`` layers have 1-bit weights (out_channels * K of them, K the
fan-in), 32-bit scale and shift, binary MACs, and take the bytes of their arrays (the filter rows;
not the padding of the in-memory filter panels, whose width depends on the CPU); the float layers
of a packed ResNet (``ChannelsLastConv2d``, ``ChannelsLastShortcut``) hold their folded weights in
buffers, counted as 32-bit parameters. Its packed size is then what the float model's summary
predicts, less what ``pack`` folds beyond it (the batch norms of a ResNet's stem and shortcuts).
A ``CudaPackedModel`` is summarized through its CPU model (the same weights). The packed file's
size is predicted for float models only (its header holds the float model's architecture).

The float-32 size counts every parameter and buffer at 4 bytes (a packed layer's weights one by
one). MACs: a convolution does (C/groups * KH * KW) per output value, a dense layer in_features
per output value; they are "binary" when the layer's input and kernel quantizers are both 1-bit
(and in every packed layer), else labelled by the wider of the two bit widths ("32-bit" for float
layers).
"""
from __future__ import annotations

import sys
from dataclasses import dataclass, field

import numpy as np

from bitnet.kernels.bits import words_for
from bitnet.nn.layers import Conv2d, Dense
from bitnet.nn.modes import eval_mode
from bitnet.packed.blocks import ChannelsLastConv2d, ChannelsLastShortcut
from bitnet.packed.fold import batchnorm_pairs
from bitnet.packed.layers import PackedConv2d, PackedDense, packable
from bitnet.tensor import Tensor, no_grad

PROBE_BATCH = 2  # a batch norm without running statistics needs more than one value per channel


@dataclass
class LayerInfo:
    name: str
    kind: str
    output_shape: tuple | None  # None: the forward pass did not call this module
    params_by_bits: dict = field(default_factory=dict)
    packed_bytes: int = 0
    float_bytes: int = 0
    macs: dict = field(default_factory=dict)
    folded: bool = False


@dataclass
class Summary:
    layers: list
    total_params: int
    packed_bytes: int
    float32_bytes: int
    macs: dict
    file_bytes: int | None = None  # predicted size of the packed HDF5 file (bitnet convert)

    @property
    def compression(self) -> float:
        return self.float32_bytes / self.packed_bytes if self.packed_bytes else float("nan")

    @property
    def binary_mac_share(self) -> float:
        total = sum(self.macs.values())
        return self.macs.get("binary", 0) / total if total else 0.0

    def __str__(self):
        return format_table(self)

    def __repr__(self):
        return (f"Summary({len(self.layers)} layers, {self.total_params} parameters, packed "
                f"{_fmt_bytes(self.packed_bytes)}, {sum(self.macs.values())} MACs per image, "
                f"{100 * self.binary_mac_share:.1f}% binary; print() it for the table)")

    def _repr_html_(self):
        return _html(self)


def _bits(q):
    return 32 if q is None else int(q.precision)


def _add(counts, key, n):
    counts[key] = counts.get(key, 0) + int(n)


def _outputs(out_shape) -> int:
    """Output values per image."""
    return int(np.prod(out_shape[1:]))


def _buffer_bytes(b) -> int:
    """A buffer's bytes in packed form: float32 for floats, integers at their own size."""
    return int(b.nbytes) if np.dtype(b.dtype).kind in "biu" else 4 * int(b.size)


def _row_words(weight_shape) -> int:
    """uint64 words per output channel of a binary kernel in packed form: KH * KW taps of
    ceil(C/groups / 64) words (``kernels.xnor_conv.pack_filters``, the file's rows)."""
    taps = int(np.prod(weight_shape[2:])) if len(weight_shape) > 2 else 1
    return taps * words_for(weight_shape[1])


def _layer_info(name, mod, out_shape, role):
    """``role``: "layer" for a binary layer with a folded batch norm after it, "bn" for that batch
    norm, None otherwise. Only the module's own parameters and buffers count (not its children's)."""
    if isinstance(mod, (PackedConv2d, PackedDense)):
        return _packed_info(name, mod, out_shape)
    info = LayerInfo(name, type(mod).__name__, out_shape, folded=role == "bn")
    if isinstance(mod, (ChannelsLastConv2d, ChannelsLastShortcut)):
        # a packed ResNet's float layers: their (folded) weights are buffers
        for b in mod._buffers.values():
            _add(info.params_by_bits, 32, b.size)
            info.packed_bytes += _buffer_bytes(b)
            info.float_bytes += 4 * b.size
        if out_shape is not None:
            info.macs["32-bit"] = _outputs(out_shape) * mod.weight_t.shape[0]
        return info
    kq = getattr(mod, "kernel_quantizer", None)
    on_bits = packable(mod)
    for pname, p in mod._parameters.items():
        if p is None:
            continue
        binary = pname == "weight" and on_bits
        bits = 1 if binary else (_bits(kq) if pname == "weight" else 32)
        _add(info.params_by_bits, bits, p.size)
        info.float_bytes += 4 * p.size
        if binary:  # words, and the folded scale and shift (bias, alpha, batch norm) of each channel
            out = p.shape[0]
            info.packed_bytes += out * _row_words(p.shape) * 8 + 8 * out
        elif role is None and not on_bits:
            info.packed_bytes += 4 * p.size
    for b in mod._buffers.values():
        if b is not None:
            info.packed_bytes += 0 if role else _buffer_bytes(b)
            info.float_bytes += 4 * b.size
    if isinstance(mod, (Conv2d, Dense)) and out_shape is not None:
        per_output = mod.weight.size // mod.weight.shape[0]
        a, w = _bits(getattr(mod, "input_quantizer", None)), _bits(kq)
        label = "binary" if a == 1 and w == 1 else f"{max(a, w)}-bit"
        info.macs[label] = _outputs(out_shape) * per_output
    return info


def _packed_info(name, mod, out_shape):
    """A packed layer: 1-bit weights (out_channels * K), its scale and shift at 32 bits, the bytes of
    its filter rows (``out_channels`` rows of the panels' words) and of its scale and shift."""
    conv = mod.conv if isinstance(mod, PackedDense) else mod
    k = (conv.in_channels // conv.groups) * conv.kernel_size[0] * conv.kernel_size[1]
    o = conv.out_channels
    info = LayerInfo(name, type(mod).__name__, out_shape)
    info.params_by_bits = {1: o * k, 32: conv.scale.size + conv.shift.size}
    info.packed_bytes = o * conv.filters.shape[2] * conv.filters.itemsize + conv.scale.nbytes + conv.shift.nbytes
    info.float_bytes = 4 * (o * k + conv.scale.size + conv.shift.size)
    if out_shape is not None:
        info.macs["binary"] = _outputs(out_shape) * k
    return info


def _rows_of(model) -> list:
    """``[(name, module), ...]``: the leaves, packed layers (a ``PackedDense``, not the convolution
    inside it) and every other module with parameters or buffers of its own, in ``named_modules``
    order."""
    rows, packed = [], []
    for name, mod in model.named_modules():
        if any(name != p and (p == "" or name.startswith(p + ".")) for p in packed):
            continue  # inside a packed layer: part of its row
        if isinstance(mod, (PackedConv2d, PackedDense)):
            packed.append(name)
            rows.append((name, mod))
        elif not mod._modules or any(v is not None for v in (*mod._parameters.values(), *mod._buffers.values())):
            rows.append((name, mod))
    return rows


def _shape(output):
    shape = getattr(output, "shape", None)
    return None if shape is None else tuple(shape)


def summarize(model, input_shape, dtype=np.float32) -> Summary:
    """Collect the summary without printing; ``input_shape`` excludes the batch axis."""
    if not hasattr(model, "named_modules") and hasattr(model, "cpu_model"):
        model = model.cpu_model  # a CudaPackedModel: its CPU packed model, the same weights
    rows = _rows_of(model)
    shapes, handles = {}, []
    try:
        for name, mod in rows:
            handles.append(mod.register_forward_hook(lambda m, i, o, name=name: shapes.__setitem__(name, _shape(o))))
        with eval_mode(model), no_grad():
            device = getattr(model, "device", "cpu")  # a model on the GPU: the probe input there too
            model(Tensor(np.zeros((PROBE_BATCH,) + tuple(input_shape), dtype=dtype), device=device))
    finally:
        for h in handles:
            h.remove()
    roles = {}
    modules = dict(model.named_modules())
    for layer, bn in batchnorm_pairs(model):
        if packable(modules[layer]):  # only layers that run on bits fold their batch norm (bitnet.pack)
            roles[layer], roles[bn] = "layer", "bn"
    layers = [_layer_info(n, m, shapes.get(n), roles.get(n)) for n, m in rows]
    macs = {}
    for li in layers:
        for k, v in li.macs.items():
            _add(macs, k, v)
    total = sum(sum(li.params_by_bits.values()) for li in layers)
    is_packed = any(isinstance(m, (PackedConv2d, PackedDense)) for _, m in rows)
    from bitnet.io.packed import predicted_file_bytes
    return Summary(layers, total, sum(li.packed_bytes for li in layers), sum(li.float_bytes for li in layers), macs,
                   None if is_packed else predicted_file_bytes(model, input_shape))


def _fmt_bytes(n):
    return f"{n / 1024:.1f} KiB" if n < 1024 ** 2 else f"{n / 1024 ** 2:.2f} MiB"


COLUMNS = ("layer", "type", "output", "params (bits:count)", "packed", "MACs")


def _rows(s: Summary) -> list:
    """One tuple of strings per layer, in ``COLUMNS`` order."""
    rows = []
    for li in s.layers:
        params = " ".join(f"{b}:{c}" for b, c in sorted(li.params_by_bits.items())) or "-"
        macs = " ".join(f"{k}:{v}" for k, v in li.macs.items()) or "-"
        packed = "folded" if li.folded else _fmt_bytes(li.packed_bytes)
        output = "-" if li.output_shape is None else str(li.output_shape[1:])
        rows.append((li.name, li.kind, output, params, packed, macs))
    return rows


def _totals(s: Summary) -> list:
    """The lines under the table."""
    by_bits = {}
    for li in s.layers:
        for b, c in li.params_by_bits.items():
            by_bits[b] = by_bits.get(b, 0) + c
    lines = [f"parameters: {s.total_params} ("
             + ", ".join(f"{c} at {b} bit{'s' if b > 1 else ''}" for b, c in sorted(by_bits.items())) + ")",
             f"packed size: {_fmt_bytes(s.packed_bytes)} ({s.packed_bytes} bytes); float-32 size: "
             f"{_fmt_bytes(s.float32_bytes)}; compression: {s.compression:.1f}x"]
    if s.file_bytes is not None:
        lines.append(f"packed file (bitnet convert, HDF5): about {s.file_bytes} bytes ({_fmt_bytes(s.file_bytes)})")
    total_macs = sum(s.macs.values())
    lines.append(f"MACs per image: {total_macs} (" + ", ".join(f"{k} {v}" for k, v in s.macs.items())
                 + f"); binary share: {100 * s.binary_mac_share:.1f}%")
    return lines


def format_table(s: Summary) -> str:
    """The summary as text: the layer table, each column as wide as its widest entry (nested layer
    names included), then the totals."""
    rows = _rows(s)
    widths = [max([len(c)] + [len(r[i]) for r in rows]) for i, c in enumerate(COLUMNS)]
    right = {4}  # the packed size, right-aligned

    def line(cells):
        return " ".join(c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths))).rstrip()
    head = line(COLUMNS)
    rule = "-" * sum(widths + [len(widths) - 1])
    return "\n".join([head, rule] + [line(r) for r in rows] + [rule] + _totals(s))


def _html(s: Summary) -> str:
    import html
    head = "".join(f"<th>{html.escape(c)}</th>" for c in COLUMNS)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in _rows(s))
    totals = "<br>".join(html.escape(t) for t in _totals(s))
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table><p>{totals}</p>"


def summary(model, input_shape, file=None) -> Summary:
    """Print a table of ``model``'s layers for inputs of ``input_shape`` (no batch axis) and
    return the ``Summary`` (``str()`` of it is the table).

    In a Jupyter notebook, without ``file``, nothing is printed: the returned Summary displays
    itself as an HTML table (put the call last in a cell, or ``display()`` it; ``print()`` it for
    the text table)."""
    s = summarize(model, input_shape)
    if file is None:
        from bitnet.progress import in_notebook
        if in_notebook():
            return s
    print(format_table(s), file=file or sys.stdout)
    return s
