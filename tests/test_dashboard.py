"""monitoring.dashboard.app served on a free loopback port, read over HTTP, checked against the run files.

The runs are two real tiny PPO trainings on the bundled candles (2048 steps each, a few seconds), written by
`training.train` through `monitoring.run_store`, exactly as the dashboard finds them in `outputs/`.
Every figure a test checks is recomputed here from the parquet/JSON files, not taken from the dashboard's helpers.
"""

from __future__ import annotations

import html
import json
import os
import queue
import re
import shutil
import socket
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from structlog.testing import capture_logs

from monitoring.dashboard.app import serve
from monitoring.dashboard.sources import Sources

ROOT = Path(__file__).resolve().parents[1]
OFFLINE = {"WANDB_MODE": "offline"}


@pytest.fixture
def runs_dir(trained_runs: Path) -> Path:
    """Two real runs; run-b is the newer one (trained once a session, tests/conftest.py)."""
    return trained_runs


@contextmanager
def _running(sources: Sources) -> Iterator[str]:
    """Serve the dashboard in a thread; the socket listens before this yields, so no waiting is needed."""
    server = serve(sources, "127.0.0.1", 0)
    thread = threading.Thread(target=server.serve_forever, name="dashboard-test", daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        thread.join(timeout=10)
        server.server_close()


@contextmanager
def _dashboard(runs: Path, env: dict[str, str] | None = None) -> Iterator[str]:
    sources = Sources(runs_dir=runs, env=OFFLINE if env is None else env)
    sources.start()
    with _running(sources) as url:
        yield url


def _get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=30) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def _json(url: str) -> Any:
    status, body = _get(url)
    assert status == 200, body
    return json.loads(body)


def _table(page: str, table_id: str) -> list[list[str]]:
    """Rows (cells unescaped) of the table with this id; the header row is left out."""
    match = re.search(rf'<table id="{table_id}">(.*?)</table>', page, re.S)
    assert match, f"no table {table_id!r}"
    rows = re.findall(r"<tr>(.*?)</tr>", match.group(1), re.S)
    cells = [re.findall(r"<td>(.*?)</td>", row, re.S) for row in rows[1:]]
    return [[html.unescape(re.sub(r"<[^>]+>", "", c)).strip() for c in row] for row in cells]


def _summary(runs: Path, run_id: str) -> dict[str, Any]:
    return json.loads((runs / run_id / "summary.json").read_text())


def test_model_comparison_shows_each_runs_test_metrics_and_baselines(runs_dir: Path) -> None:
    with _dashboard(runs_dir) as url:
        data = _json(f"{url}/api/runs")
        status, page = _get(f"{url}/")
    assert status == 200
    assert [r["run_id"] for r in data["runs"]] == ["run-b", "run-a"]  # newest first
    assert data["problems"] == [] and data["status"]["wandb"] == "offline"
    rows = {row[0]: row for row in _table(page, "comparison")}
    for run in data["runs"]:
        test = _summary(runs_dir, run["run_id"])["test"]
        for strategy in ("policy", "buy_and_hold", "sma_crossover"):
            for key in ("total_return", "sharpe", "max_drawdown", "win_rate", "trade_count"):
                assert run["metrics"][strategy][key] == pytest.approx(test[strategy][key])
        assert run["excess_return_vs_buy_and_hold"] == pytest.approx(
            test["policy"]["total_return"] - test["buy_and_hold"]["total_return"]
        )
        row = rows[run["run_id"]]
        assert row[2] == "mlp" and row[3] == "test"
        assert row[4] == f"{test['policy']['total_return']:.2%}"
        assert row[5] == f"{test['policy']['sharpe']:.3f}"
        assert row[10] == str(test["policy"]["trade_count"])
        assert row[12] == f"{test['buy_and_hold']['total_return']:.2%}"
        assert row[13] == f"{test['sma_crossover']['total_return']:.2%}"
    banner = html.unescape(re.search(r'id="wandb-status">(.*?)</div>', page, re.S).group(1))
    assert "W&B offline" in banner and "WANDB_MODE=offline" in banner and str(runs_dir.resolve()) in banner
    assert "reward (episodic return) per run" in page and "/bokehjs/bokeh.min.js" in page


