"""Figures without pyplot: ``new_figure(...)`` is a matplotlib ``Figure`` (no GUI window, no global
pyplot state) that a notebook displays as a PNG when a cell ends with it; matplotlib is an optional
extra, and a clear ImportError says how to install it."""
from __future__ import annotations

import io

_FIGURE = None


def needs_matplotlib(what):
    """Import matplotlib, or raise an ImportError naming ``what`` needs it and how to install it."""
    try:
        import matplotlib
    except ImportError:
        raise ImportError(f"{what} needs matplotlib, which is not installed; install it with "
                          "pip install matplotlib (or pip install \"bitnet-bnn[plot]\")") from None
    return matplotlib


def new_figure(what, **kwargs):
    """A new ``Figure(**kwargs)`` that displays itself in a notebook (``_repr_png_``)."""
    global _FIGURE
    needs_matplotlib(what)
    if _FIGURE is None:
        from matplotlib.figure import Figure

        class NotebookFigure(Figure):
            """A Figure that a notebook shows as PNG at the end of a cell (no pyplot needed)."""

            def _repr_png_(self):
                buf = io.BytesIO()
                self.savefig(buf, format="png")
                return buf.getvalue()
        _FIGURE = NotebookFigure
    return _FIGURE(**kwargs)
