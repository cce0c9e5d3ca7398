"""Render a `Report` as Markdown, self-contained HTML or JSON."""

from __future__ import annotations

import base64
import html
import json
from collections.abc import Callable
from typing import Literal

from monitoring.reports.model import Report
from monitoring.run_store import json_safe

Format = Literal["md", "html", "json"]
FORMATS: tuple[str, ...] = ("md", "html", "json")


def _md_cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def render_markdown(report: Report) -> str:
    """Render a report as Markdown (charts linked by file name)."""
    lines = [f"# {report.title}", ""]
    lines += [f"- **{key}**: {value}" for key, value in report.meta.items()]
    for section in report.sections:
        lines += ["", f"## {section.heading}", ""]
        for paragraph in section.paragraphs:
            lines += [paragraph, ""]
        for table in section.tables:
            lines += [f"**{table.title}**", ""]
            lines.append("| " + " | ".join(_md_cell(c) for c in table.columns) + " |")
            lines.append("|" + "|".join("---" for _ in table.columns) + "|")
            lines += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in table.rows]
            lines.append("")
        for chart in section.charts:
            lines += [f"### {chart.title}", "", f"![{chart.title}]({chart.path.name})", ""]
            if chart.caption:
                lines += [f"*{chart.caption}*", ""]
    return "\n".join(lines).rstrip() + "\n"


_CSS = (
    "body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}"
    "table{border-collapse:collapse;margin:0.5em 0 1.5em;font-size:0.9em}"
    "th,td{border:1px solid #ccc;padding:0.25em 0.6em;text-align:right}th{background:#f3f3f3}"
    "td:first-child,th:first-child{text-align:left}img{max-width:100%}figcaption{color:#555;font-style:italic}"
)


def render_html(report: Report) -> str:
    """Render a report as one self-contained HTML page (charts embedded as base64 PNG)."""
    esc = html.escape
    parts = [
        f"<!doctype html><html><head><meta charset='utf-8'><title>{esc(report.title)}</title>",
        f"<style>{_CSS}</style></head><body><h1>{esc(report.title)}</h1><ul>",
    ]
    parts += [f"<li><b>{esc(str(k))}</b>: {esc(str(v))}</li>" for k, v in report.meta.items()]
    parts.append("</ul>")
    for section in report.sections:
        parts.append(f"<h2>{esc(section.heading)}</h2>")
        parts += [f"<p>{esc(p)}</p>" for p in section.paragraphs]
        for table in section.tables:
            parts.append(f"<table><caption>{esc(table.title)}</caption><tr>")
            parts += [f"<th>{esc(c)}</th>" for c in table.columns]
            parts.append("</tr>")
            for row in table.rows:
                parts.append("<tr>" + "".join(f"<td>{esc(c)}</td>" for c in row) + "</tr>")
            parts.append("</table>")
        for chart in section.charts:
            encoded = base64.b64encode(chart.path.read_bytes()).decode("ascii")
            parts.append(
                f"<figure><h3>{esc(chart.title)}</h3><img alt='{esc(chart.title)}' "
                f"src='data:image/png;base64,{encoded}'><figcaption>{esc(chart.caption)}</figcaption></figure>"
            )
    parts.append("</body></html>")
    return "\n".join(parts)


def render_json(report: Report) -> str:
    """Render a report as JSON: meta, the figures behind every table, and the chart files."""
    payload = {
        "title": report.title,
        "report_type": report.report_type,
        "meta": report.meta,
        **report.data,
        "charts": [
            {"title": c.title, "file": c.path.name, "caption": c.caption} for s in report.sections for c in s.charts
        ],
    }
    return json.dumps(json_safe(payload), indent=2, sort_keys=False) + "\n"


RENDERERS: dict[str, Callable[[Report], str]] = {"md": render_markdown, "html": render_html, "json": render_json}
