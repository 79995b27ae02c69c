"""Setting up: was this process started by an MPI launcher, and the communicator of the run.

``mpi_environment()`` reads the launcher's environment variables, without importing mpi4py:

    MPICH, Intel MPI (Hydra), Slurm srun --mpi=pmi2    PMI_RANK, PMI_SIZE
    Open MPI (mpirun)                                   OMPI_COMM_WORLD_RANK, OMPI_COMM_WORLD_SIZE
    MVAPICH                                             MV2_COMM_WORLD_RANK, MV2_COMM_WORLD_SIZE
    PMIx launchers (srun --mpi=pmix, prun)              PMIX_RANK with SLURM_STEP_NUM_TASKS

``init()`` returns the communicator of the run: an ``MPICommunicator`` when a launcher started this
process (or when ``backend="mpi"`` asks for one), else ``SingleProcess``. Only then, and only for MPI,
is mpi4py imported (``import bitnet`` never imports it). Each call returns a new communicator (its
own duplicate of ``MPI.COMM_WORLD``); nothing is cached, so ``close()`` it when done, or use it as a
``with`` block.

Threads: N ranks on one machine that each ran a thread per core would oversubscribe it N times. So
``init`` gives an MPI communicator of several ranks on this machine (``local_size`` > 1) this rank's
share of the cores (``share_cores``): the cores it may run on divided by ``local_size``, unless the
thread count was chosen already (``NUMBA_NUM_THREADS`` set, or ``numba.set_num_threads`` lowered it) or
``init(share_cores=False)``. ``close()`` gives the process its previous count back.
"""
from __future__ import annotations

import os

from bitnet.distributed.comm import SingleProcess

_VARIABLES = (("PMI_RANK", "PMI_SIZE", "MPICH / Intel MPI (Hydra) or srun --mpi=pmi2"),
              ("OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE", "Open MPI"),
              ("MV2_COMM_WORLD_RANK", "MV2_COMM_WORLD_SIZE", "MVAPICH"),
              ("PMIX_RANK", "SLURM_STEP_NUM_TASKS", "a PMIx launcher"))

INSTALL_HINT = ('install mpi4py and an MPI library: pip install "bitnet-bnn[mpi]" (mpi4py and MPICH from PyPI), '
                "or pip install mpi4py against your cluster's MPI (docs/distributed.md)")


def mpi_environment(environ=None) -> dict | None:
    """``{"rank", "size", "launcher"}`` from an MPI launcher's variables (module docstring), or None when
    this process was not started by one."""
    env = os.environ if environ is None else environ
    for rank_var, size_var, launcher in _VARIABLES:
        rank, size = env.get(rank_var), env.get(size_var)
        if rank is None or size is None:
            continue
        try:
            rank, size = int(rank), int(size)
        except ValueError:
            continue
        if size >= 1 and 0 <= rank < size:
            return {"rank": rank, "size": size, "launcher": launcher, "variables": (rank_var, size_var)}
    return None


def launched_by_mpi(environ=None) -> bool:
    """True when an MPI launcher started this process as one of several (``size`` > 1)."""
    env = mpi_environment(environ)
    return env is not None and env["size"] > 1


_DEFAULT = object()


def init(backend: str = "auto", timeout=_DEFAULT, share_cores: bool = True):
    """The communicator of this run.

    ``backend``: ``"auto"`` (MPI when an MPI launcher started this process, else a single process),
    ``"mpi"`` (MPI even without a launcher: then a world of one MPI process), ``"single"``.
    ``timeout``: seconds a collective may wait for the other ranks before failing with a message naming
    the ranks that do not answer; None or 0 waits for ever; the default is ``$BITNET_DIST_TIMEOUT``,
    else 600 (``bitnet.distributed.faults``).
    ``share_cores``: with several ranks on this machine, give this one its share of the cores for
    bitnet's threads, unless they were chosen already (module docstring); False leaves them alone.
    """
    if backend not in ("auto", "mpi", "single"):
        raise ValueError(f"init: backend must be 'auto', 'mpi' or 'single', got {backend!r}")
    env = mpi_environment()
    if backend == "single" or (backend == "auto" and env is None):
        return SingleProcess()
    try:
        import mpi4py  # noqa: F401
    except ImportError:
        started = f"this process was started by {env['launcher']} ({env['variables'][1]}={env['size']}), but " \
            if env else ""
        raise ImportError(f"distributed training: {started}mpi4py is not installed; {INSTALL_HINT}") from None
    from bitnet.distributed.mpi import MPICommunicator, default_timeout
    comm = MPICommunicator(timeout=default_timeout() if timeout is _DEFAULT else timeout)
    if share_cores:
        share_cores_by_default(comm)
    return comm


def share_cores_by_default(comm) -> None:
    """What ``init`` does for bitnet's threads (module docstring): with several ranks on this machine and
    no thread count chosen, ``share_cores(comm)``, remembering the count before in ``comm.threads_set``
    for ``restore_threads``."""
    if comm.local_size > 1 and not threads_chosen():
        import numba
        before = numba.get_num_threads()
        comm.threads_set = (before, share_cores(comm))


def threads_chosen() -> bool:
    """Whether the user chose bitnet's thread count: ``NUMBA_NUM_THREADS`` is set, or
    ``numba.set_num_threads`` lowered the count below Numba's default."""
    import numba
    return "NUMBA_NUM_THREADS" in os.environ or numba.get_num_threads() != numba.config.NUMBA_NUM_THREADS


def restore_threads(comm) -> None:
    """Give the process the thread count it had before ``init`` shared the cores (unless the count was
    changed since)."""
    before, after = getattr(comm, "threads_set", None) or (None, None)
    comm.threads_set = None
    if before is not None:
        import numba
        if numba.get_num_threads() == after:
            numba.set_num_threads(before)


def share_cores(comm) -> int:
    """Give this process its share of the machine's cores for bitnet's threads: the cores it may run on
    divided by the ranks on this machine (``comm.local_size``), unless ``NUMBA_NUM_THREADS`` says how many;
    returns the thread count. Without it, N ranks on one machine would each start a thread per core.
    ``init`` calls it (``share_cores_by_default``) unless the count was chosen already."""
    import numba
    if "NUMBA_NUM_THREADS" in os.environ:
        return numba.get_num_threads()
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = os.cpu_count() or 1
    threads = max(1, min(cores // max(1, comm.local_size), numba.config.NUMBA_NUM_THREADS))
    numba.set_num_threads(threads)
    return threads
