"""The dashboard's Jinja templates (Flask serves them through a `DictLoader`): layout, tables and pages."""

from __future__ import annotations

TEMPLATES: dict[str, str] = {
    "base.html": """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{{ title }} · ai-trading</title>
<link rel="icon" href="data:,">
<script src="{{ url_for('bokehjs', name='bokeh.min.js') }}"></script>
<style>
body{font-family:system-ui,sans-serif;margin:1.5em;color:#222}table{border-collapse:collapse;margin:.6em 0}
td,th{border:1px solid #ccc;padding:.25em .6em;text-align:right}th{background:#f3f3f3}td:first-child{text-align:left}
.banner{padding:.6em 1em;border-radius:4px;margin-bottom:1em}.offline,.connecting{background:#fff3cd}
.online{background:#d1e7dd}.problem{background:#f8d7da;padding:.6em 1em}
.grid{display:grid;grid-template-columns:1fr 1fr;gap:1em}
</style>{{ script|safe }}</head><body>
<p><a href="{{ url_for('overview') }}">ai-trading dashboard</a> · <a href="{{ url_for('live_page') }}">live daemon</a>
 · project {{ project }}</p>
<div class="banner {{ status.wandb }}" id="wandb-status">{{ status.message }}
 Source: {{ status.source }} ({{ status.location }}).</div>
{% if problems %}<div class="problem" id="problems"><b>Unreadable run files</b><ul>
{% for p in problems %}<li><code>{{ p.path }}</code>: {{ p.message }}</li>{% endfor %}</ul></div>{% endif %}
<h1>{{ title }}</h1>{% block body %}{% endblock %}</body></html>""",
    "table.html": """<table{% if id %} id="{{ id }}"{% endif %}>
<tr>{% for c in columns %}<th>{{ c }}</th>{% endfor %}</tr>
{% for row in rows %}<tr>{% for cell in row %}<td>{% if cell is mapping %}{% if cell.href %}<a href="{{ cell.href }}">\
{{ cell.text }}</a>{% else %}{{ cell.text }}{% endif %}{% else %}{{ cell }}{% endif %}</td>{% endfor %}</tr>{% endfor %}
</table>""",
    "overview.html": """{% extends "base.html" %}{% block body %}
{% if not rows and not without_results %}<div id="empty-state">
<p><b>No runs found</b> in <code>{{ location }}</code>.</p>
<p>Train one with <code>ai-trading train</code> (or <code>ai-trading quickstart</code>), or point
<code>--runs-dir</code> at the <code>outputs/</code> directory your runs were written to.</p></div>{% else %}
<h2>Model comparison (out-of-sample, after costs)</h2>
<form method="get" id="choose-runs">{% for r in all_runs %}<label><input type="checkbox" name="run" value="{{ r }}"
{% if r in chosen %}checked{% endif %}></label> <a href="{{ url_for('run_page', run_id=r) }}">{{ r }}</a>
 {% endfor %}<button id="compare">compare</button></form>
{% with id="comparison", columns=columns, rows=rows %}{% include "table.html" %}{% endwith %}
{% for name in divs %}{{ divs[name]|safe }}{% endfor %}
{% if without_results %}<p>Runs without test results: {% for r in without_results %}
<a href="{{ url_for('run_page', run_id=r) }}">{{ r }}</a> {% endfor %}</p>{% endif %}{% endif %}
{% if sweeps %}<h2>Sweeps</h2>{% with id="sweeps", columns=sweep_columns, rows=sweeps %}{% include "table.html" %}\
{% endwith %}{% endif %}{% endblock %}""",
    "run.html": """{% extends "base.html" %}{% block body %}
{% for e in errors %}<div class="problem">{{ e }}</div>{% endfor %}
<h2>Test metrics{% if split %} (split {{ split }}){% endif %}</h2>
{% if metric_rows %}
{% with id="metrics", columns=metric_columns, rows=metric_rows %}{% include "table.html" %}{% endwith %}
{% else %}<p>No test results in this run's summary.</p>{% endif %}
<h2>Training metrics</h2>{% if training_divs %}
<div class="grid">{% for d in training_divs %}{{ d|safe }}{% endfor %}</div>
{% else %}<p>The run logged no training metrics.</p>{% endif %}
<h2>Trade performance</h2>
<form method="get" id="period">Trades entered from
<input type="date" name="from" id="period-from" value="{{ period.first_day }}"
{% if first_entry %}min="{{ first_entry }}" max="{{ last_entry }}"{% endif %}> to
<input type="date" name="to" id="period-to" value="{{ period.last_day }}"
{% if first_entry %}min="{{ first_entry }}" max="{{ last_entry }}"{% endif %}> (UTC, both days included)
<button id="apply-period">apply</button> <a href="{{ request.path }}">all trades</a>
{% if first_entry %}<span id="trade-range">· the split's trades entered {{ first_entry }} .. {{ last_entry }}</span>
{% endif %}
</form>
{% if period_error %}<div class="problem" id="period-error">{{ period_error }}</div>{% endif %}
{% if model_href %}<p><a href="{{ model_href }}" id="model-link">the run's model card</a></p>{% endif %}
{% if stats_rows %}
{% with id="trade-stats", columns=["statistic", "value"], rows=stats_rows %}{% include "table.html" %}{% endwith %}
<p>{{ equity_note }}</p><div class="grid">{{ divs.get("equity", "")|safe }}{{ divs.get("pnl", "")|safe }}</div>
<h2>Win/loss by time and duration</h2><p>Hours and weekdays are UTC, by entry time.</p>
{% for by, table in by_tables %}<h3>By {{ by }}</h3>
{% with id="by-" ~ by, columns=table.columns, rows=table.rows %}{% include "table.html" %}{% endwith %}
{{ divs.get("by-" ~ by, "")|safe }}{% endfor %}{% else %}<p id="no-trades">No trades in this split
{%- if period.first_day or period.last_day %} and period{% endif %}.</p>{% endif %}{% endblock %}""",
    "error.html": """{% extends "base.html" %}{% block body %}
<p class="problem" id="error">{{ message }}</p>{% endblock %}""",
    "model.html": """{% extends "base.html" %}{% block body %}
{% for e in model.problems %}<div class="problem">{{ e }}</div>{% endfor %}
<p>Run: <a href="{{ url_for('run_page', run_id=model.run_id) }}">{{ model.run_id }}</a></p>
{% if model.name %}{% with id="model-card", columns=["field", "value"], rows=card_rows %}{% include "table.html" %}\
{% endwith %}<h2>Features ({{ model.features|length }}, window {{ model.window }})</h2>
<p id="features">{{ model.features|join(", ") }}</p>{% endif %}{% endblock %}""",
    "sweep.html": """{% extends "base.html" %}{% block body %}
{% if sweep.problem %}<div class="problem">{{ sweep.problem }}</div>{% endif %}
<p>{{ sweep.method }} sweep ({{ sweep.backend }}) of {{ sweep.n_trials }} trials, {{ sweep.goal }} {{ sweep.metric }};
 states: {% for k, v in sweep.states.items() %}{{ k }} {{ v }} {% endfor %}</p>
{% if sweep.best %}<p id="best">Best: trial {{ sweep.best.number }}, {{ sweep.metric }} {{ sweep.best.value }}{% if
 sweep.best.run_id %}, run <a href="{{ url_for('run_page', run_id=sweep.best.run_id) }}">{{ sweep.best.run_id }}</a>
{% endif %}. Retrain: <code>{{ sweep.best.retrain_command }}</code></p>{% endif %}
{% with id="trials", columns=trial_columns, rows=trial_rows %}{% include "table.html" %}{% endwith %}{% endblock %}""",
    "live.html": """{% extends "base.html" %}{% block body %}
<p>Ledger <code id="live-ledger">{{ snapshot.ledger }}</code> · refreshes every {{ interval_ms }} ms ·
 last update <span id="live-updated">{{ snapshot.updated or "none yet" }}</span> ·
 refreshes <span id="live-refreshes">0</span></p>
<div class="problem" id="live-error"{% if not snapshot.error %} hidden{% endif %}>{{ snapshot.error or "" }}</div>
<table id="live-summary"><tr><th>equity</th><th>cash</th><th>positions value</th><th>realized P&amp;L</th>
<th>unrealized P&amp;L</th><th>drawdown</th><th>risk state</th><th>closed trades</th></tr><tr>
{% set e = snapshot.equity or {} %}<td id="live-equity">{{ e.equity or "n/a" }}</td>
<td id="live-cash">{{ e.cash or "n/a" }}</td>
<td id="live-positions-value">{{ e.positions_value or "n/a" }}</td>
<td id="live-realized">{{ e.realized_pnl or "n/a" }}</td>
<td id="live-unrealized">{{ e.unrealized_pnl or "n/a" }}</td>
<td id="live-drawdown">{{ e.drawdown if e else "n/a" }}</td>
<td id="live-risk">{{ (snapshot.risk or {}).state or "n/a" }}</td>
<td id="live-trade-count">{{ snapshot.trade_count or 0 }}</td>
</tr></table>
<p id="live-risk-reason">{{ (snapshot.risk or {}).reason or "" }}</p>
{{ divs["live-equity"]|safe }}
<h2>Positions</h2><table id="live-positions"></table>
<h2>Open orders</h2><table id="live-orders"></table>
<h2>Recent closed trades</h2><table id="live-trades"></table>
<script>
(function () {
  const columns = {
    "live-positions": ["symbol", "amount", "average_entry_price", "realized_pnl", "opened_at"],
    "live-orders": ["client_order_id", "symbol", "side", "type", "amount", "filled", "price", "status"],
    "live-trades": ["symbol", "side", "qty", "entry_price", "exit_price", "realized_pnl", "closed_at"],
  };
  const keys = {"live-positions": "positions", "live-orders": "open_orders", "live-trades": "recent_trades"};
  let refreshes = 0;
  function cell(tag, text) { const c = document.createElement(tag); c.textContent = text ?? ""; return c; }
  function fill(id, rows) {
    const table = document.getElementById(id);
    table.replaceChildren();
    const head = document.createElement("tr");
    for (const c of columns[id]) head.appendChild(cell("th", c.replaceAll("_", " ")));
    table.appendChild(head);
    for (const row of rows) {
      const tr = document.createElement("tr");
      for (const c of columns[id]) tr.appendChild(cell("td", row[c]));
      table.appendChild(tr);
    }
  }
  function show(data) {
    const error = document.getElementById("live-error");
    error.hidden = !data.error; error.textContent = data.error || "";
    const e = data.equity || {};
    const set = (id, v) => { document.getElementById(id).textContent = (v === null || v === undefined) ? "n/a" : v; };
    set("live-equity", e.equity); set("live-cash", e.cash); set("live-positions-value", e.positions_value);
    set("live-realized", e.realized_pnl); set("live-unrealized", e.unrealized_pnl); set("live-drawdown", e.drawdown);
    set("live-risk", (data.risk || {}).state); set("live-trade-count", data.trade_count ?? 0);
    set("live-updated", data.updated || "none yet");
    document.getElementById("live-risk-reason").textContent = (data.risk || {}).reason || "";
    for (const id in keys) fill(id, data[keys[id]] || []);
    const doc = window.Bokeh && Bokeh.documents[0];
    const source = doc && doc.get_model_by_name("live-equity");
    if (source && data.equity_curve) source.data = {time: data.equity_curve.time, equity: data.equity_curve.equity};
  }
  async function refresh() {
    try {
      const response = await fetch("{{ url_for('api_live') }}", {cache: "no-store"});
      if (response.ok) { show(await response.json()); refreshes += 1; set_count(); }
    } catch (err) {
      document.getElementById("live-error").hidden = false;
      document.getElementById("live-error").textContent = "dashboard unreachable: " + err;
    }
    setTimeout(refresh, {{ interval_ms }});
  }
  function set_count() { document.getElementById("live-refreshes").textContent = refreshes; }
  show({{ snapshot|tojson }});
  setTimeout(refresh, {{ interval_ms }});
})();
</script>{% endblock %}""",
}
