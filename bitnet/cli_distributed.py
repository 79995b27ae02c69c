"""``bitnet train --distributed``: the command line's side of data-parallel training (docs/distributed.md).

- ``communicator(args)``: the run's communicator when ``--distributed`` is given or an MPI launcher
  started the process (``mpiexec -n N bitnet train ...``), else None (the ordinary one-process run, which
  never imports mpi4py); each process gets its share of the machine's cores;
- ``sync_batchnorm(model, comm, convert)``: ``--sync-batchnorm``, and the communicator for a resumed
  model's SyncBatchNorm layers;
- ``check_batch(comm, batch_size)``: ``--batch-size`` is the global batch, a multiple of the processes;
- ``rank_zero_first(comm, what)``: rank 0 reads (or downloads) the dataset first, the others after it;
- ``failure(args, comm, error)``: the message of a rank that fails with an unexpected error.

Rank 0 prints and writes the checkpoint; a rank whose command fails prints its error, naming itself,
and ends every process of the run (``bitnet.cli.main`` calls ``comm.abort``).
"""
from __future__ import annotations

import contextlib
import sys

from bitnet.cli_files import CommandError


def add_options(p) -> None:
    """``train``'s ``--distributed`` and ``--sync-batchnorm``."""
    p.add_argument("--distributed", action="store_true",
                   help="data-parallel training on the processes of an MPI launch (mpiexec -n N bitnet train ...; "
                        "on by itself when started by an MPI launcher): --batch-size is the global batch, split "
                        "equally over the processes; rank 0 prints and writes files (docs/distributed.md)")
    p.add_argument("--sync-batchnorm", action="store_true",
                   help="batch-norm statistics over the global batch of all processes (SyncBatchNorm; default: "
                        "each process's own part); the checkpoint keeps the layers synchronized")


def communicator(args):
    from bitnet.distributed.env import launched_by_mpi
    if not (args.distributed or launched_by_mpi()):
        return None
    from bitnet import distributed
    try:
        comm = distributed.init("mpi")
    except ImportError as e:  # no mpi4py (or no MPI library under it): its message says what to install
        raise CommandError(str(e)) from None
    distributed.share_cores(comm)
    args.rank_text = f" (rank {comm.rank} of {comm.size})" if comm.size > 1 else ""
    return comm


def sync_batchnorm(model, comm, convert: bool) -> None:
    """``--sync-batchnorm``: the model's batch norms become SyncBatchNorm layers; and those of a model
    (a resumed checkpoint's) get the run's communicator (None: they work as plain batch norm)."""
    from bitnet.nn.sync_batchnorm import attach, convert_sync_batchnorm
    if convert:
        convert_sync_batchnorm(model, comm)
    else:
        attach(model, comm)


def check_batch(comm, batch_size: int) -> None:
    if comm is not None and batch_size % comm.size:
        low = batch_size - batch_size % comm.size
        raise CommandError(f"--batch-size {batch_size}: with --distributed it is the global batch, split equally over "
                           f"the {comm.size} processes; give a multiple of {comm.size}, e.g. {low or comm.size} or "
                           f"{low + comm.size}")


def shard(loader, comm):
    """The loader of this rank's part of every global batch; ``loader`` itself without ``comm``."""
    if comm is None:
        return loader
    from bitnet.distributed import ShardedLoader
    return ShardedLoader(loader, comm)


def describe(comm, steps) -> str:
    """The line rank 0 prints: the processes (rank, pid, host: what launchers name a dead process by)."""
    dropped = f", {steps.dropped_per_epoch} dropped per epoch" if steps.dropped_per_epoch else ""
    return f"distributed: {comm.describe()}; {steps.local_batch_size} images per process in each batch{dropped}"


@contextlib.contextmanager
def rank_zero_first(comm, what: str):
    """Rank 0 runs the block first, the other ranks once it has finished (they find its files)."""
    several = comm is not None and comm.size > 1
    if several and not comm.is_main:
        comm.barrier(what=f"waiting for rank 0: {what}")
    yield
    if several and comm.is_main:
        comm.barrier(what=f"waiting for rank 0: {what}")


def failure(args, comm, error) -> int:
    """Print an unexpected error of one rank (with its traceback unless it is another rank's failure);
    returns the exit status 1."""
    from bitnet.distributed.faults import DistributedError, failure_text
    if not isinstance(error, DistributedError):
        import traceback
        traceback.print_exc()
    print(f"bitnet {args.command}: {failure_text(comm, error)}", file=sys.stderr, flush=True)
    return 1