def test_comparison_can_pick_runs(runs_dir: Path) -> None:
    with _dashboard(runs_dir) as url:
        data = _json(f"{url}/api/runs?run=run-a")
        _, page = _get(f"{url}/?run=run-a")
    assert [r["run_id"] for r in data["runs"]] == ["run-a"]
    assert [row[0] for row in _table(page, "comparison")] == ["run-a"]


def test_training_curves_equal_the_metrics_history(runs_dir: Path) -> None:
    history = pd.read_parquet(runs_dir / "run-a" / "metrics.parquet")
    with _dashboard(runs_dir) as url:
        data = _json(f"{url}/api/runs/run-a")
        status, page = _get(f"{url}/runs/run-a")
        js_status, js = _get(f"{url}/bokehjs/bokeh.min.js")
    assert status == 200 and js_status == 200 and len(js) > 100_000
    for key in ("charts/episodic_return", "losses/policy_loss", "losses/value_loss", "validation/sharpe"):
        expected = history[["step", key]].dropna().groupby("step")[key].mean()
        assert data["training"][key]["step"] == expected.index.tolist()
        assert data["training"][key]["value"] == pytest.approx(expected.tolist())
    for title in ("reward (episodic return)", "policy loss", "value loss", "validation sharpe", "gradient norm"):
        assert f'"text":"{title}"' in page  # each panel is a Bokeh figure with that title
    metrics = {row[0]: row for row in _table(page, "metrics")}
    test = _summary(runs_dir, "run-a")["test"]
    assert metrics["total return"][1:] == [
        f"{test[s]['total_return']:.2%}" for s in ("policy", "buy_and_hold", "sma_crossover")
    ]


def test_trade_analytics_equal_the_trades_file(runs_dir: Path) -> None:
    trades = pd.read_parquet(runs_dir / "run-a" / "trades-test.parquet")
    equity = pd.read_parquet(runs_dir / "run-a" / "equity-test.parquet")
    policy = _summary(runs_dir, "run-a")["test"]["policy"]
    assert len(trades) > 5
    with _dashboard(runs_dir) as url:
        data = _json(f"{url}/api/runs/run-a")["trades"]
        _, page = _get(f"{url}/runs/run-a")

    stats = data["stats"]
    assert stats["trades"] == len(trades) == policy["trade_count"]
    assert stats["win_rate"] == pytest.approx(policy["win_rate"])
    assert stats["wins"] == sum(1 for p in trades["pnl"] if p > 0)
    assert stats["total_pnl"] == pytest.approx(trades["pnl"].sum())
    assert data["equity"]["points"] == len(equity)
    assert data["equity"]["last"] == pytest.approx(equity["equity"].iloc[-1])
    assert data["equity"]["last"] == pytest.approx(policy["final_equity"])
    histogram = data["pnl_histogram"]
    assert sum(histogram["wins"]) == stats["wins"] and sum(histogram["losses"]) == len(trades) - stats["wins"]

    # Independent win/loss tallies by entry hour, weekday (UTC) and duration.
    def tally(key_of: Any) -> dict[str, list[int]]:
        counts: dict[str, list[int]] = {}
        for trade in trades.itertuples():
            entry = trade.entry_time.tz_convert("UTC")
            cell = counts.setdefault(key_of(trade, entry), [0, 0])
            cell[0] += 1
            cell[1] += trade.pnl > 0
        return counts

    def bucket(trade: Any, entry: pd.Timestamp) -> str:
        hours = (trade.exit_time - trade.entry_time).total_seconds() / 3600
        edges = [(1, "<=1h"), (4, "1-4h"), (12, "4-12h"), (24, "12-24h"), (72, "1-3d"), (168, "3-7d")]
        return next((label for edge, label in edges if hours <= edge), ">7d")

    expected = {
        "hour": tally(lambda t, entry: f"{entry.hour:02d}:00"),
        "weekday": tally(lambda t, entry: entry.strftime("%A")),
        "duration": tally(bucket),
    }
    for by, counts in expected.items():
        shown = {row[by]: row for row in data[f"by_{by}"]}
        assert set(shown) == set(counts), by
        for label, (total, wins) in counts.items():
            assert (shown[label]["trades"], shown[label]["wins"]) == (total, wins), (by, label)
            assert shown[label]["win_rate"] == pytest.approx(wins / total)
        table = {row[0]: row for row in _table(page, f"by-{by}")}
        assert {label: (row[1], row[4]) for label, row in table.items()} == {
            label: (str(total), f"{wins / total:.2%}") for label, (total, wins) in counts.items()
        }
    assert sum(row["trades"] for row in data["by_hour"]) == len(trades)


