"""The communicator interface of data-parallel training, and its single-process fallback.

A ``Communicator`` connects the ``size`` processes of one run (``rank`` 0..size-1; ``local_rank`` /
``local_size`` among the processes on the same machine) and offers the collectives bitnet needs, on
contiguous NumPy arrays:

    allreduce(a, op="sum")     every rank gets  sum_r a_r  (or max / min), in place
    iallreduce(a)              the same, started now; ``.wait()`` on the returned request finishes it
    broadcast(a, root=0)       every rank gets root's a, in place
    allgather(a)               every rank gets the (size, *a.shape) stack of all ranks' a, in rank order
    barrier()                  returns on a rank once every rank has entered it
    abort(code)                ends every process of the run (after a rank has printed its error)

``empty(shape, dtype)`` allocates the buffers a caller reduces (``GradientAverager``'s flat buckets).
That is the seam for a GPU communicator: NCCL through CuPy (or a CUDA-aware MPI) would implement the
same methods on device arrays and allocate its buffers on the device in ``empty``; nothing outside a
communicator touches a transport. Only ``MPICommunicator`` (``bitnet.distributed.mpi``) exists today.

``SingleProcess`` is the world of one process: every collective returns its input unchanged (the sum,
maximum and minimum over one rank), so the same training script runs with and without ``mpiexec``.
"""
from __future__ import annotations

import abc
import os
import socket
import sys

import numpy as np

OPS = ("sum", "max", "min")


class Communicator(abc.ABC):
    """Interface of a communicator (module docstring). Subclasses set ``rank``, ``size``,
    ``local_rank``, ``local_size`` and implement the collectives."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0
    local_size: int = 1
    #: seconds a collective may wait for the other ranks before it fails (None: for ever)
    timeout: float | None = None
    #: (threads before, threads after) where ``init`` shared the machine's cores out, else None
    threads_set: tuple | None = None

    @property
    def is_main(self) -> bool:
        """True on rank 0: the rank that prints, logs and writes files."""
        return self.rank == 0

    def empty(self, shape, dtype=np.float32) -> np.ndarray:
        """A buffer for this communicator's collectives (on the device, for a GPU communicator)."""
        return np.empty(shape, dtype)

    @abc.abstractmethod
    def allreduce(self, array, op: str = "sum", what: str = "allreduce") -> np.ndarray:
        """Every rank's ``array`` becomes the sum (max, min) over the ranks, in place; returns it.
        ``what`` names the collective in error messages."""

    @abc.abstractmethod
    def iallreduce(self, array, op: str = "sum", what: str = "allreduce") -> "Request":
        """``allreduce`` started now; the returned request's ``wait()`` finishes it."""

    @abc.abstractmethod
    def broadcast(self, array, root: int = 0, what: str = "broadcast") -> np.ndarray:
        """Every rank's ``array`` becomes rank ``root``'s, in place; returns it."""

    @abc.abstractmethod
    def allgather(self, array, what: str = "allgather") -> np.ndarray:
        """The ``(size, *array.shape)`` stack of every rank's ``array``, in rank order."""

    @abc.abstractmethod
    def barrier(self, what: str = "barrier") -> None:
        """Return once every rank has entered the barrier."""

    @abc.abstractmethod
    def abort(self, code: int = 1):
        """End every process of the run with exit status ``code``."""

    def close(self) -> None:
        """Release what the communicator holds (nothing for ``SingleProcess``)."""

    def describe(self) -> str:
        """One line: the number of processes and where they run."""
        return f"{self.size} process{'es' if self.size > 1 else ''}"

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __repr__(self):
        return f"{type(self).__name__}(rank={self.rank}, size={self.size})"


class Request:
    """A started collective; ``wait()`` finishes it (returns its array), ``test()`` says whether it has."""

    def __init__(self, array):
        self.array = array

    def test(self) -> bool:
        return True

    def wait(self) -> np.ndarray:
        return self.array


def check_array(array, who: str, writable: bool = True) -> np.ndarray:
    """``array`` as a C-contiguous NumPy array that collectives can fill in place; a clear error if not."""
    if not isinstance(array, np.ndarray):
        raise TypeError(f"{who}: expected a NumPy array, got {type(array).__name__}; pass np.asarray(x) "
                        "(a Tensor's array is tensor.data)")
    if not array.flags.c_contiguous or (writable and not array.flags.writeable):
        raise ValueError(f"{who}: the array (shape {array.shape}, dtype {array.dtype}) must be C-contiguous and "
                         "writable (the result is written in place); pass np.ascontiguousarray(a) or a.copy()")
    return array


def check_op(op: str, who: str) -> str:
    if op not in OPS:
        raise ValueError(f"{who}: op must be one of {', '.join(OPS)}, got {op!r}")
    return op


class SingleProcess(Communicator):
    """The world of one process: every collective is the identity (module docstring)."""

    def __init__(self):
        self.rank, self.size, self.local_rank, self.local_size = 0, 1, 0, 1
        self.host = socket.gethostname()

    def allreduce(self, array, op="sum", what="allreduce"):
        check_op(op, "allreduce")
        return check_array(array, "allreduce")

    def iallreduce(self, array, op="sum", what="allreduce"):
        check_op(op, "iallreduce")
        return Request(check_array(array, "iallreduce"))

    def broadcast(self, array, root=0, what="broadcast"):
        if root != 0:
            raise ValueError(f"broadcast: root must be a rank of 0..{self.size - 1}, got {root}")
        return check_array(array, "broadcast")

    def allgather(self, array, what="allgather"):
        return np.asarray(array)[None].copy()

    def barrier(self, what="barrier"):
        return None

    def abort(self, code=1):
        sys.stderr.flush()
        os._exit(code)

    def describe(self):
        return f"1 process on {self.host}"
