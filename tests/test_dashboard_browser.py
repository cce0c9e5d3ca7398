"""The dashboard in a real browser: Debian's Chromium, headless, driven by Playwright (tests/support/browser.py).

Every page is loaded with its JavaScript (BokehJS draws the charts); a console error or uncaught exception on any
page fails the test, every chart's canvas is read back and must hold drawn pixels, and a screenshot of each page
is written under the test's tmp dir (its path printed). With ``AI_TRADING_UPDATE_SCREENSHOTS=1`` the front page
is also saved as ``docs/dashboard.png`` for the README.

The runs are two real tiny trainings (tests/conftest.py `trained_runs`); the sweep summary is written by the
sweep's own writer (`training.sweep.results.write_results`) over those runs; the live view watches a ledger
written through `bot.ledger.store.Ledger` while the page is open.
"""

from __future__ import annotations

import os
import shutil
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from adapters.types import ClientOrderId, Fill, OrderRequest, OrderStatus, OrderType, Side
from bot.events import EquityEvent
from bot.ledger.store import Ledger
from monitoring.dashboard.app import serve
from monitoring.dashboard.sources import Sources
from tests.support.browser import Browser, assert_charts_rendered, screenshot

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[1]
README_SCREENSHOT = ROOT / "docs" / "dashboard.png"


@pytest.fixture
def runs(trained_runs: Path, tmp_path: Path) -> Path:
    """The two trained runs plus a sweep over them, in a fresh outputs tree."""
    from training.sweep.results import write_results
    from training.sweep.spec import Metric

    outputs = tmp_path / "outputs"
    shutil.copytree(trained_runs, outputs)
    rows = [
        {"number": 0, "state": "complete", "value": 0.4, "params": {"training.lr": 0.001}, "run_id": "run-a"},
        {"number": 1, "state": "complete", "value": 0.7, "params": {"training.lr": 0.0003}, "run_id": "run-b"},
    ]
    for row in rows:
        row["run_dir"] = str(outputs / str(row["run_id"]))
    header = {"name": "lr-search", "backend": "optuna", "method": "random", "metric": {"name": "sharpe"}}
    write_results(outputs / "sweeps" / "lr-search", header, rows, Metric("sharpe", "maximize"), [])
    return outputs


