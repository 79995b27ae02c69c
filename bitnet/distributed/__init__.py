"""Data-parallel training on several processes and machines, on MPI (mpi4py): docs/distributed.md.

    comm = bitnet.distributed.init()           # MPI under mpiexec / srun, else a single process
    fit(model, opt, loader, epochs, distributed=comm)   # loader.batch_size: the global batch

or in a loop of your own::

    loader = bitnet.distributed.ShardedLoader(loader, comm)     # this rank's part of every batch
    averager = bitnet.distributed.GradientAverager(model, comm) # rank 0's weights; averaged gradients
    for x, y in loader:
        opt.zero_grad(); F.cross_entropy(model(Tensor(x)), y).backward(); opt.step()

The pieces, one job per module: ``comm`` (the ``Communicator`` interface, ``SingleProcess``), ``mpi``
(``MPICommunicator``; the only module that imports mpi4py, and only when ``init`` asks for MPI),
``env`` (``init``, reading the launcher's environment), ``data`` (sharded batches), ``gradients``
(bucketed, overlapped gradient averaging), ``state`` (broadcast, buffer averaging, the in-sync check),
``faults`` (dead, hung and failing ranks), ``fitting`` (what ``fit`` does on several ranks);
``SyncBatchNorm1d`` / ``SyncBatchNorm2d`` live in ``bitnet.nn`` (model files name them).
"""
from bitnet.distributed.comm import Communicator, Request, SingleProcess  # noqa: F401
from bitnet.distributed.data import ShardedLoader, shard_for_evaluation  # noqa: F401
from bitnet.distributed.env import init, launched_by_mpi, mpi_environment, share_cores  # noqa: F401
from bitnet.distributed.faults import (CollectiveTimeout, DistributedError, RankFailure,  # noqa: F401
                                       abort_on_error)
from bitnet.distributed.gradients import GradientAverager  # noqa: F401
from bitnet.distributed.state import average_buffers, broadcast_state, check_in_sync  # noqa: F401
from bitnet.nn.sync_batchnorm import SyncBatchNorm1d, SyncBatchNorm2d, convert_sync_batchnorm  # noqa: F401
