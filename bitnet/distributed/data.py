"""Sharded data: each rank's part of every global batch, and of an evaluation set.

``ShardedLoader(loader, comm)`` wraps a ``bitnet.data.DataLoader`` whose ``batch_size`` B is the
*global* batch (the sum over the N ranks). Every rank draws the epoch's permutation from the loader's
generator, seeded alike on every rank (the same seed, or the same checkpoint), so all ranks hold the
same order, the one a single process with batch B would use. Global batch b is ``order[b*B:(b+1)*B]``,
as for one process; rank r takes its r-th contiguous part of B/N samples:

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

``shard_for_evaluation(loader, comm)``: rank r's contiguous part of an evaluation set (``loader``'s
dataset, not shuffled), the parts' sizes differing by at most one; nothing is dropped, since
evaluation sums its counts over the ranks (``evaluate(..., distributed=comm)``).
"""
from __future__ import annotations

import numpy as np


class ShardedLoader:
    """Rank ``comm.rank``'s part of every global batch of ``loader`` (module docstring). ``comm`` may be
    any object with ``rank`` and ``size``. ``len()`` is the number of steps per epoch, the same on
    every rank; ``rng`` is the loader's generator (saved in checkpoints)."""

    def __init__(self, loader, comm):
        for attr in ("dataset", "batch_size", "shuffle", "rng", "drop_last", "transform"):
            if not hasattr(loader, attr):
                raise TypeError(f"ShardedLoader: expected a bitnet.data.DataLoader, got {type(loader).__name__} "
                                f"(it has no {attr!r})")
        self.loader, self.rank, self.size = loader, int(comm.rank), int(comm.size)
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

    def __iter__(self):
        loader = self.loader
        n = len(loader.dataset)
        order = loader.rng.permutation(n) if loader.shuffle else np.arange(n)
        start = 0
        for size in self.batch_sizes():
            part = size // self.size
            x, y = loader.dataset[order[start + self.rank * part:start + (self.rank + 1) * part]]
            start += size
            if loader.transform is not None:
                x = loader.transform(x)
            yield np.asarray(x, dtype=np.float32), np.asarray(y, dtype=np.int64)

    def __repr__(self):
        return (f"ShardedLoader(rank {self.rank} of {self.size}, global batch {self.batch_size}, "
                f"{self.local_batch_size} per rank, {len(self)} steps)")


class _Part:
    """Samples ``start..stop-1`` of a dataset, indexed from 0."""

    def __init__(self, dataset, start, stop):
        self.dataset, self.start, self.stop = dataset, start, stop

    def __len__(self):
        return self.stop - self.start

    def __getitem__(self, index):
        return self.dataset[np.asarray(index) + self.start]


def evaluation_bounds(n: int, rank: int, size: int) -> tuple:
    """``(start, stop)`` of rank's contiguous part of n samples (sizes differ by at most one)."""
    base, extra = divmod(n, size)
    start = rank * base + min(rank, extra)
    return start, start + base + (rank < extra)


def shard_for_evaluation(loader, comm):
    """A ``DataLoader`` over rank ``comm.rank``'s part of ``loader``'s dataset, same batch size and
    transform, not shuffled (module docstring)."""
    from bitnet.data import DataLoader
    if comm.size == 1:
        return loader
    start, stop = evaluation_bounds(len(loader.dataset), comm.rank, comm.size)
    return DataLoader(_Part(loader.dataset, start, stop), loader.batch_size, transform=loader.transform)
