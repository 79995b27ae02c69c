"""``MPICommunicator``: the ``Communicator`` on MPI, through mpi4py (imported here only).

Every collective is started non-blocking (``Iallreduce``, ``Ibcast``, ``Iallgather``, ``Ibarrier``) and
finished in a polling loop (``_wait``): a short spin, then sleeps growing from 50 us to 1 ms, so a
waiting rank leaves the cores to the ranks still computing (on a machine with fewer cores than
threads, MPI's own busy-waiting takes them). Twice a second the loop checks that the other ranks on
this machine still exist and answers other ranks' sign-of-life requests; after ``timeout`` seconds it
fails, naming the ranks that do not answer (``bitnet.distributed.faults``).

The communicator works on its own duplicate of ``MPI.COMM_WORLD`` (another for the sign-of-life
messages), so a library or a second communicator using the world communicator never mixes its
messages with bitnet's. ``local_rank`` / ``local_size``: the rank among the processes on the same
machine (``MPI_Comm_split_type(MPI_COMM_TYPE_SHARED)``).
"""
from __future__ import annotations

import os
import sys
import time

import numpy as np

from bitnet.distributed.comm import Communicator, Request, check_array, check_op
from bitnet.distributed.faults import (CollectiveTimeout, DistributedError, RankFailure, dead_local_ranks,
                                       describe_rank, identity, install_excepthook, remove_excepthook)

#: Seconds between the checks of the other ranks while a collective waits.
CHECK_INTERVAL = 0.5
#: Seconds a timed-out rank waits for the other ranks' answers to its sign-of-life request.
ANSWER_GRACE = 5.0
#: Seconds between a failing rank's last output and MPI_Abort.
ABORT_GRACE = 1.0
_PING, _PONG = 7301, 7302


def _plural(n, one, many):
    return one if n == 1 else many


class MPIRequest(Request):
    """A started MPI collective; ``wait()`` finishes it in the communicator's polling loop."""

    def __init__(self, comm, request, array, what):
        super().__init__(array)
        self._comm, self._request, self._what, self._done = comm, request, what, False

    def test(self) -> bool:
        if not self._done:
            self._done = self._comm._test(self._request, self._what)
        return self._done

    def wait(self) -> np.ndarray:
        if not self._done:
            self._comm._wait(self._request, self._what)
            self._done = True
        return self.array


