"""Failures of a distributed run: what the other ranks see when one dies, hangs or raises.

Three mechanisms, so that no rank waits for ever and the message names the rank that failed:

1. **A rank that raises** prints its error (``rank R of N (pid P on HOST) failed: ...``) and calls
   ``abort`` (``MPI_Abort``): the launcher ends every process at once. An MPI communicator of several
   ranks installs a ``sys.excepthook`` that does this for an exception nobody catches (a script's
   ``fit`` that raises; without it the rank would wait in ``MPI_Finalize`` and the others in their next
   collective); ``abort_on_error(comm)`` is the ``with`` block for code that catches exceptions itself;
   ``bitnet train`` reports the error as usual, then aborts.
2. **A rank that dies** (killed, out of memory, a crash): MPI launchers end the whole job when one
   process exits abnormally (MPICH's and Intel MPI's ``mpiexec``, Open MPI's ``mpirun``; Slurm's
   ``srun --kill-on-bad-exit``), within a second, and name the dead process (pid and host; the run's
   first line, printed by rank 0, maps pids to ranks). Where the launcher leaves the others running
   (``srun`` without that option; MPICH's ``mpiexec -disable-auto-cleanup`` for a process that ends with
   status 0 without finalizing MPI), the waiting ranks notice themselves: every collective waits in a
   polling loop that checks, twice a second, whether the processes of the other ranks on the same
   machine still exist, and fails with ``RankFailure`` naming the dead ranks.
3. **A rank that hangs** (or died on another machine without the launcher noticing): a collective
   that has not finished after ``timeout`` seconds fails with ``CollectiveTimeout``. Before that, the
   waiting rank asks every other rank for a sign of life over a separate communicator (ranks waiting in
   a collective answer); the message names the ranks that did not answer within a few seconds.

The last checkpoint stays loadable throughout: ``bitnet.save`` writes a temporary file and renames it
(``bitnet.io.h5.atomic_write``), so a rank killed in the middle of a write leaves the previous file.
"""
from __future__ import annotations

import contextlib
import os
import socket
import sys
import traceback


class DistributedError(RuntimeError):
    """A collective that cannot finish because another rank failed."""


class RankFailure(DistributedError):
    """Another rank's process is gone (``ranks``: the dead ones)."""

    def __init__(self, message, ranks=()):
        super().__init__(message)
        self.ranks = tuple(ranks)


class CollectiveTimeout(DistributedError):
    """A collective did not finish within the communicator's ``timeout`` (``silent``: the ranks that
    did not answer a sign-of-life request)."""

    def __init__(self, message, silent=()):
        super().__init__(message)
        self.silent = tuple(silent)


def identity() -> dict:
    """This process: host name, pid, and the key of its process-id space (processes with the same key
    can see each other's pids: the same machine, the same container)."""
    space = socket.gethostname()
    for path in ("/proc/sys/kernel/random/boot_id", "/proc/self/ns/pid"):
        try:
            if path.endswith("boot_id"):
                with open(path) as f:
                    space += ":" + f.read().strip()
            else:
                space += ":" + str(os.stat(path).st_ino)
        except OSError:
            pass
    return {"host": socket.gethostname(), "pid": os.getpid(), "space": space}


def process_alive(pid: int) -> bool:
    """Whether process ``pid`` exists and is not a zombie (a dead child its parent has not reaped)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
        return state not in ("Z", "X")
    except (OSError, IndexError):
        return True  # no /proc: the pid exists


def describe_rank(peers, rank: int) -> str:
    p = peers[rank]
    return f"rank {rank} (pid {p['pid']} on {p['host']})"


def dead_local_ranks(peers, me: int) -> list:
    """The ranks whose processes share this one's pid space and no longer exist."""
    mine = peers[me]["space"]
    return [r for r, p in enumerate(peers) if r != me and p["space"] == mine and not process_alive(p["pid"])]


def failure_text(comm, error: BaseException) -> str:
    """The line a failing rank prints before aborting the run."""
    where = f"rank {comm.rank} of {comm.size} (pid {os.getpid()} on {socket.gethostname()})"
    return f"{where} failed: {type(error).__name__}: {error}; aborting all {comm.size} processes"


@contextlib.contextmanager
def abort_on_error(comm, prefix: str = "bitnet", show_traceback: bool = True):
    """Run the block; if it raises on a run of several processes, print the error (with the traceback,
    unless ``show_traceback`` is false) prefixed by ``prefix`` and this rank, then ``comm.abort(1)``:
    the launcher ends every rank (module docstring). On a single process the error propagates."""
    try:
        yield
    except BaseException as e:  # noqa: B902 - a KeyboardInterrupt on one rank must end the others too
        if getattr(comm, "size", 1) <= 1 or (isinstance(e, SystemExit) and e.code in (0, None)):
            raise
        if show_traceback and not isinstance(e, (DistributedError, KeyboardInterrupt)):
            traceback.print_exc(file=sys.stderr)
        print(f"{prefix}: {failure_text(comm, e)}", file=sys.stderr, flush=True)
        comm.abort(1)


def install_excepthook(comm):
    """Make an uncaught exception on this rank print its traceback and the failure line, then end every
    rank (``comm.abort(1)``); returns the hook (``remove_excepthook`` puts the previous one back)."""
    previous = sys.excepthook

    def hook(kind, value, tb):
        previous(kind, value, tb)
        if not issubclass(kind, SystemExit):
            print(f"{os.path.basename(sys.argv[0] or 'python')}: {failure_text(comm, value)}", file=sys.stderr,
                  flush=True)
            comm.abort(1)

    hook.previous = previous
    sys.excepthook = hook
    return hook


def remove_excepthook(hook) -> None:
    """Undo ``install_excepthook`` (only while ``hook`` is the installed one)."""
    if hook is not None and sys.excepthook is hook:
        sys.excepthook = hook.previous
