"""``bitnet.summary(model, input_shape)``: layers, bit widths, packed size and MACs by precision.

For each leaf layer it reports the output shape (from one forward pass in eval mode, without
recording a graph), the parameters by bit width, their size in packed form and the
multiply-accumulates per image by precision. Packed form:

- the kernel of a layer that runs on bits (``bitnet.packed.packable``: binary input and kernel) is
  stored as uint64 words, the K = fan-in bits of each output channel padded to a multiple of 64:
  O * ceil(K / 64) * 8 bytes,
  plus one float32 scale and shift per channel (8 * O bytes) holding the layer's bias, its
  magnitude-aware scale and the batch norm after it, when one folds in (``bitnet.packed.fold``;
  that batch norm is shown as "folded" and takes nothing);
- everything else (float layers, biases, batch-norm parameters and running statistics, k-bit
  kernels) as float32, 4 bytes per value.

The float-32 size counts every parameter and buffer at 4 bytes. MACs: a convolution does
(C/groups * KH * KW) per output value, a dense layer in_features per output value; they are
"binary" when the layer's input and kernel quantizers are both 1-bit, else labelled by the wider
of the two bit widths ("32-bit" for float layers).
"""
from __future__ import annotations

import math
import sys
from dataclasses import dataclass, field

import numpy as np

from bitnet.nn.layers import Conv2d, Dense
from bitnet.packed.fold import batchnorm_pairs
from bitnet.packed.layers import packable
from bitnet.tensor import Tensor, no_grad


@dataclass
class LayerInfo:
    name: str
    kind: str
    output_shape: tuple
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


def _layer_info(name, mod, out_shape, role):
    """``role``: "layer" for a binary layer with a folded batch norm after it, "bn" for that batch
    norm, None otherwise."""
    info = LayerInfo(name, type(mod).__name__, tuple(out_shape), folded=role == "bn")
    kq = getattr(mod, "kernel_quantizer", None)
    on_bits = packable(mod)
    for pname, p in mod._parameters.items():
        if p is None:
            continue
        binary = pname == "weight" and on_bits
        bits = 1 if binary else (_bits(kq) if pname == "weight" else 32)
        info.params_by_bits[bits] = info.params_by_bits.get(bits, 0) + p.size
        info.float_bytes += 4 * p.size
        if binary:  # words, and the folded scale and shift (bias, alpha, batch norm) of each channel
            out, fan_in = p.shape[0], p.size // p.shape[0]
            info.packed_bytes += out * math.ceil(fan_in / 64) * 8 + 8 * out
        elif role is None and not on_bits:
            info.packed_bytes += 4 * p.size
    for b in mod._buffers.values():
        if b is not None:
            info.packed_bytes += 0 if role else 4 * b.size
            info.float_bytes += 4 * b.size
    if isinstance(mod, (Conv2d, Dense)):
        per_output = mod.weight.size // mod.weight.shape[0]
        outputs = int(np.prod(out_shape[1:]))
        a, w = _bits(getattr(mod, "input_quantizer", None)), _bits(kq)
        label = "binary" if a == 1 and w == 1 else f"{max(a, w)}-bit"
        info.macs[label] = outputs * per_output
    return info


def summarize(model, input_shape, dtype=np.float32) -> Summary:
    """Collect the summary without printing; ``input_shape`` excludes the batch axis."""
    leaves = [(n, m) for n, m in model.named_modules() if not m._modules]
    shapes, handles = {}, []
    for name, mod in leaves:
        handles.append(mod.register_forward_hook(lambda m, i, o, name=name: shapes.__setitem__(name, o.shape)))
    was_training = model.training
    model.eval()
    try:
        with no_grad():
            device = getattr(model, "device", "cpu")  # a model on the GPU: the probe input there too
            model(Tensor(np.zeros((1,) + tuple(input_shape), dtype=dtype), device=device))
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    roles = {}
    modules = dict(model.named_modules())
    for layer, bn in batchnorm_pairs(model):
        if packable(modules[layer]):  # only layers that run on bits fold their batch norm (bitnet.pack)
            roles[layer], roles[bn] = "layer", "bn"
    layers = [_layer_info(n, m, shapes[n], roles.get(n)) for n, m in leaves if n in shapes]
    macs = {}
    for li in layers:
        for k, v in li.macs.items():
            macs[k] = macs.get(k, 0) + v
    total = sum(sum(li.params_by_bits.values()) for li in layers)
    from bitnet.io.packed import predicted_file_bytes
    return Summary(layers, total, sum(li.packed_bytes for li in layers), sum(li.float_bytes for li in layers), macs,
                   predicted_file_bytes(model, input_shape))


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
        rows.append((li.name, li.kind, str(li.output_shape[1:]), params, packed, macs))
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
