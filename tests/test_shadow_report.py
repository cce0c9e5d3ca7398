"""The live-vs-shadow report (`ai-trading report --report-type shadows --ledger ...`) from a ledger's shadow rows."""

from __future__ import annotations

import json
import math
import statistics
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pytest

from adapters.types import ClientOrderId, Fill, OrderRequest, OrderType, Side
from bot.ledger.shadows import ModelMark, ShadowRecords, ShadowTrade, record_shadow
from bot.ledger.store import Ledger
from bot.ledger.types import ClosedTrade
from monitoring.reports.model import ReportError
from monitoring.reports.shadows import build_shadow_report
from training.reports import main as report_main

SESSION_1 = datetime(2024, 5, 1, tzinfo=UTC)
SESSION_2 = datetime(2024, 5, 1, 8, tzinfo=UTC)
BAR = timedelta(hours=1)
SYMBOLS = ("BTC/USDT", "ETH/USDT")
FEE_RATE = Decimal("0.001")

# Each model's book equity at the closes of session 1 (4 closes) and session 2 (3 closes). The books restart
# with the daemon, so the step from a session's last close to the next one's first is no return.
EQUITY: dict[str, tuple[list[str], list[str]]] = {
    "live": (["10000", "10100", "10050", "10200"], ["9000", "9090", "9120"]),
    "alpha": (["10000", "9900", "10150", "10300"], ["10000", "9950", "10010"]),
    "beta": (["10000", "10000", "9800", "9700"], ["10000", "10100", "10250"]),
}
# Targets per close (session 1 then 2) and symbol; None while the model's features warm up.
TARGETS: dict[str, list[tuple[float | None, float | None]]] = {
    "live": [(None, None), (0.5, 0.0), (0.5, -0.25), (1.0, 0.0), (0.0, 0.0), (0.5, 0.5), (0.5, 0.0)],
    "alpha": [(0.5, None), (0.5, 0.0), (0.5, 0.25), (1.0 + 1e-12, 0.0), (0.0, 0.1), (None, 0.5), (0.5, 0.0)],
    "beta": [(None, None), (None, 0.0), (-0.5, -0.25), (0.0, 0.0), (0.0, 1.0), (0.5, -0.5), (1.0, 1.0)],
}
# Shadows' virtual round trips: (model, hours after SESSION_1 it closed, realised P&L).
WRITE_ORDER = ("beta", "alpha", "live")
"""Shadows first in the rows: the report still puts live first, then shadows as they first appear."""
ROW_ORDER = ["live", "beta", "alpha"]
SHADOW_TRADES = [("alpha", 2, "12.5"), ("alpha", 3, "-4"), ("alpha", 10, "7.25"), ("beta", 3, "-30")]
# The live bot's real round trips: (hours after SESSION_1 of the entry, hours held, side, qty, entry, exit).
LIVE_TRIPS = [
    (1, 1, Side.BUY, "0.10", "60000", "60600"),
    (2, 1, Side.SELL, "0.10", "60600", "60900"),
    (9, 1, Side.BUY, "0.05", "60900", "61500"),
]


def _closes() -> list[tuple[datetime, datetime]]:
    """(close, session) of every close, in time order."""
    first, second = EQUITY["live"]
    return [(SESSION_1 + (i + 1) * BAR, SESSION_1) for i in range(len(first))] + [
        (SESSION_2 + (i + 1) * BAR, SESSION_2) for i in range(len(second))
    ]


def _live_pnl(side: Side, qty: str, entry: str, exit_: str) -> Decimal:
    q, p_in, p_out = Decimal(qty), Decimal(entry), Decimal(exit_)
    gross = (p_out - p_in) * q * (1 if side is Side.BUY else -1)
    return gross - FEE_RATE * q * (p_in + p_out)


def _fill(ledger: Ledger, n: int, side: Side, qty: str, price: str, ts: datetime) -> None:
    cid = ClientOrderId(f"o{n}")
    amount, fill_price = Decimal(qty), Decimal(price)
    ledger.record_new_order(OrderRequest(cid, "BTC/USDT", side, OrderType.MARKET, amount), ts=ts, sent=True)
    ledger.record_fill(
        Fill(str(n), cid, "BTC/USDT", side, amount, fill_price, FEE_RATE * amount * fill_price, "USDT", ts)
    )


def _marks(model: str) -> list[ModelMark]:
    equity = EQUITY[model][0] + EQUITY[model][1]
    return [
        ModelMark(
            ts=ts,
            session=session,
            model=model,
            role="live" if model == "live" else "shadow",
            symbol=symbol,
            sha256=f"sha-{model}",
            target=TARGETS[model][i][j],
            equity=Decimal(equity[i]),
        )
        for i, (ts, session) in enumerate(_closes())
        for j, symbol in enumerate(SYMBOLS)
    ]


