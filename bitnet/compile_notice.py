"""One line on stderr when Numba is about to compile bitnet's kernels, so a first run does not
look hung.

The first run on a machine compiles every kernel it uses (25-55 s for ``bitnet train`` of the
binary LeNet on a 2-core machine); later runs load them from Numba's on-disk cache
(``__pycache__`` beside the sources, or ``$NUMBA_CACHE_DIR``) in well under a second. Whether
compiling will happen is known exactly at the moment it starts: Numba looks up a kernel in its
cache first and signals a ``"numba:compile"`` event (``numba.core.event``) only on a miss.
:func:`announce_compilation` listens for that event and prints the notice once, for the first
kernel that has caching enabled (kernels without ``cache=True`` compile in every process and would
make "first run only" untrue; bitnet's own kernels are all cached). A run whose kernels are all in
the cache prints nothing.
"""
from __future__ import annotations

import sys

from numba.core import event

NOTICE = "compiling kernels (first run only, up to a minute) ..."


def _is_cached(dispatcher) -> bool:
    """True when ``dispatcher`` keeps its compiled code in Numba's on-disk cache (``cache=True``)."""
    cache = getattr(dispatcher, "_cache", None)
    return cache is not None and type(cache).__name__ != "NullCache"


class _CompileNotice(event.Listener):
    """Prints ``message`` to ``stream`` when the first cached kernel starts compiling, then never again."""

    def __init__(self, message: str, stream) -> None:
        self.message, self.stream, self.shown = message, stream, False

    def on_start(self, ev) -> None:
        if self.shown or not _is_cached((ev.data or {}).get("dispatcher")):
            return
        self.shown = True
        stream = self.stream if self.stream is not None else sys.stderr  # looked up now: it may be redirected
        stream.write(self.message + "\n")
        stream.flush()

    def on_end(self, ev) -> None:
        pass


_installed: _CompileNotice | None = None


def announce_compilation(message: str = NOTICE, stream=None) -> None:
    """From now on, print ``message`` (to ``stream``, default stderr) once, when Numba starts
    compiling a cached kernel because its on-disk cache has no entry for it. Calling it again
    changes the message and stream; the notice is still printed at most once per process."""
    global _installed
    if _installed is None:
        _installed = _CompileNotice(message, stream)
        event.register("numba:compile", _installed)
    else:
        _installed.message, _installed.stream = message, stream
