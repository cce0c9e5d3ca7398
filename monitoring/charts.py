"""Matplotlib figures for the reports' and the model analysis' PNG charts."""

from __future__ import annotations

from typing import Any


def new_figure(rows: int = 1, cols: int = 1, size: tuple[float, float] = (8.0, 4.0)) -> tuple[Any, Any]:
    """Return a figure and its `rows` x `cols` grid of axes (always 2-D)."""
    # matplotlib's object API without pyplot: no global backend state, safe in a worker thread.
    from matplotlib.figure import Figure

    figure = Figure(figsize=size, layout="constrained")
    return figure, figure.subplots(rows, cols, squeeze=False)