def test_empty_runs_dir_shows_how_to_get_runs(tmp_path: Path) -> None:
    for runs in (tmp_path / "outputs", tmp_path / "missing"):
        (tmp_path / "outputs").mkdir(exist_ok=True)
        with _dashboard(runs) as url:
            status, page = _get(f"{url}/")
            data = _json(f"{url}/api/runs")
        assert status == 200
        assert 'id="empty-state"' in page and "No runs found" in page
        assert str(runs.resolve()) in page and "ai-trading train" in page and "--runs-dir" in page
        assert data["runs"] == [] and data["without_results"] == []


def test_corrupt_files_are_named_and_the_pages_still_work(runs_dir: Path, tmp_path: Path) -> None:
    runs = tmp_path / "outputs"
    shutil.copytree(runs_dir / "run-a", runs / "good")
    shutil.copytree(runs_dir / "run-b", runs / "broken")
    shutil.copytree(runs_dir / "run-a", runs / "no-history")
    (runs / "no-history" / "metrics.parquet").write_bytes(b"not parquet either")
    summary = runs / "broken" / "summary.json"
    summary.write_text('{"test": {"policy": ')
    (runs / "good" / "trades-test.parquet").write_bytes(b"not parquet")
    with _dashboard(runs) as url:
        status, page = _get(f"{url}/")
        data = _json(f"{url}/api/runs")
        broken_status, broken_page = _get(f"{url}/runs/broken")
        good_status, good_page = _get(f"{url}/runs/good")
        history_status, history_page = _get(f"{url}/runs/no-history")
    assert status == 200 and broken_status == 200 and good_status == 200 and history_status == 200
    assert [p["path"] for p in data["problems"]] == [str(summary)]
    assert "not valid JSON" in data["problems"][0]["message"]
    problems = html.unescape(re.search(r'id="problems">(.*?)</div>', page, re.S).group(1))
    assert str(summary) in problems and "summary.json of run broken is not valid JSON" in problems
    assert str(summary) in html.unescape(broken_page)
    # The readable run is still compared; the broken one is listed as having no results.
    assert sorted(row[0] for row in _table(page, "comparison")) == ["good", "no-history"]
    assert data["without_results"] == ["broken"]
    # A corrupt trades file becomes a note on the run page, the rest of the page is served.
    assert "cannot read the trades or equity of split &#39;test&#39; of run good" in good_page
    assert 'id="metrics"' in good_page and '"text":"policy loss"' in good_page
    # So does a corrupt metrics history, on the run page and on the front page's training curves.
    assert "cannot read the training metrics of run no-history" in history_page
    assert 'id="by-hour"' in history_page


def test_unknown_run_is_a_404_listing_the_known_runs(runs_dir: Path) -> None:
    with _dashboard(runs_dir) as url:
        status, page = _get(f"{url}/runs/abc123")
        api_status, body = _get(f"{url}/api/runs/abc123")
    assert status == 404 and api_status == 404
    assert "abc123" in page and "run-a" in page and "run-b" in page
    assert "run-a" in json.loads(body)["error"]