def _shadow_trade(model: str, closed_h: int, pnl: str) -> ShadowTrade:
    closed = SESSION_1 + timedelta(hours=closed_h)
    trade = ClosedTrade(
        symbol="BTC/USDT",
        side=Side.BUY,
        qty=Decimal("0.1"),
        entry_price=Decimal(60000),
        exit_price=Decimal(60100),
        realized_pnl=Decimal(pnl),
        fees=Decimal(1),
        opened_at=closed - BAR,
        closed_at=closed,
    )
    return ShadowTrade(model, trade)


@pytest.fixture
def ledger_path(tmp_path: Path) -> Path:
    path = tmp_path / "state" / "paper.db"
    with Ledger(f"sqlite:///{path}") as ledger:
        n = 0
        for start_h, held_h, side, qty, entry, exit_ in LIVE_TRIPS:
            opened = SESSION_1 + timedelta(hours=start_h)
            n += 1
            _fill(ledger, n, side, qty, entry, opened)
            n += 1
            _fill(ledger, n, Side.SELL if side is Side.BUY else Side.BUY, qty, exit_, opened + timedelta(hours=held_h))
        for model in WRITE_ORDER:
            record_shadow(ledger, ShadowRecords(marks=_marks(model)))
        record_shadow(ledger, ShadowRecords(trades=[_shadow_trade(*t) for t in SHADOW_TRADES]))
    return path


def _expected(model: str, first_close: int = 0) -> dict[str, float | int | None]:
    """The figures of `model` from the inputs above, by hand (closes from index `first_close` on)."""
    closes = _closes()[first_close:]
    equity = [float(e) for e in (EQUITY[model][0] + EQUITY[model][1])[first_close:]]
    returns, gaps = [], []
    for i in range(1, len(closes)):
        if closes[i][1] == closes[i - 1][1]:
            returns.append(equity[i] / equity[i - 1] - 1)
            gaps.append((closes[i][0] - closes[i - 1][0]).total_seconds())
    bars_per_year = 365 * 24 * 3600 / statistics.median(gaps)
    value, peak, drawdown = 1.0, 1.0, 0.0
    for r in returns:
        value *= 1 + r
        peak = max(peak, value)
        drawdown = max(drawdown, 1 - value / peak)
    since = closes[0][0]
    if model == "live":
        pnls = [
            float(_live_pnl(side, qty, a, b))
            for start_h, held_h, side, qty, a, b in LIVE_TRIPS
            if SESSION_1 + timedelta(hours=start_h + held_h) >= since
        ]
    else:
        pnls = [float(p) for m, h, p in SHADOW_TRADES if m == model and SESSION_1 + timedelta(hours=h) >= since]
    agreement = None
    if model != "live":
        pairs = [
            (mine, live)
            for mine_row, live_row in zip(TARGETS[model][first_close:], TARGETS["live"][first_close:], strict=True)
            for mine, live in zip(mine_row, live_row, strict=True)
            if mine is not None and live is not None
        ]
        agreement = sum(abs(a - b) <= 1e-9 for a, b in pairs) / len(pairs)
    return {
        "total_return": math.prod(1 + r for r in returns) - 1,
        "sharpe": statistics.mean(returns) / statistics.stdev(returns) * math.sqrt(bars_per_year),
        "max_drawdown": drawdown,
        "trades": len(pnls),
        "win_rate": sum(p > 0 for p in pnls) / len(pnls) if pnls else None,
        "realized_pnl": sum(pnls),
        "agreement": agreement,
        "marks": len(closes),
        "returns": len(returns),
        "periods_per_year": bars_per_year,
    }


def _assert_figures(got: dict[str, object], want: dict[str, float | int | None]) -> None:
    for key, value in want.items():
        assert got[key] == (value if value is None else pytest.approx(value)), key


def test_report_compares_every_model_with_figures_from_the_rows(ledger_path: Path) -> None:
    with Ledger(f"sqlite:///{ledger_path}") as ledger:
        report = build_shadow_report(ledger, None, None)
    models = report.data["models"]
    assert list(models) == ROW_ORDER
    for model in models:
        _assert_figures(models[model], _expected(model))
    assert models["live"]["agreement"] is None and models["live"]["role"] == "live"
    assert models["alpha"]["role"] == "shadow" and models["alpha"]["sessions"] == 2
    assert models["alpha"]["periods_per_year"] == pytest.approx(365 * 24)

    [section] = report.sections
    [table] = section.tables
    assert [row[0] for row in table.rows] == ROW_ORDER
    rows = {row[0]: dict(zip(table.columns, row, strict=True)) for row in table.rows}
    live_row, alpha_row = rows["live"], rows["alpha"]
    assert live_row["agreement with live"] == "—"
    assert alpha_row["agreement with live"] == f"{_expected('alpha')['agreement']:.2%}"
    assert alpha_row["marks"] == str(len(_closes())) and alpha_row["closed trades"] == "3"
    assert any("median spacing" in p and "3600 s (8760 bars a year)" in p for p in section.paragraphs)


