"""Reports from a daemon's ledger: the ledger as a run, `ai-trading report --ledger`, the scheduled daily report."""

from __future__ import annotations

import json
import math
import sqlite3
import subprocess
import sys
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from adapters.types import ClientOrderId, Fill, OrderRequest, OrderType, Side
from bot.engine.scheduler import ScheduleConfig, build_scheduler
from bot.events import AlertEvent, EquityEvent, Event
from bot.ledger.store import Ledger
from bot.sinks.bus import EventBus
from bot.sinks.daily_report import DailyReportJob, previous_utc_day
from monitoring.reports.ledger import write_daily_report
from monitoring.reports.ledger_run import LedgerReadError, open_ledger, read_ledger_run
from training.reports import main as report_main

DAY = date(2024, 5, 1)
START = datetime(2024, 5, 1, tzinfo=UTC)
FEE_RATE = Decimal("0.001")

# (hours after START of the entry, hours held, side of the entry, qty, entry price, exit price)
ROUND_TRIPS = [
    (-5, 2, Side.BUY, "0.10", "60000", "60500"),  # closed the day before: outside the window
    (1, 3, Side.BUY, "0.10", "60000", "61000"),  # win
    (6, 2, Side.SELL, "0.20", "61000", "61500"),  # short, loss
    (10, 1, Side.BUY, "0.05", "61500", "61400"),  # loss
    (14, 5, Side.BUY, "0.10", "61400", "62400"),  # win
    (23, 2, Side.BUY, "0.10", "62400", "63000"),  # closes the next day: outside the window
]
IN_WINDOW = ROUND_TRIPS[1:5]


def expected_pnl(side: Side, qty: str, entry: str, exit_: str) -> Decimal:
    """P&L of a round trip after both fees, computed here (not by the ledger)."""
    q, p_in, p_out = Decimal(qty), Decimal(entry), Decimal(exit_)
    gross = (p_out - p_in) * q * (1 if side is Side.BUY else -1)
    return gross - FEE_RATE * q * p_in - FEE_RATE * q * p_out


def _trade(ledger: Ledger, n: int, side: Side, qty: str, price: str, ts: datetime) -> None:
    cid = ClientOrderId(f"o{n}")
    amount, fill_price = Decimal(qty), Decimal(price)
    ledger.record_new_order(
        OrderRequest(cid, "BTC/USDT", side, OrderType.MARKET, amount), ts=ts, model_sha="abc", sent=True
    )
    ledger.record_fill(
        Fill(str(n), cid, "BTC/USDT", side, amount, fill_price, FEE_RATE * amount * fill_price, "USDT", ts)
    )


def _snapshot(ledger: Ledger, ts: datetime, equity: Decimal, positions_value: Decimal) -> None:
    ledger.record_equity(
        EquityEvent(
            ts=ts,
            bot_id="bot-1",
            equity=equity,
            cash=equity - positions_value,
            positions_value=positions_value,
            realized_pnl=Decimal(0),
            unrealized_pnl=Decimal(0),
        )
    )


@pytest.fixture
def ledger_path(tmp_path: Path) -> Path:
    path = tmp_path / "state" / "paper.db"
    with Ledger(f"sqlite:///{path}") as ledger:
        n = 0
        for start_h, held_h, side, qty, entry, exit_ in ROUND_TRIPS:
            opened = START + timedelta(hours=start_h)
            n += 1
            _trade(ledger, n, side, qty, entry, opened)
            n += 1
            _trade(ledger, n, Side.SELL if side is Side.BUY else Side.BUY, qty, exit_, opened + timedelta(hours=held_h))
        equity = Decimal(10_000)
        for hour in range(-3, 27):  # hourly snapshots from the evening before to the next morning
            equity += Decimal(hour % 5 - 2)
            _snapshot(ledger, START + timedelta(hours=hour), equity, Decimal(3000) if hour % 3 else Decimal(0))
    return path


def test_ledger_window_reads_as_a_run_with_independent_figures(ledger_path: Path) -> None:
    with open_ledger(ledger_path) as ledger:
        run = read_ledger_run(ledger, START, START + timedelta(days=1))
    pnls = [expected_pnl(side, qty, entry, exit_) for _, _, side, qty, entry, exit_ in IN_WINDOW]
    assert len(run.trades) == 4
    assert run.trades["pnl"].tolist() == pytest.approx([float(p) for p in pnls])
    assert run.trades["side"].tolist() == ["long", "short", "long", "long"]
    assert run.trades["duration_seconds"].tolist() == [3 * 3600.0, 2 * 3600.0, 3600.0, 5 * 3600.0]
    # The curve opens at the last snapshot before the window (23:00 the day before), then 24 hourly snapshots.
    assert len(run.equity) == 25
    assert run.equity.index[0] == START - timedelta(hours=1)
    assert run.metrics is not None
    assert run.metrics.trade_count == 4
    assert run.metrics.win_rate == pytest.approx(sum(p > 0 for p in pnls) / 4)
    assert run.metrics.total_return == pytest.approx(run.equity.iloc[-1] / run.equity.iloc[0] - 1)
    assert run.metrics.periods_per_year == pytest.approx(365 * 24)
    assert [t["bars"] for t in run.trades.to_dict("records")] == [3, 2, 1, 5]