@contextmanager
def _dashboard(runs_dir: Path, ledger: Path | None = None) -> Iterator[str]:
    sources = Sources(runs_dir=runs_dir, env={"WANDB_MODE": "offline"})
    sources.start()
    server = serve(sources, "127.0.0.1", 0, ledger=None if ledger is None else str(ledger))
    thread = threading.Thread(target=server.serve_forever, name="dashboard-browser-test", daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        thread.join(timeout=10)
        server.server_close()


def _rows(page: Any, table_id: str) -> list[list[str]]:
    """The text of each body row of a table, as the browser shows it."""
    return page.evaluate(
        """id => Array.from(document.querySelectorAll(`#${id} tr`)).slice(1)
              .map(tr => Array.from(tr.querySelectorAll('td')).map(td => td.innerText.trim()))""",
        table_id,
    )


def _equity(ts: datetime, equity: str, drawdown: float = 0.0) -> EquityEvent:
    value = Decimal(equity)
    return EquityEvent(
        ts=ts,
        bot_id="paper-bot",
        equity=value,
        cash=value,
        positions_value=Decimal(0),
        realized_pnl=value - Decimal(10_000),
        unrealized_pnl=Decimal(0),
        drawdown=drawdown,
    )


def test_every_page_renders_with_charts_and_links(browser: Browser, runs: Path, tmp_path: Path) -> None:
    shots = tmp_path / "screenshots"
    ledger = tmp_path / "paper.db"
    with Ledger(f"sqlite:///{ledger}") as writer:
        writer.record_equity(_equity(datetime(2025, 6, 1, tzinfo=UTC), "10000"))
        writer.record_equity(_equity(datetime(2025, 6, 1, 1, tzinfo=UTC), "10050"))
    with _dashboard(runs, ledger) as url:
        front = browser.open(url + "/")
        assert len(assert_charts_rendered(front)) == 3  # returns by run, reward and validation curves
        screenshot(front, shots / "front.png")
        if os.environ.get("AI_TRADING_UPDATE_SCREENSHOTS") == "1":
            README_SCREENSHOT.parent.mkdir(exist_ok=True)
            front.screenshot(path=str(README_SCREENSHOT), full_page=False)
            from PIL import Image  # matplotlib's dependency; a 64-colour PNG keeps the README's image small

            with Image.open(README_SCREENSHOT) as image:
                image.convert("RGB").quantize(colors=64).save(README_SCREENSHOT, optimize=True)
            print(f"screenshot: {README_SCREENSHOT}")
        # The front page links every run, model and sweep to its page.
        hrefs = front.evaluate("() => Array.from(document.querySelectorAll('a')).map(a => a.getAttribute('href'))")
        for expected in ("/runs/run-a", "/runs/run-b", "/runs/run-a/model", "/runs/run-b/model", "/sweeps/lr-search"):
            assert expected in hrefs, (expected, hrefs)
        assert _rows(front, "sweeps")[0][:3] == ["lr-search", "random", "2"]

        front.click("text=lr-search")
        front.wait_for_url("**/sweeps/lr-search")
        trials = _rows(front, "trials")
        assert [(t[0], t[3]) for t in trials] == [("0", "run-a"), ("1", "run-b")]
        assert "run-b" in front.inner_text("#best")
        screenshot(front, shots / "sweep.png")

        for run_id in ("run-a", "run-b"):
            page = browser.open(f"{url}/runs/{run_id}")
            # 7 training panels at most (those the run logged), equity, P&L and 3 win/loss bar charts.
            drawn = assert_charts_rendered(page)
            assert len(drawn) >= 10, drawn
            screenshot(page, shots / f"run-{run_id}.png")
            page.click("#model-link")
            page.wait_for_url(f"**/runs/{run_id}/model")
            card = {row[0]: row[1] for row in _rows(page, "model-card")}
            assert card["sha ok"] == "True" and card["sha256"] == card["file sha256"]
            assert card["training run id"] == run_id
            screenshot(page, shots / f"model-{run_id}.png")

        live = browser.open(url + "/live")
        assert_charts_rendered(live)
        assert live.inner_text("#live-equity") == "10050"
        screenshot(live, shots / "live.png")
        browser.close_pages()
    assert len(list(shots.glob("*.png"))) == 7


def test_choosing_runs_changes_the_comparison(browser: Browser, runs: Path, tmp_path: Path) -> None:
    with _dashboard(runs) as url:
        page = browser.open(url + "/")
        assert [r[0] for r in _rows(page, "comparison")] == ["run-b", "run-a"]
        page.uncheck("input[name=run][value=run-b]")
        page.click("#compare")
        page.wait_for_url("**/?run=run-a")
        assert [r[0] for r in _rows(page, "comparison")] == ["run-a"]
        assert page.is_checked("input[name=run][value=run-a]") and not page.is_checked("input[name=run][value=run-b]")
        assert_charts_rendered(page, expected=3)
        # The returns chart now holds run-a's bars only (its factors come from the chosen runs).
        factors = page.evaluate(
            """() => Bokeh.documents[0].all_models ? [...Bokeh.documents[0].all_models]
                 .filter(m => m.type === 'FactorRange').flatMap(m => m.factors.map(f => f[0])) : []"""
        )
        assert factors and set(factors) == {"run-a"}, factors
        screenshot(page, tmp_path / "screenshots" / "front-run-a.png")


def test_trade_analytics_filter_by_period(browser: Browser, runs: Path, tmp_path: Path) -> None:
    trades = pd.read_parquet(runs / "run-a" / "trades-test.parquet")
    entries = pd.to_datetime(trades["entry_time"], utc=True)
    first_day, last_day = entries.min().normalize(), entries.max().normalize()
    cut = (first_day + (last_day - first_day) / 2).normalize()
    expected = int(((entries >= first_day) & (entries < cut + timedelta(days=1))).sum())
    assert 0 < expected < len(trades)  # the period picks a real subset
    with _dashboard(runs) as url:
        page = browser.open(url + "/runs/run-a")
        stats = {row[0]: row[1] for row in _rows(page, "trade-stats")}
        assert stats["trades"] == str(len(trades))
        page.fill("#period-from", first_day.date().isoformat())
        page.fill("#period-to", cut.date().isoformat())
        page.click("#apply-period")
        page.wait_for_url("**/runs/run-a?from=*")
        stats = {row[0]: row[1] for row in _rows(page, "trade-stats")}
        assert stats["trades"] == str(expected)
        by_hour = _rows(page, "by-hour")
        assert sum(int(row[1]) for row in by_hour) == expected
        kept = trades[(entries >= first_day) & (entries < cut + timedelta(days=1))]
        assert stats["total pnl"] == f"{kept['pnl'].sum():,.2f}"
        assert page.input_value("#period-to") == cut.date().isoformat()
        assert_charts_rendered(page)
        screenshot(page, tmp_path / "screenshots" / "run-a-period.png")


def test_live_view_follows_a_ledger_being_written(browser: Browser, runs: Path, tmp_path: Path) -> None:
    ledger_path = tmp_path / "state" / "paper.db"
    start = datetime(2025, 6, 1, tzinfo=UTC)
    with _dashboard(runs, ledger_path) as url:
        # Before the daemon has created its ledger, the page says so and keeps polling.
        page = browser.open(url + "/live?interval_ms=150")
        assert "no such file" in page.inner_text("#live-error")
        ledger_path.parent.mkdir()
        with Ledger(f"sqlite:///{ledger_path}") as ledger:
            ledger.record_equity(_equity(start, "10000"))
            page.wait_for_function("() => document.getElementById('live-equity').innerText === '10000'")
            assert page.is_hidden("#live-error")
            refreshes = int(page.inner_text("#live-refreshes"))

            # The daemon buys, sells (a closed trade), buys again, has an order resting, and the risk manager halts.
            for number, (side, amount, price) in enumerate(
                [(Side.BUY, "0.1", "60000"), (Side.SELL, "0.1", "61000"), (Side.BUY, "0.05", "60500")], start=1
            ):
                order = OrderRequest(ClientOrderId(f"c-{number}"), "BTC/USDT", side, OrderType.MARKET, Decimal(amount))
                ts = start + timedelta(hours=number)
                ledger.record_new_order(order, ts=ts, sent=True)
                fee = Decimal(amount) * Decimal(price) / 1000
                fill = Fill(
                    f"t-{number}",
                    order.client_order_id,
                    "BTC/USDT",
                    side,
                    Decimal(amount),
                    Decimal(price),
                    fee,
                    "USDT",
                    ts,
                )
                ledger.record_fill(fill)
                ledger.update_order(
                    order.client_order_id, OrderStatus.FILLED, ts=ts, filled=fill.amount, average_price=fill.price
                )
            rest = OrderRequest(
                ClientOrderId("c-4"), "BTC/USDT", Side.SELL, OrderType.LIMIT, Decimal("0.05"), Decimal("65000")
            )
            ledger.record_new_order(rest, ts=start + timedelta(hours=3), sent=True)
            ledger.record_equity(_equity(start + timedelta(hours=3), "10041.5", drawdown=0.01))
            ledger.set_states({"risk.state": "halted", "risk.reason": "max drawdown 1% reached"})

            page.wait_for_function("() => document.getElementById('live-equity').innerText === '10041.5'")
            page.wait_for_function("() => document.getElementById('live-risk').innerText === 'halted'")
            assert int(page.inner_text("#live-refreshes")) > refreshes  # refreshed by itself, no reload
            assert page.inner_text("#live-risk-reason") == "max drawdown 1% reached"
            assert page.inner_text("#live-trade-count") == "1"
            positions = _rows(page, "live-positions")
            assert [(p[0], p[1]) for p in positions] == [("BTC/USDT", str(ledger.position("BTC/USDT").amount))]
            orders = _rows(page, "live-orders")
            assert [(o[0], o[7]) for o in orders] == [("c-4", "sent")]
            trades = _rows(page, "live-trades")
            closed = ledger.closed_trades()
            assert len(trades) == 1 and trades[0][5] == format(closed[0].realized_pnl, "f")
            # The chart's data source was updated in place: both snapshots are plotted.
            points = page.evaluate("() => Bokeh.documents[0].get_model_by_name('live-equity').data.equity")
            assert points == [10000.0, 10041.5]
            assert_charts_rendered(page)
            screenshot(page, tmp_path / "screenshots" / "live-updated.png")
        browser.close_pages()
