"""Progress output for long loops: tqdm where it is installed, else a bar of our own.

``Progress(total, desc, style=...)`` with ``style``:

- ``"auto"`` (default): a tqdm bar (``tqdm.auto``: a widget in Jupyter when ipywidgets is
  installed, text otherwise) when tqdm is installed and the output is live (a terminal or a
  notebook), else ``"plain"``;
- ``"tqdm"``: tqdm, an error where it is not installed;
- ``"plain"``: bitnet's own output. On a live output the line is redrawn in place at most
  ``refresh`` times per second (padded to the previous line's length, so no characters of a longer
  line stay behind); in a log file or CI it prints a line every ``log_every`` seconds and a final
  line, so the output stays readable.

The environment variable ``BITNET_PROGRESS`` (``auto``, ``tqdm``, ``plain``) sets the default.
"""
from __future__ import annotations

import os
import sys
import time

STYLES = ("auto", "tqdm", "plain")


def in_notebook() -> bool:
    """True inside a Jupyter kernel (its output renders carriage returns as redraws)."""
    shell = sys.modules.get("IPython")
    if shell is None:
        return False
    try:
        ip = shell.get_ipython()
    except Exception:
        return False
    return ip is not None and type(ip).__name__ == "ZMQInteractiveShell"


def _tqdm_class(notebook: bool):
    try:
        if notebook:
            import ipywidgets  # noqa: F401  (tqdm.auto's widget needs it; without, it warns and falls back)
            from tqdm.auto import tqdm
        else:
            from tqdm import tqdm
        return tqdm
    except ImportError:
        if notebook:
            try:
                from tqdm import tqdm
                return tqdm
            except ImportError:
                return None
        return None


def _style(style):
    style = os.environ.get("BITNET_PROGRESS", "auto") if style is None else style
    if style not in STYLES:
        raise ValueError(f"progress style must be one of {', '.join(STYLES)}, got {style!r} "
                         "(from the argument or BITNET_PROGRESS)")
    return style


def _fmt(k, v):
    return f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}"


class Progress:
    def __init__(self, total: int, desc: str = "", stream=None, enabled: bool = True,
                 log_every: float = 10.0, refresh: float = 10.0, width: int = 24, style: str | None = None):
        self.total, self.desc, self.enabled = int(total), desc, enabled
        self.stream = sys.stderr if stream is None else stream
        notebook = in_notebook()
        self.live = notebook or bool(getattr(self.stream, "isatty", lambda: False)())
        self.interval = 1.0 / refresh if self.live else log_every
        self.width, self.count = width, 0
        self.start = self.last = time.perf_counter()
        self._shown = 0  # characters of the line on screen (plain style, live output)
        self._bar = None
        style = _style(style)
        if enabled and style != "plain":
            tqdm = _tqdm_class(notebook)
            if tqdm is None and style == "tqdm":
                raise ImportError("progress style 'tqdm' needs tqdm, which is not installed: pip install tqdm "
                                  "(or pip install \"bitnet-bnn[progress]\")")
            if tqdm is not None and (style == "tqdm" or self.live):
                self._bar = tqdm(total=self.total, desc=desc, file=None if stream is None else stream,
                                 leave=True, dynamic_ncols=True)

    def update(self, n: int = 1, **stats):
        """Advance by ``n`` steps and show ``stats`` (name=value pairs, already formatted or floats)."""
        self.count += n
        if self._bar is not None:
            if stats:
                self._bar.set_postfix_str(" ".join(_fmt(k, v) for k, v in stats.items()), refresh=False)
            self._bar.update(n)
            if self.count >= self.total:
                self.close()
            return
        now = time.perf_counter()
        if self.enabled and (now - self.last >= self.interval or self.count >= self.total):
            self.last = now
            self._show(stats, final=self.count >= self.total)

    def close(self):
        """End the bar (a loop that stops early calls this; a full one ends it itself)."""
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        elif self._shown:
            self.stream.write("\n")
            self.stream.flush()
            self._shown = 0

    def _show(self, stats, final):
        parts = " ".join(_fmt(k, v) for k, v in stats.items())
        elapsed = time.perf_counter() - self.start
        frac = self.count / max(1, self.total)
        if self.live:
            filled = int(self.width * frac)
            bar = "#" * filled + "." * (self.width - filled)
            eta = elapsed / frac - elapsed if frac > 0 else 0.0
            line = f"{self.desc} [{bar}] {self.count}/{self.total} {elapsed:.0f}s<{eta:.0f}s {parts}".rstrip()
            pad = max(0, self._shown - len(line))  # blank out what is left of a longer previous line
            self.stream.write("\r" + line + " " * pad + ("\n" if final else ""))
            self._shown = 0 if final else len(line)
        else:
            self.stream.write(f"{self.desc} {self.count}/{self.total} ({100 * frac:.0f}%) {elapsed:.1f}s "
                              + parts + "\n")
        self.stream.flush()
