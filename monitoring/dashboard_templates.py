"""The dashboard's Jinja templates (Flask serves them through a `DictLoader`): layout, tables and pages."""

from __future__ import annotations

TEMPLATES: dict[str, str] = {
    "base.html": """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{{ title }} · ai-trading</title>
<script src="{{ url_for('bokehjs', name='bokeh.min.js') }}"></script>
<style>
body{font-family:system-ui,sans-serif;margin:1.5em;color:#222}table{border-collapse:collapse;margin:.6em 0}
td,th{border:1px solid #ccc;padding:.25em .6em;text-align:right}th{background:#f3f3f3}td:first-child{text-align:left}
.banner{padding:.6em 1em;border-radius:4px;margin-bottom:1em}.offline,.connecting{background:#fff3cd}
.online{background:#d1e7dd}.problem{background:#f8d7da;padding:.6em 1em}
.grid{display:grid;grid-template-columns:1fr 1fr;gap:1em}
</style>{{ script|safe }}</head><body>
<p><a href="{{ url_for('overview') }}">ai-trading dashboard</a> · project {{ project }}</p>
<div class="banner {{ status.wandb }}" id="wandb-status">{{ status.message }}
 Source: {{ status.source }} ({{ status.location }}).</div>
{% if problems %}<div class="problem" id="problems"><b>Unreadable run files</b><ul>
{% for p in problems %}<li><code>{{ p.path }}</code>: {{ p.message }}</li>{% endfor %}</ul></div>{% endif %}
<h1>{{ title }}</h1>{% block body %}{% endblock %}</body></html>""",
    "table.html": """<table{% if id %} id="{{ id }}"{% endif %}>
<tr>{% for c in columns %}<th>{{ c }}</th>{% endfor %}</tr>
{% for row in rows %}<tr>{% for cell in row %}<td>{{ cell }}</td>{% endfor %}</tr>{% endfor %}</table>""",
    "overview.html": """{% extends "base.html" %}{% block body %}
{% if not rows and not without_results %}<div id="empty-state">
<p><b>No runs found</b> in <code>{{ location }}</code>.</p>
<p>Train one with <code>ai-trading train</code> (or <code>ai-trading quickstart</code>), or point
<code>--runs-dir</code> at the <code>outputs/</code> directory your runs were written to.</p></div>{% else %}
<h2>Model comparison (out-of-sample, after costs)</h2>
<form method="get">{% for r in all_runs %}<label><input type="checkbox" name="run" value="{{ r }}"
{% if r in chosen %}checked{% endif %}> {{ r }}</label> {% endfor %}<button>compare</button></form>
{% with id="comparison", columns=columns, rows=rows %}{% include "table.html" %}{% endwith %}
{% for name in divs %}{{ divs[name]|safe }}{% endfor %}
{% if without_results %}<p>Runs without test results: {% for r in without_results %}
<a href="{{ url_for('run_page', run_id=r) }}">{{ r }}</a> {% endfor %}</p>{% endif %}{% endif %}{% endblock %}""",
    "run.html": """{% extends "base.html" %}{% block body %}
{% for e in errors %}<div class="problem">{{ e }}</div>{% endfor %}
<h2>Test metrics{% if split %} (split {{ split }}){% endif %}</h2>
{% if metric_rows %}
{% with id="metrics", columns=metric_columns, rows=metric_rows %}{% include "table.html" %}{% endwith %}
{% else %}<p>No test results in this run's summary.</p>{% endif %}
<h2>Training metrics</h2>{% if training_divs %}
<div class="grid">{% for d in training_divs %}{{ d|safe }}{% endfor %}</div>
{% else %}<p>The run logged no training metrics.</p>{% endif %}
<h2>Trade performance</h2>{% if stats_rows %}
{% with id="trade-stats", columns=["statistic", "value"], rows=stats_rows %}{% include "table.html" %}{% endwith %}
<p>{{ equity_note }}</p><div class="grid">{{ divs.get("equity", "")|safe }}{{ divs.get("pnl", "")|safe }}</div>
<h2>Win/loss by time and duration</h2><p>Hours and weekdays are UTC, by entry time.</p>
{% for by, table in by_tables %}<h3>By {{ by }}</h3>
{% with id="by-" ~ by, columns=table.columns, rows=table.rows %}{% include "table.html" %}{% endwith %}
{{ divs.get("by-" ~ by, "")|safe }}{% endfor %}{% else %}<p>No trades in this split.</p>{% endif %}{% endblock %}""",
    "error.html": """{% extends "base.html" %}{% block body %}
<p class="problem" id="error">{{ message }}</p>{% endblock %}""",
}
