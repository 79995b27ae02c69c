"""A load generator for the benchmarks' ``--busy N``: N processes that each keep one core busy.

Each is ``python -c "while True: pass"`` (one interpreter, one thread, no memory traffic to speak
of: it only takes CPU time away from the benchmark, as another user of a shared machine does).
``busy(n)`` is a context manager: the processes run while its block runs and are always stopped
when it ends, by a normal exit, an exception or Ctrl-C (killed, then waited for, so none is left
behind as a zombie). ``STARTED`` keeps the process ids this process ever started, for the tests
to check that none of them is still alive.
"""
from __future__ import annotations

import contextlib
import subprocess
import sys
import time

LOOP = "while True: pass"
STARTED: list[int] = []  # pids of every busy process started in this process (tests check they are gone)
RAMP_S = 0.2  # let the busy processes start and take their cores before the timed calls


def describe(n: int) -> str:
    """The load, in words, for the benchmarks' headers."""
    if not n:
        return "no extra load"
    return f"{n} busy-looping process{'es' if n > 1 else ''} (python -c \"{LOOP}\") running alongside"


def _stop(procs) -> None:
    for p in procs:
        if p.poll() is None:
            p.kill()
    for p in procs:
        try:
            p.wait(timeout=10)
        except subprocess.TimeoutExpired:  # pragma: no cover - SIGKILL does not get ignored
            pass


@contextlib.contextmanager
def busy(n: int):
    """Run ``n`` busy-looping processes for the duration of the block (none when ``n`` is 0);
    yields their pids."""
    procs = []
    try:
        for _ in range(max(0, int(n))):
            procs.append(subprocess.Popen([sys.executable, "-c", LOOP], stdin=subprocess.DEVNULL,
                                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
            STARTED.append(procs[-1].pid)
        if procs:
            time.sleep(RAMP_S)
        yield [p.pid for p in procs]
    finally:
        _stop(procs)
