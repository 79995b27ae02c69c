"""What ``fit`` records: a ``History`` of per-epoch and per-step statistics, with a table and a plot.

Per epoch (``EpochStats``): the mean training loss and accuracy over the epoch's samples (each
batch weighted by its size), the validation loss and accuracy (NaN without a validation loader),
the learning rate at the end of the epoch (the first parameter group's), the wall time and the
throughput. Per step (``StepStats``): the batch's loss and accuracy and the learning rate the
step used.

``History.history`` gives the per-epoch values as a dict of lists, Keras-style
(``{"loss": [...], "accuracy": [...], "val_loss": [...], ...}``); ``History.plot()`` draws loss and
accuracy against the epoch (matplotlib, an optional extra); in a notebook a History displays as a
table of its epochs.
"""
from __future__ import annotations

import html
import math
from dataclasses import dataclass, field, fields

METRICS = ("loss", "accuracy", "val_loss", "val_accuracy", "lr")


@dataclass
class EpochStats:
    epoch: int
    loss: float
    accuracy: float
    seconds: float
    samples_per_s: float
    val_loss: float = float("nan")
    val_accuracy: float = float("nan")
    lr: float = float("nan")
    steps: int = 0


@dataclass
class StepStats:
    epoch: int
    step: int        # 1-based within the epoch
    loss: float      # this batch's mean loss
    accuracy: float  # this batch's accuracy
    lr: float        # the learning rate this step used (first parameter group)
    samples: int


@dataclass
class History:
    """The statistics of one ``fit`` run: ``epochs`` (``EpochStats``), ``steps`` (``StepStats``), and
    ``stopped``: why training ended before its last epoch (a callback's reason), else None. Only epochs
    that ran are recorded: a run stopped before an epoch's first step has no entry for that epoch (and
    one stopped in ``on_train_begin`` has no epochs and no steps)."""
    epochs: list = field(default_factory=list)
    steps: list = field(default_factory=list)
    stopped: str | None = None

    @property
    def last(self) -> EpochStats:
        if not self.epochs:
            raise IndexError("History.last: no epoch has finished yet")
        return self.epochs[-1]

    @property
    def history(self) -> dict:
        """Per-epoch values by name (``epoch`` and every ``EpochStats`` field), as lists."""
        return {f.name: [getattr(e, f.name) for e in self.epochs] for f in fields(EpochStats)}

    def __repr__(self):
        stop = f", stopped: {self.stopped}" if self.stopped else ""
        if not self.epochs:
            return f"History(no epochs, {len(self.steps)} steps{stop})"
        e = self.last
        text = f"loss {e.loss:.4f} accuracy {e.accuracy:.4f}"
        if not math.isnan(e.val_accuracy):
            text += f" val_loss {e.val_loss:.4f} val_accuracy {e.val_accuracy:.4f}"
        return f"History({len(self.epochs)} epochs, {len(self.steps)} steps; epoch {e.epoch}: {text}{stop})"

    def _repr_html_(self):
        cols = ("epoch", "loss", "accuracy", "val_loss", "val_accuracy", "lr", "seconds", "samples_per_s")
        has_val = any(not math.isnan(e.val_loss) for e in self.epochs)
        cols = [c for c in cols if has_val or not c.startswith("val_")]

        def cell(v):
            if isinstance(v, float):
                return "" if math.isnan(v) else (f"{v:.4g}" if abs(v) < 1e-3 or abs(v) >= 1e4 else f"{v:.4f}")
            return str(v)
        head = "".join(f"<th>{c}</th>" for c in cols)
        rows = "".join("<tr>" + "".join(f"<td>{cell(getattr(e, c))}</td>" for c in cols) + "</tr>"
                       for e in self.epochs)
        note = f"<p>stopped: {html.escape(self.stopped)}</p>" if self.stopped else ""
        return f"<table><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>{note}"

    def plot(self, file=None, steps: bool = True):
        """Loss and accuracy against the epoch: training (per epoch, and per step as a faint line when
        ``steps``), validation where measured. Saves the figure to ``file`` when given; returns the
        matplotlib ``Figure`` (shown by a notebook when a cell ends with it). Needs matplotlib."""
        from bitnet.plotting import new_figure
        if not self.epochs and not self.steps:
            raise ValueError("History.plot: nothing to plot (no step has run)")
        fig = new_figure("History.plot", figsize=(9, 3.5))
        per_epoch = {}
        for s in self.steps:
            per_epoch[s.epoch] = per_epoch.get(s.epoch, 0) + 1
        for i, name in enumerate(("loss", "accuracy")):
            ax = fig.add_subplot(1, 2, i + 1)
            if steps and self.steps:  # step k of epoch e at x = e - 1 + k / steps(e)
                xs = [s.epoch - 1 + s.step / per_epoch[s.epoch] for s in self.steps]
                ax.plot(xs, [getattr(s, name) for s in self.steps], color="tab:blue", alpha=0.25, lw=0.8,
                        label=f"train {name} (step)")
            if self.epochs:
                xs = [e.epoch for e in self.epochs]
                ax.plot(xs, [getattr(e, name) for e in self.epochs], "o-", color="tab:blue", label=f"train {name}")
                val = [getattr(e, "val_" + name) for e in self.epochs]
                if any(not math.isnan(v) for v in val):
                    ax.plot(xs, val, "s-", color="tab:orange", label=f"validation {name}")
            ax.set_xlabel("epoch")
            ax.set_ylabel(name)
            ax.grid(alpha=0.3)
            ax.legend(fontsize=8)
        fig.tight_layout()
        if file is not None:
            fig.savefig(file)
        return fig
