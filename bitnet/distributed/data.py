"""Sharded data: each rank's part of every global batch, and of an evaluation set.

``ShardedLoader(loader, comm)`` wraps a ``bitnet.data.DataLoader`` whose ``batch_size`` B is the
*global* batch (the sum over the N ranks). Every rank draws the epoch's permutation from the loader's
generator, as one process would, and then takes **rank 0's** (one broadcast of n indices per epoch):
all ranks use the same order, the one a single process seeded like rank 0 uses, whether or not the
generators were seeded alike (``DataLoader(..., shuffle=True)`` with no ``rng`` draws a fresh seed on
every rank; a seed derived from the rank differs too). Global batch b is ``order[b*B:(b+1)*B]``, as
for one process; rank r takes its r-th contiguous part of B/N samples:

    rank r, batch b:  order[b*B + r*B/N : b*B + (r+1)*B/N]

so N ranks together see exactly the batches of one process with batch B, and with the gradients
averaged (``GradientAverager``: the mean of the N per-rank means of B/N samples is the mean over B)
take the same steps, up to the order of float summation.

Every rank gets the same number of samples in every batch (the collectives need the same number of
steps everywhere, and the plain average of the ranks' means is the global mean only for equal parts).
B must therefore be a multiple of N (else ``ValueError``), and where the last batch of an epoch has
n mod B samples, the last (n mod B) mod N of them are **dropped** (fewer than N per epoch; a different
few each epoch since the order is shuffled); a last batch left empty is not run. Then one process
with batch B reproduces the run exactly when (n mod B) mod N = 0, e.g. MNIST's 60,000 images with
B = 128 (a last batch of 96) on 2, 4, 8 or 32 processes. ``drop_last=True`` on the loader drops the
whole last batch, as for one process.

Before each epoch the ranks compare their loaders (one allgather of four numbers: dataset length,
batch size, ``drop_last``, ``shuffle``, which fix the steps per epoch); where they differ, every rank
raises the same ``DistributedError`` naming each rank's values, instead of running a different number
of steps (mismatched collectives).

``shard_for_evaluation(loader, comm)``: rank r's contiguous part of what one process would evaluate,
the parts' sizes differing by at most one, every rank's sums then added up (``evaluate(...,
distributed=comm)``). For a ``DataLoader``: its dataset, without the last incomplete batch when
``drop_last`` is set (with ``shuffle`` as well, the samples of rank 0's permutation that one process
would keep); nothing else is dropped. For any other sized iterable of ``(x, y)`` batches (a list of
batches): rank r's contiguous share of the batches. The ranks compare these settings first, as above.
"""
from __future__ import annotations

import itertools

import numpy as np

from bitnet.distributed.faults import DistributedError

LOADER_ATTRIBUTES = ("dataset", "batch_size", "shuffle", "rng", "drop_last", "transform")


def _several(comm) -> bool:
    """Whether ``comm`` is a communicator of several ranks (not just an object with rank and size)."""
    return int(getattr(comm, "size", 1)) > 1 and hasattr(comm, "allgather")


def _ranks_text(ranks) -> str:
    ranks = list(ranks)
    shown = ", ".join(map(str, ranks[:8])) + (f" and {len(ranks) - 8} more" if len(ranks) > 8 else "")
    return f"rank{'s' if len(ranks) > 1 else ''} {shown}"


def agree(comm, fields, what: str, fix: str) -> None:
    """Compare integer ``fields`` (``[(name, value)]``, the same names on every rank) over the ranks with
    one allgather; if any differ, raise ``DistributedError`` (on every rank alike) naming each differing
    field's value per rank, then ``fix``."""
    if not _several(comm):
        return
    values = np.array([int(v) for _, v in fields], np.int64)
    gathered = comm.allgather(values, what=f"comparing the ranks' {what}")
    differing = []
    for i, (name, _) in enumerate(fields):
        column = gathered[:, i]
        if (column != column[0]).any():
            by_value = {}
            for r, v in enumerate(column.tolist()):
                by_value.setdefault(bool(v) if isinstance(fields[i][1], (bool, np.bool_)) else v, []).append(r)
            differing.append(f"{name} " + ", ".join(f"{v} on {_ranks_text(rs)}" for v, rs in by_value.items()))
    if differing:
        raise DistributedError(f"rank {comm.rank} of {comm.size}: the ranks' {what} differ: "
                               f"{'; '.join(differing)}. {fix}")