class MPICommunicator(Communicator):
    """The processes of ``MPI.COMM_WORLD`` (or of ``mpi_comm``); ``timeout``: seconds a collective may
    wait (None or 0: for ever)."""

    def __init__(self, timeout: float | None = None, mpi_comm=None):
        from mpi4py import MPI
        self._MPI = MPI
        base = MPI.COMM_WORLD if mpi_comm is None else mpi_comm
        self._comm = base.Dup()
        self._health = base.Dup()
        local = self._comm.Split_type(MPI.COMM_TYPE_SHARED)
        self.local_rank, self.local_size = local.Get_rank(), local.Get_size()
        local.Free()
        self.rank, self.size = self._comm.Get_rank(), self._comm.Get_size()
        me = identity()
        self.host = me["host"]
        #: every rank's {"host", "pid", "space"}, in rank order
        self.peers = self._comm.allgather(me)
        self.timeout = float(timeout) if timeout else None
        self._ops = {"sum": MPI.SUM, "max": MPI.MAX, "min": MPI.MIN}
        self._count = 0       # collectives started: reported in sign-of-life answers
        self._sends = []      # (request, buffer) of answers still in flight
        self._hook = install_excepthook(self) if self.size > 1 else None

    # -- collectives ----------------------------------------------------------------------------------
    def allreduce(self, array, op="sum", what="allreduce"):
        return self.iallreduce(array, op, what).wait()

    def iallreduce(self, array, op="sum", what="allreduce"):
        check_array(array, "iallreduce")
        check_op(op, "allreduce")
        self._count += 1
        return MPIRequest(self, self._comm.Iallreduce(self._MPI.IN_PLACE, array, op=self._ops[op]), array, what)

    def broadcast(self, array, root=0, what="broadcast"):
        check_array(array, "broadcast")
        if not 0 <= root < self.size:
            raise ValueError(f"broadcast: root must be a rank of 0..{self.size - 1}, got {root}")
        self._count += 1
        self._wait(self._comm.Ibcast(array, root=root), what)
        return array

    def allgather(self, array, what="allgather"):
        array = np.ascontiguousarray(array)
        out = np.empty((self.size,) + array.shape, array.dtype)
        self._count += 1
        self._wait(self._comm.Iallgather(array, out), what)
        return out

    def barrier(self, what="barrier"):
        self._count += 1
        self._wait(self._comm.Ibarrier(), what)

    def abort(self, code=1):
        """End every process of the run with exit status ``code``, after a moment in which the launcher
        forwards what this rank printed (MPI_Abort makes it kill the processes and drop output not yet
        read from them)."""
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (OSError, ValueError):
                pass
        time.sleep(ABORT_GRACE)
        self._MPI.COMM_WORLD.Abort(int(code))

    def close(self):
        from bitnet.distributed.env import restore_threads
        remove_excepthook(self._hook)
        self._hook = None
        restore_threads(self)  # the thread count init had shared out (bitnet.distributed.env)
        MPI = self._MPI
        if MPI.Is_finalized():
            return
        for name in ("_comm", "_health"):
            c = getattr(self, name, None)
            if c is not None and c != MPI.COMM_NULL:
                c.Free()
                setattr(self, name, MPI.COMM_NULL)

    def describe(self):
        where = ", ".join(f"rank {r} pid {p['pid']} on {p['host']}" for r, p in enumerate(self.peers))
        return f"{self.size} processes ({where})"

    # -- waiting --------------------------------------------------------------------------------------
    def _test(self, request, what) -> bool:
        try:
            return request.Test()
        except self._MPI.Exception as e:
            dead = dead_local_ranks(self.peers, self.rank)
            raise DistributedError(f"rank {self.rank} of {self.size}: {what} failed in MPI ({e})"
                                   + (f"; {self._dead_text(dead)}" if dead else "")) from None

    def _wait(self, request, what) -> None:
        """Finish ``request`` in the polling loop of the module docstring."""
        if self._test(request, what):
            return
        start = time.monotonic()
        next_check, delay, spins = start + CHECK_INTERVAL, 50e-6, 0
        while not self._test(request, what):
            if spins < 200:
                spins += 1
                continue
            time.sleep(delay)
            delay = min(2 * delay, 1e-3)
            now = time.monotonic()
            if now >= next_check:
                self._answer()
                dead = dead_local_ranks(self.peers, self.rank)
                if dead:
                    raise RankFailure(f"rank {self.rank} of {self.size}: {what} cannot finish: "
                                      f"{self._dead_text(dead)}", dead)
                next_check = now + CHECK_INTERVAL
            if self.timeout is not None and now - start >= self.timeout:
                silent = self._silent_ranks()
                if silent:
                    who = ", ".join(describe_rank(self.peers, r) for r in silent)
                    why = (f"{who} {_plural(len(silent), 'does', 'do')} not answer (dead, hung, or stuck in "
                           "a long computation)")
                else:
                    why = "every other rank answers, but not in this collective (ranks running different code?)"
                raise CollectiveTimeout(f"rank {self.rank} of {self.size}: {what} did not finish within "
                                        f"{self.timeout:g} s: {why}; if a step can take longer, raise the limit "
                                        "with BITNET_DIST_TIMEOUT=SECONDS (0: no limit)", silent)

    def _dead_text(self, dead) -> str:
        who = ", ".join(describe_rank(self.peers, r) for r in dead)
        return f"{who} {_plural(len(dead), 'has', 'have')} died (the process is gone)"

    def _answer(self) -> None:
        """Answer the sign-of-life requests other ranks sent (with how many collectives this rank began)."""
        MPI = self._MPI
        status = MPI.Status()
        while self._health.Iprobe(source=MPI.ANY_SOURCE, tag=_PING, status=status):
            source = status.Get_source()
            self._health.Recv(np.empty(1, np.int64), source=source, tag=_PING)
            buf = np.array([self._count], np.int64)
            self._sends.append((self._health.Isend(buf, dest=source, tag=_PONG), buf))
        self._sends = [(r, b) for r, b in self._sends if not r.Test()]

    def _silent_ranks(self) -> list:
        """The other ranks that do not answer a sign-of-life request within ``ANSWER_GRACE`` seconds."""
        others = [r for r in range(self.size) if r != self.rank]
        token = np.array([self._count], np.int64)
        for r in others:
            self._sends.append((self._health.Isend(token, dest=r, tag=_PING), token))
        answers = {r: np.empty(1, np.int64) for r in others}
        pending = {r: self._health.Irecv(answers[r], source=r, tag=_PONG) for r in others}
        end = time.monotonic() + ANSWER_GRACE
        while pending and time.monotonic() < end:
            self._answer()
            for r in [r for r, q in pending.items() if q.Test()]:
                del pending[r]
            time.sleep(0.01)
        for q in pending.values():
            q.Cancel()
        return sorted(pending)


def default_timeout() -> float | None:
    """``$BITNET_DIST_TIMEOUT`` seconds (0: no limit), else 600."""
    text = os.environ.get("BITNET_DIST_TIMEOUT", "").strip()
    if not text:
        return 600.0
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"BITNET_DIST_TIMEOUT={text!r}: expected a number of seconds (0: no limit)") from None
    if value < 0 or value != value:
        raise ValueError(f"BITNET_DIST_TIMEOUT={text!r}: expected a number of seconds >= 0 (0: no limit)")
    return value or None