def test_a_return_across_a_restart_is_not_counted(ledger_path: Path, tmp_path: Path) -> None:
    with Ledger(f"sqlite:///{ledger_path}") as ledger:
        alpha = build_shadow_report(ledger, None, None).data["models"]["alpha"]
    equity = [float(e) for e in EQUITY["alpha"][0] + EQUITY["alpha"][1]]
    first = len(EQUITY["alpha"][0])
    within = (equity[first - 1] / equity[0]) * (equity[-1] / equity[first]) - 1
    assert alpha["returns"] == len(equity) - 2
    assert alpha["total_return"] == pytest.approx(within)
    assert alpha["total_return"] != pytest.approx(equity[-1] / equity[0] - 1)

    # One mark in each session: no return at all, so no return figures.
    with Ledger(f"sqlite:///{tmp_path / 'two.db'}") as ledger:
        marks = [
            ModelMark(SESSION_1 + BAR, SESSION_1, "live", "live", "BTC/USDT", "sha", 0.5, Decimal(10_000)),
            ModelMark(SESSION_2 + BAR, SESSION_2, "live", "live", "BTC/USDT", "sha", 0.5, Decimal(12_000)),
        ]
        record_shadow(ledger, ShadowRecords(marks=marks))
        live = build_shadow_report(ledger, None, None).data["models"]["live"]
    assert (live["returns"], live["marks"], live["sessions"]) == (0, 2, 2)
    assert live["total_return"] is None and live["sharpe"] is None and live["max_drawdown"] is None


def test_window_selects_marks_and_trades(ledger_path: Path) -> None:
    since = SESSION_2
    with Ledger(f"sqlite:///{ledger_path}") as ledger:
        models = build_shadow_report(ledger, since, None).data["models"]
    first_close = sum(ts < since for ts, _ in _closes())
    for model in ("live", "alpha", "beta"):
        _assert_figures(models[model], _expected(model, first_close))
    assert models["beta"]["trades"] == 0 and models["beta"]["win_rate"] is None


def test_cli_writes_the_json_report(ledger_path: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "reports"
    code = report_main(
        ["--report-type", "shadows", "--ledger", str(ledger_path), "--since", "2024-05-01", "--until", "2024-05-02"]
        + ["--format", "json", "--output-dir", str(out)]
    )
    assert code == 0
    path = Path(capsys.readouterr().out.strip())
    assert path.parent.parent == out and path.parent.name.startswith("shadows-ledger-")
    report = json.loads(path.read_text())
    assert report["report_type"] == "shadows"
    assert report["meta"]["source"].startswith("ledger: sqlite:///")
    assert report["since"] == SESSION_1.isoformat() and report["until"] == (SESSION_1 + timedelta(days=1)).isoformat()
    assert list(report["models"]) == ROW_ORDER
    for model, got in report["models"].items():
        _assert_figures(got, _expected(model))

    assert report_main(["--report-type", "shadows", "--ledger", str(ledger_path), "--output-dir", str(out)]) == 0
    markdown = Path(capsys.readouterr().out.strip()).read_text()
    assert "| live | live |" in markdown and "agreement with live" in markdown


def test_cli_errors_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    empty = tmp_path / "empty.db"
    Ledger(f"sqlite:///{empty}").close()
    out = tmp_path / "reports"
    assert report_main(["--report-type", "shadows", "--ledger", str(empty), "--output-dir", str(out)]) == 1
    err = capsys.readouterr().err.strip()
    assert "no model marks in start .. now" in err and "no shadow models ran" in err and "bot.shadow_models" in err
    assert "\n" not in err
    assert not out.exists() or not any(out.iterdir())

    assert report_main(["--report-type", "shadows", "--output-dir", str(out)]) == 1
    err = capsys.readouterr().err.strip()
    assert "--report-type shadows" in err and "pass --ledger too" in err and "\n" not in err

    with Ledger(f"sqlite:///{empty}") as ledger, pytest.raises(ReportError, match="end must follow its start"):
        build_shadow_report(ledger, SESSION_2, SESSION_1)