def test_unreachable_wandb_server_falls_back_to_local_runs_at_once(runs_dir: Path, tmp_path: Path) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed_port = probe.getsockname()[1]
    server_url = f"http://127.0.0.1:{closed_port}"
    env = {"WANDB_API_KEY": "k" * 40, "WANDB_BASE_URL": server_url, "HOME": str(tmp_path)}
    sources = Sources(runs_dir=runs_dir, env=env)
    with capture_logs() as logs, _running(sources) as url:
        sources.start()
        status, _ = _get(f"{url}/")  # served whatever the W&B state is: the local runs meanwhile
        assert status == 200
        assert sources.ready.wait(timeout=20)  # a guard: the probe itself gives up after 3 s
        state = _json(f"{url}/api/status")
        _, page = _get(f"{url}/")
    assert state["wandb"] == "offline" and state["source"] == "local"
    assert server_url in state["message"] and "not reachable" in state["message"]
    assert "W&amp;B offline" in page and "run-b" in page
    events = [e["event"] for e in logs]
    assert "wandb_connecting" in events and "wandb_offline" in events


@pytest.mark.integration
def test_cli_serves_offline_and_says_so_in_the_log(runs_dir: Path) -> None:
    env = {**os.environ, "WANDB_MODE": "offline", "PYTHONPATH": str(ROOT)}
    command = [sys.executable, "-m", "monitoring.dashboard", "--port", "0", "--runs-dir", str(runs_dir)]
    process = subprocess.Popen(command, cwd=ROOT, env=env, stderr=subprocess.PIPE, text=True)
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in process.stderr or []], daemon=True).start()
    try:
        events = []
        while not events or events[-1]["event"] != "dashboard_serving":
            events.append(json.loads(lines.get(timeout=60)))  # the timeout is a guard against a hung start
        url = events[-1]["url"]
        status, page = _get(url)
    finally:
        process.terminate()
        process.wait(timeout=10)
    offline = next(e for e in events if e["event"] == "wandb_offline")
    assert "WANDB_MODE=offline" in offline["message"] and offline["level"] == "warning"
    assert events[-1]["wandb"] == "offline" and events[-1]["source"] == "local"
    assert status == 200 and "W&amp;B offline" in page and "run-a" in page and "run-b" in page


def test_help_through_the_console_script_dispatcher() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "bot.cli", "dashboard", "--help"], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    for option in ("--project", "--entity", "--port", "--runs-dir", "--host", "8502", "127.0.0.1"):
        assert option in result.stdout