def _is_loader(loader) -> bool:
    return all(hasattr(loader, attr) for attr in LOADER_ATTRIBUTES)


class ShardedLoader:
    """Rank ``comm.rank``'s part of every global batch of ``loader`` (module docstring). ``comm`` is the
    run's communicator; any object with ``rank`` and ``size`` does for computing the parts (without
    ``allgather`` and ``broadcast`` the ranks are not compared and each uses its own generator's order).
    ``len()`` is the number of steps per epoch, the same on every rank; ``rng`` is the loader's generator
    (saved in checkpoints)."""

    def __init__(self, loader, comm):
        for attr in LOADER_ATTRIBUTES:
            if not hasattr(loader, attr):
                raise TypeError(f"ShardedLoader: expected a bitnet.data.DataLoader, got {type(loader).__name__} "
                                f"(it has no {attr!r})")
        self.loader, self.comm, self.rank, self.size = loader, comm, int(comm.rank), int(comm.size)
        if loader.batch_size % self.size:
            lower = loader.batch_size - loader.batch_size % self.size
            raise ValueError(f"batch size {loader.batch_size} is not a multiple of the {self.size} processes: the "
                             f"batch size is the global one, and every process takes an equal part of each batch; "
                             f"choose a multiple of {self.size}, e.g. {lower or self.size} or {lower + self.size}")
        self.local_batch_size = loader.batch_size // self.size

    @property
    def batch_size(self) -> int:
        """The global batch size B."""
        return self.loader.batch_size

    @property
    def rng(self):
        return self.loader.rng

    @property
    def dataset(self):
        return self.loader.dataset

    def batch_sizes(self) -> list:
        """The global size of each batch of an epoch (after the drop rule), the same on every rank."""
        n, b = len(self.loader.dataset), self.loader.batch_size
        sizes = [b] * (n // b)
        last = 0 if self.loader.drop_last else n % b
        last -= last % self.size
        return sizes + ([last] if last else [])

    @property
    def dropped_per_epoch(self) -> int:
        """Samples of each epoch that no rank sees (at most N-1 beyond what ``drop_last`` drops)."""
        n, b = len(self.loader.dataset), self.loader.batch_size
        return n - sum(self.batch_sizes()) - (n % b if self.loader.drop_last else 0)

    def __len__(self) -> int:
        return len(self.batch_sizes())

    def check(self) -> None:
        """Raise ``DistributedError`` on every rank if the ranks' loaders would give different global batches
        (dataset length, batch size, ``drop_last``, ``shuffle``; module docstring). One allgather."""
        loader = self.loader
        agree(self.comm, [("dataset length", len(loader.dataset)), ("batch size", loader.batch_size),
                          ("drop_last", loader.drop_last), ("shuffle", loader.shuffle), ("steps per epoch", len(self))],
              "training loaders",
              "Every rank takes its part of the same global batches, so every rank must load the same data set "
              "(all of it, not a part of its own) into a DataLoader with the same global batch_size, drop_last and "
              "shuffle")

    def epoch_order(self) -> np.ndarray:
        """This epoch's order of the dataset's indices: drawn from the loader's generator (which advances as
        one process's would) and replaced by rank 0's (module docstring)."""
        loader = self.loader
        n = len(loader.dataset)
        if not loader.shuffle:
            return np.arange(n)
        order = np.ascontiguousarray(loader.rng.permutation(n), dtype=np.int64)
        if _several(self.comm):
            self.comm.broadcast(order, 0, what="broadcasting rank 0's shuffled order of the epoch")
        return order

    def __iter__(self):
        loader = self.loader
        self.check()
        order = self.epoch_order()
        from bitnet.data.loader import int64_labels
        start = 0
        for b, size in enumerate(self.batch_sizes()):
            part = size // self.size
            x, y = loader.dataset[order[start + self.rank * part:start + (self.rank + 1) * part]]
            start += size
            if loader.transform is not None:
                x = loader.transform(x)
            yield np.asarray(x, dtype=np.float32), int64_labels(y, f"labels of batch {b}")  # as DataLoader checks

    def __repr__(self):
        return (f"ShardedLoader(rank {self.rank} of {self.size}, global batch {self.batch_size}, "
                f"{self.local_batch_size} per rank, {len(self)} steps)")


class _Subset:
    """The samples ``indices`` of a dataset, indexed from 0."""

    def __init__(self, dataset, indices):
        self.dataset, self.indices = dataset, np.asarray(indices, dtype=np.int64)

    def __len__(self):
        return len(self.indices)

    def __getitem__(self, index):
        return self.dataset[self.indices[np.asarray(index)]]


class _Batches:
    """Batches ``start..stop-1`` of a sized iterable of batches."""

    def __init__(self, batches, start, stop):
        self.batches, self.start, self.stop = batches, start, stop

    def __len__(self):
        return self.stop - self.start

    def __iter__(self):
        return itertools.islice(iter(self.batches), self.start, self.stop)


def evaluation_bounds(n: int, rank: int, size: int) -> tuple:
    """``(start, stop)`` of rank's contiguous part of n samples (sizes differ by at most one)."""
    base, extra = divmod(n, size)
    start = rank * base + min(rank, extra)
    return start, start + base + (rank < extra)


_KIND = "evaluation set (0: a DataLoader, 1: batches)"
_SAME_EVALUATION = "Every rank evaluates its part of the same set: give every rank the same loader (or batches)"


def shard_for_evaluation(loader, comm):
    """Rank ``comm.rank``'s part of an evaluation ``loader`` (module docstring): for a ``DataLoader``, a
    ``DataLoader`` over its part of the samples one process would evaluate (same batch size and transform,
    not shuffled); for another sized iterable of batches (a list), its contiguous share of the batches."""
    from bitnet.data import DataLoader
    if int(comm.size) == 1:
        return loader
    if isinstance(loader, ShardedLoader):
        loader = loader.loader
    if _is_loader(loader):
        n, batch = len(loader.dataset), loader.batch_size
        agree(comm, [(_KIND, 0), ("dataset length", n), ("batch size", batch), ("drop_last", loader.drop_last),
                     ("shuffle", loader.shuffle)], "evaluation loaders", _SAME_EVALUATION)
        kept = n - n % batch if loader.drop_last else n  # what one process evaluates
        order = np.arange(n)
        if loader.shuffle:  # one process draws a permutation: the generator advances alike
            drawn = np.ascontiguousarray(loader.rng.permutation(n), dtype=np.int64)
            if kept < n:  # the samples kept depend on the order: rank 0's
                if _several(comm):
                    comm.broadcast(drawn, 0, what="broadcasting rank 0's order of the evaluation set")
                order = np.sort(drawn[:kept])
        start, stop = evaluation_bounds(kept, int(comm.rank), int(comm.size))
        return DataLoader(_Subset(loader.dataset, order[start:stop]), batch, transform=loader.transform)
    if hasattr(loader, "__len__") and hasattr(loader, "__iter__"):
        agree(comm, [(_KIND, 1), ("number of batches", len(loader)), ("batch size", 0), ("drop_last", False),
                     ("shuffle", False)], "evaluation loaders", _SAME_EVALUATION)  # as many fields as above
        start, stop = evaluation_bounds(len(loader), int(comm.rank), int(comm.size))
        return _Batches(loader, start, stop)
    raise TypeError(f"evaluate(distributed=...): expected a bitnet.data.DataLoader or a sized iterable of (x, y) "
                    f"batches such as a list, got {type(loader).__name__}")