def test_cli_trade_report_from_a_ledger(ledger_path: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "reports"
    code = report_main(
        ["--report-type", "trade", "--ledger", str(ledger_path), "--since", "2024-05-01", "--until", "2024-05-02"]
        + ["--format", "json", "--output-dir", str(out)]
    )
    assert code == 0
    path = Path(capsys.readouterr().out.strip())
    assert path.parent.parent == out and path.parent.name.startswith("trade-ledger-")
    report = json.loads(path.read_text())
    pnls = [float(expected_pnl(side, qty, entry, exit_)) for _, _, side, qty, entry, exit_ in IN_WINDOW]
    stats = report["trade_stats"]
    assert stats["trades"] == 4
    assert stats["wins"] == sum(p > 0 for p in pnls)
    assert stats["win_rate"] == pytest.approx(sum(p > 0 for p in pnls) / 4)
    assert stats["total_pnl"] == pytest.approx(sum(pnls))
    assert stats["total_costs"] == pytest.approx(
        sum(float(FEE_RATE * Decimal(q) * (Decimal(a) + Decimal(b))) for _, _, _, q, a, b in IN_WINDOW)
    )
    assert report["test"]["policy"]["trade_count"] == 4
    assert report["meta"]["source"].startswith("ledger: sqlite:///")
    assert {c["file"] for c in report["charts"]} >= {"cumulative_pnl.png", "win_loss_distribution.png"}

    # The whole ledger without a window: every round trip.
    assert report_main(["--report-type", "trade", "--ledger", str(ledger_path), "--output-dir", str(out)]) == 0
    markdown = Path(capsys.readouterr().out.strip()).read_text()
    assert f"{len(ROUND_TRIPS)} trades closed in start .. now (UTC)" in markdown


def test_cli_ledger_errors_are_clear(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "nope.db"
    assert report_main(["--report-type", "trade", "--ledger", str(missing), "--output-dir", str(tmp_path)]) == 1
    assert f"ledger {missing}: no such file" in capsys.readouterr().err
    assert not missing.exists()

    corrupt = tmp_path / "corrupt.db"
    corrupt.write_bytes(b"this is not a database, just some bytes " * 200)
    assert report_main(["--report-type", "trade", "--ledger", str(corrupt), "--output-dir", str(tmp_path)]) == 1
    assert "not a readable SQLite database" in capsys.readouterr().err

    stranger = tmp_path / "other.db"
    with sqlite3.connect(stranger) as conn:
        conn.execute("CREATE TABLE t (x INTEGER)")
    with pytest.raises(LedgerReadError, match="not a ledger"):
        open_ledger(stranger)

    assert report_main(["--report-type", "performance", "--ledger", str(corrupt)]) == 1
    assert "--ledger makes a trade report" in capsys.readouterr().err
    assert report_main(["--report-type", "trade", "--since", "2024-05-01"]) == 1
    assert "pass --ledger too" in capsys.readouterr().err


def test_empty_window_writes_a_report_without_trades(ledger_path: Path, tmp_path: Path) -> None:
    with open_ledger(ledger_path) as ledger:
        daily = write_daily_report(ledger, bot_id="bot-1", day=date(2023, 1, 1), output_dir=tmp_path)
    assert daily.headline == {
        "trades": 0,
        "win_rate": None,
        "total_pnl": 0.0,
        "total_return": None,
        "final_equity": None,
    }
    assert "no trades closed" in daily.files["md"].read_text()


class _Collect:
    def __init__(self) -> None:
        self.events: list[Event] = []

    def publish(self, event: Event) -> None:
        self.events.append(event)


async def test_scheduled_daily_report_fires_and_writes_yesterdays_report(ledger_path: Path, tmp_path: Path) -> None:
    now = datetime(2024, 5, 2, 0, 5, 3, tzinfo=UTC)
    assert previous_utc_day(now) == DAY
    sink = _Collect()
    with open_ledger(ledger_path) as ledger:
        job = DailyReportJob(
            ledger, bot_id="bot-1", output_dir=tmp_path / "outputs", bus=EventBus([sink]), clock=lambda: now
        )
        scheduler, stats = build_scheduler({"daily_report": (ScheduleConfig().daily_report, job)})
        scheduled = scheduler.get_job("daily_report")
        assert scheduled is not None
        # The default cron fires at 00:05 UTC every day.
        assert scheduled.trigger.get_next_fire_time(None, datetime(2024, 5, 1, 12, tzinfo=UTC)) == datetime(
            2024, 5, 2, 0, 5, tzinfo=UTC
        )
        with capture_logs() as logs:
            await scheduled.func()  # what the scheduler runs at that time (the guarded job)
    assert stats.runs == {"daily_report": 1} and stats.failures == {}

    folder = tmp_path / "outputs" / "reports" / "bot-1" / "2024-05-01"
    assert sorted(p.name for p in folder.glob("report.*")) == ["report.json", "report.md"]
    report = json.loads((folder / "report.json").read_text())
    pnls = [float(expected_pnl(side, qty, entry, exit_)) for _, _, side, qty, entry, exit_ in IN_WINDOW]
    assert report["trade_stats"]["trades"] == 4
    assert report["trade_stats"]["total_pnl"] == pytest.approx(sum(pnls))
    assert report["meta"]["bot"] == "bot-1"
    assert "Daily report of bot-1, 2024-05-01 (UTC)" in (folder / "report.md").read_text()

    written = [e for e in logs if e["event"] == "daily_report_written"]
    assert len(written) == 1
    assert written[0]["path"] == str(folder / "report.md")
    assert written[0]["trades"] == 4 and written[0]["total_pnl"] == pytest.approx(sum(pnls))
    assert written[0]["win_rate"] == pytest.approx(0.5)
    [alert] = sink.events
    assert isinstance(alert, AlertEvent) and alert.level == "info" and alert.code == "daily_report_written"
    assert str(folder / "report.md") in alert.message and "trades=4" in alert.message


async def test_a_failing_daily_report_is_counted_and_does_not_raise(tmp_path: Path) -> None:
    ledger = Ledger(f"sqlite:///{tmp_path / 'paper.db'}")
    ledger.close()
    blocker = tmp_path / "outputs"
    blocker.write_text("a file where the output directory should be")
    job = DailyReportJob(ledger, bot_id="bot-1", output_dir=blocker, clock=lambda: START)
    scheduler, stats = build_scheduler({"daily_report": ("5 0 * * *", job)})
    scheduled = scheduler.get_job("daily_report")
    assert scheduled is not None
    with capture_logs() as logs:
        await scheduled.func()
    assert stats.failures == {"daily_report": 1}
    assert any(e["event"] == "scheduled_job_failed" and e["job"] == "daily_report" for e in logs)


def test_empty_cron_turns_the_daily_report_off(tmp_path: Path) -> None:
    with Ledger(f"sqlite:///{tmp_path / 'paper.db'}") as ledger:
        job = DailyReportJob(ledger, bot_id="bot-1", output_dir=tmp_path, clock=lambda: START)
        scheduler, _ = build_scheduler({"daily_report": ("", job)})
    assert scheduler.get_job("daily_report") is None


def test_daily_report_runs_without_torch_or_training(ledger_path: Path, tmp_path: Path) -> None:
    code = (
        "import asyncio, sys; from datetime import datetime, UTC; "
        "import bot.daemon; from bot.sinks.daily_report import DailyReportJob; "
        "from monitoring.reports.ledger_run import open_ledger; "
        f"ledger = open_ledger({str(ledger_path)!r}); "
        f"job = DailyReportJob(ledger, bot_id='bot-1', output_dir={str(tmp_path / 'out')!r}, "
        "clock=lambda: datetime(2024, 5, 2, 0, 5, tzinfo=UTC)); "
        "report = asyncio.run(job()); assert report.headline['trades'] == 4, report.headline; "
        "assert 'torch' not in sys.modules, 'the daily report imported torch'; "
        "assert not any(m == 'training' or m.startswith('training.') for m in sys.modules), 'imported training'"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=Path(__file__).parents[1])
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "out" / "reports" / "bot-1" / "2024-05-01" / "report.md").is_file()


def test_trade_metrics_are_nan_free_where_defined(ledger_path: Path) -> None:
    with open_ledger(ledger_path) as ledger:
        run = read_ledger_run(ledger, START, START + timedelta(days=1))
    assert run.metrics is not None
    assert math.isfinite(run.metrics.sharpe) and math.isfinite(run.metrics.max_drawdown)
    assert 0 < run.metrics.exposure < 1
