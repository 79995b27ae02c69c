"""Progress output for long loops: a redrawn bar on a terminal, periodic lines elsewhere.

On a terminal (``stream.isatty()``) the line is redrawn in place at most ``refresh`` times per
second; in a log file or CI it prints a line every ``log_every`` seconds and a final line, so the
output stays readable.
"""
from __future__ import annotations

import sys
import time


class Progress:
    def __init__(self, total: int, desc: str = "", stream=None, enabled: bool = True,
                 log_every: float = 10.0, refresh: float = 10.0, width: int = 24):
        self.total, self.desc, self.enabled = int(total), desc, enabled
        self.stream = sys.stderr if stream is None else stream
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.interval = 1.0 / refresh if self.tty else log_every
        self.width, self.count = width, 0
        self.start = self.last = time.perf_counter()

    def update(self, n: int = 1, **stats):
        """Advance by ``n`` steps and show ``stats`` (name=value pairs, already formatted or floats)."""
        self.count += n
        now = time.perf_counter()
        if self.enabled and (now - self.last >= self.interval or self.count >= self.total):
            self.last = now
            self._show(stats, final=self.count >= self.total)

    def _show(self, stats, final):
        parts = [f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}" for k, v in stats.items()]
        elapsed = time.perf_counter() - self.start
        frac = self.count / max(1, self.total)
        if self.tty:
            filled = int(self.width * frac)
            bar = "#" * filled + "." * (self.width - filled)
            eta = elapsed / frac - elapsed if frac > 0 else 0.0
            line = f"\r{self.desc} [{bar}] {self.count}/{self.total} {elapsed:.0f}s<{eta:.0f}s " + " ".join(parts)
            self.stream.write(line + ("\n" if final else ""))
        else:
            self.stream.write(f"{self.desc} {self.count}/{self.total} ({100 * frac:.0f}%) {elapsed:.1f}s "
                              + " ".join(parts) + "\n")
        self.stream.flush()