def test_dashboard_imports_neither_torch_nor_training() -> None:
    code = (
        "import sys, monitoring.dashboard.app; "
        "bad = [m for m in sys.modules if m == 'torch' or m == 'training' or m.startswith('training.')]; "
        "assert not bad, bad"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr


def test_period_limits_the_trade_analytics(runs_dir: Path) -> None:
    trades = pd.read_parquet(runs_dir / "run-a" / "trades-test.parquet")
    entries = pd.to_datetime(trades["entry_time"], utc=True)
    day = entries.min().normalize()
    expected = trades[(entries >= day) & (entries < day + pd.Timedelta(days=2))]
    with _dashboard(runs_dir) as url:
        every = _json(f"{url}/api/runs/run-a")["trades"]
        some = _json(f"{url}/api/runs/run-a?from={day.date()}&to={(day + pd.Timedelta(days=1)).date()}")["trades"]
        bad_status, bad = _get(f"{url}/api/runs/run-a?from=yesterday")
        backwards_status, _ = _get(f"{url}/api/runs/run-a?from=2025-02-02&to=2025-02-01")
        page_status, page = _get(f"{url}/runs/run-a?from=yesterday")
    assert every["stats"]["trades"] == len(trades) and every["period"]["from"] is None
    assert some["stats"]["trades"] == len(expected) < len(trades)
    assert some["stats"]["total_pnl"] == pytest.approx(expected["pnl"].sum())
    assert some["period"] == {
        "from": str(day.date()),
        "to": str((day + pd.Timedelta(days=1)).date()),
        "of_trades": len(trades),
    }
    assert bad_status == 400 and "from='yesterday' is not a date" in json.loads(bad)["error"]
    assert backwards_status == 400
    # The page shows every trade and says why, instead of failing.
    assert page_status == 200 and 'id="period-error"' in page and "showing every trade" in page


def test_model_and_sweep_pages_and_their_links(runs_dir: Path, tmp_path: Path) -> None:
    runs = tmp_path / "outputs"
    shutil.copytree(runs_dir, runs)
    sweep = runs / "sweeps" / "s1"
    sweep.mkdir(parents=True)
    (sweep / "sweep_summary.json").write_text(
        json.dumps(
            {
                "method": "grid",
                "metric": {"name": "sharpe", "goal": "maximize"},
                "n_trials": 1,
                "states": {"complete": 1},
                "best": {"number": 0, "value": 1.5, "run_id": "run-a", "retrain_command": "ai-trading train"},
                "trials": [{"number": 0, "state": "complete", "value": 1.5, "run_id": "run-a", "params": {"x": 1}}],
            }
        )
    )
    card = json.loads((runs / "run-b" / "models" / "best_model.json").read_text())
    card["onnx"]["sha256"] = "0" * 64
    (runs / "run-b" / "models" / "best_model.json").write_text(json.dumps(card))
    with _dashboard(runs) as url:
        _, front = _get(f"{url}/")
        good = _json(f"{url}/api/runs/run-a/model")
        bad = _json(f"{url}/api/runs/run-b/model")
        data = _json(f"{url}/api/sweeps/s1")
        status, page = _get(f"{url}/sweeps/s1")
        missing_status, missing = _get(f"{url}/sweeps/nope")
    for href in ("/runs/run-a", "/runs/run-b", "/runs/run-a/model", "/sweeps/s1"):
        assert f'href="{href}"' in front, href
    assert good["sha_ok"] is True and good["sha256"] == good["file_sha256"] and good["training"]["run_id"] == "run-a"
    assert bad["sha_ok"] is False and "the card says 0000" in bad["problems"][0]
    assert data["best"]["run_id"] == "run-a" and data["params"] == ["x"]
    assert status == 200 and _table(page, "trials") == [["0", "complete", "1.500", "run-a", "1"]]
    assert missing_status == 404 and "s1" in missing


def test_live_api_waits_for_the_ledger_then_reads_it(runs_dir: Path, tmp_path: Path) -> None:
    from datetime import UTC, datetime
    from decimal import Decimal

    from bot.events import EquityEvent
    from bot.ledger.store import Ledger

    ledger_path = tmp_path / "paper.db"
    sources = Sources(runs_dir=runs_dir, env=OFFLINE)
    sources.start()
    server = serve(sources, "127.0.0.1", 0, ledger=str(ledger_path))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{server.server_port}"
    try:
        before = _json(f"{url}/api/live")
        with Ledger(f"sqlite:///{ledger_path}") as ledger:
            ledger.record_equity(
                EquityEvent(
                    ts=datetime(2025, 1, 1, tzinfo=UTC),
                    bot_id="b",
                    equity=Decimal("10000.5"),
                    cash=Decimal("10000.5"),
                    positions_value=Decimal(0),
                    realized_pnl=Decimal("0.5"),
                    unrealized_pnl=Decimal(0),
                    drawdown=0.0,
                )
            )
            after = _json(f"{url}/api/live")
        status, page = _get(f"{url}/live")
    finally:
        server.shutdown()
        thread.join(timeout=10)
        server.server_close()
    assert "no such file" in before["error"]
    assert after["error"] is None and after["equity"]["equity"] == "10000.5" and after["bot_id"] == "b"
    assert after["equity_curve"]["equity"] == [10000.5] and after["risk"]["state"].startswith("active")
    assert status == 200 and 'id="live-equity">10000.5<' in page
