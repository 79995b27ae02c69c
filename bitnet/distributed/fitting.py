"""What ``fit(..., distributed=comm)`` and ``evaluate(..., distributed=comm)`` do on several ranks.

``fit`` with a communicator of N > 1 ranks:

- gives every rank rank 0's parameters and buffers, then averages the gradients after every backward
  (``GradientAverager``); the optimizer and schedule run unchanged on every rank, identically;
- first compares the ranks' training loaders (dataset length, batch size, ``drop_last``, ``shuffle``:
  a ``DistributedError`` naming each rank's values where they differ, before any other collective);
- trains on ``ShardedLoader(train_loader, comm)``: ``train_loader.batch_size`` is the global batch, and
  each epoch's order is rank 0's (the ranks' generators need not be seeded alike);
- reports global numbers: each step's loss, accuracy and sample count are summed over the ranks (one
  allreduce of three numbers per step), so the history, the progress bar and the callbacks see the
  global batch, the same on every rank (early stopping decides alike everywhere);
- at the end of each epoch averages the batch-norm buffers over the ranks (``average_buffers``) and
  checks that all ranks hold the same weights (``check_in_sync``); the validation set (a ``DataLoader``
  or a list of batches) is split over the ranks as ``shard_for_evaluation`` says and its sums are added up;
- prints (progress bar, epoch lines) on rank 0 only; callbacks that write files (``ModelCheckpoint``,
  ``CSVLogger``) write on rank 0 only and the others wait for the checkpoint (a barrier);
- a rank that raises and does not catch the error prints it and ends the run (the communicator's
  ``sys.excepthook``, ``bitnet.distributed.faults``).
"""
from __future__ import annotations

import numpy as np

from bitnet.distributed.data import ShardedLoader, shard_for_evaluation
from bitnet.distributed.gradients import GradientAverager
from bitnet.distributed.state import average_buffers, check_in_sync


class DistributedFit:
    """The per-rank machinery of one ``fit`` call (module docstring)."""

    def __init__(self, comm, model, train_loader, bucket_bytes: int = 1 << 20):
        self.comm, self.model = comm, model
        self.loader = train_loader if isinstance(train_loader, ShardedLoader) else ShardedLoader(train_loader, comm)
        self.loader.check()  # before the weights are broadcast: a clear error, not mismatched collectives
        self.averager = GradientAverager(model, comm, bucket_bytes=bucket_bytes)

    def step_totals(self, loss, correct, n):
        """(mean loss, correct, samples) of the global batch from this rank's (mean loss, correct, n)."""
        totals = np.array([loss * n, correct, n], np.float64)
        self.comm.allreduce(totals, what="the step's loss and accuracy")
        return totals[0] / totals[2], int(round(totals[1])), int(round(totals[2]))

    def end_epoch(self, epoch: int) -> None:
        average_buffers(self.model, self.comm)
        check_in_sync(self.model, self.comm, f"after epoch {epoch}")

    def close(self) -> None:
        self.averager.close()


def evaluation_loader(loader, comm):
    """Rank ``comm.rank``'s part of an evaluation loader (all of it on one rank)."""
    return shard_for_evaluation(loader, comm)


def evaluation_totals(comm, total_loss, correct, seen):
    """(summed loss, correct, samples) over the ranks."""
    totals = np.array([total_loss, correct, seen], np.float64)
    comm.allreduce(totals, what="the evaluation's sums")
    return float(totals[0]), int(round(totals[1])), int(round(totals[2]))
