"""The dashboard's Bokeh charts, built from the plain data of its pages (BokehJS is served by the app)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import pandas as pd
from bokeh.embed import components
from bokeh.models import FactorRange
from bokeh.palettes import Category10_10
from bokeh.plotting import figure

from monitoring.reports.analytics import STRATEGIES, STRATEGY_LABELS


def figure_for(title: str, **kwargs: Any) -> Any:
    """Return a Bokeh figure of the dashboard's size and tools."""
    tools = "pan,wheel_zoom,box_zoom,reset,save,hover"
    return figure(title=title, height=280, sizing_mode="stretch_width", tools=tools, **kwargs)


def line_chart(title: str, lines: Mapping[str, dict[str, list[Any]]], x_label: str = "environment step") -> Any:
    """Draw one line per {name: {"step": [...], "value": [...]}} entry."""
    chart = figure_for(title, x_axis_label=x_label)
    for i, (name, curve) in enumerate(lines.items()):
        chart.line(curve["step"], curve["value"], legend_label=name[-30:], color=Category10_10[i % 10], line_width=2)
    chart.legend.location = "top_left"
    return chart


def bar_chart(title: str, rows: Sequence[Mapping[str, Any]], by: str) -> Any:
    """Draw the win rate of each win/loss row, labelled by its `by` column."""
    labels = [str(r[by]) for r in rows]
    chart = figure_for(title, x_range=labels, y_range=(0, 1), y_axis_label="win rate")
    chart.vbar(x=labels, top=[r["win_rate"] for r in rows], width=0.8, color=Category10_10[0])
    return chart


def returns_chart(rows: Sequence[Mapping[str, Any]]) -> Any:
    """Draw each run's test-split total return of the policy and the baselines, grouped by run."""
    factors = [(r["run_id"][-24:], STRATEGY_LABELS[s]) for r in rows for s in STRATEGIES if s in r["metrics"]]
    values = [100 * (r["metrics"][s]["total_return"] or 0.0) for r in rows for s in STRATEGIES if s in r["metrics"]]
    colors = [Category10_10[STRATEGIES.index(s)] for r in rows for s in STRATEGIES if s in r["metrics"]]
    chart = figure_for("Test-split total return after costs (%)", x_range=FactorRange(factors=factors))
    chart.vbar(x=factors, top=values, width=0.9, color=colors)
    chart.xaxis.major_label_orientation = 0.9
    return chart


def equity_chart(equity: pd.Series) -> Any:
    """Draw an equity curve against its (UTC) time index."""
    index = pd.DatetimeIndex(equity.index)
    times = index.tz_convert(None) if index.tz is not None else index
    chart = figure_for("Equity", x_axis_type="datetime", y_axis_label="equity")
    chart.line(times, equity.to_numpy(), color=Category10_10[0], line_width=2)
    return chart


def histogram_chart(histogram: Mapping[str, list[Any]]) -> Any:
    """Draw the P&L histogram of winning and losing trades on shared bin edges."""
    edges = histogram["edges"]
    chart = figure_for("P&L per trade", x_axis_label="P&L", y_axis_label="trades")
    for name, color in (("wins", Category10_10[2]), ("losses", Category10_10[3])):
        chart.quad(
            top=histogram[name], bottom=0, left=edges[:-1], right=edges[1:], color=color, alpha=0.7, legend_label=name
        )
    return chart


def embed_charts(figures: Mapping[str, Any]) -> tuple[str, dict[str, str]]:
    """Return the script and the {name: div} HTML that embed `figures` in a page."""
    if not figures:
        return "", {}
    script, divs = components(dict(figures))
    return str(script), {str(k): str(v) for k, v in divs.items()}
