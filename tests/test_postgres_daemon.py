"""A paper daemon on a real PostgreSQL ledger: it trades, restarts on the same database and reconciles.

The server is Debian's postgresql started by tests/support/postgres.py; the daemon is given the URL a user
writes (``bot.ledger_url=postgresql://user@host:port/db``, mapped to the psycopg 3 driver).
"""

from __future__ import annotations

import asyncio
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from adapters.ccxt.adapter import CcxtAdapter
from adapters.data.ohlcv import load_ohlcv
from adapters.data.sample import sample_path
from adapters.types import utc_from_ms
from bot.app_config import BotAppConfig
from bot.config import load_config
from bot.daemon import run_daemon
from bot.ledger.store import Ledger
from bot.ledger.urls import is_postgresql, redacted, sqlalchemy_url
from bot.model.policy import OnnxPolicy
from tests.support.binance_server import BinanceServer, daemon_ccxt_config
from tests.support.policy_model import export_policy, fitted_spec, random_weights
from tests.support.postgres import PostgresServer

T0 = 1_704_067_200_000  # 2024-01-01 00:00 UTC, inside the bundled candles the local server serves


class FakeClock:
    """Market time that moves only when the daemon sleeps (the feed's poll waits)."""

    def __init__(self, now_ms: int) -> None:
        self.now_ms = now_ms

    def __call__(self) -> int:
        return self.now_ms

    def now(self) -> datetime:
        return utc_from_ms(self.now_ms)

    async def sleep(self, seconds: float) -> None:
        self.now_ms += int(seconds * 1000)
        await asyncio.sleep(0)


@pytest.fixture(scope="module")
def model_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    frame = load_ohlcv(sample_path())
    spec = fitted_spec(frame, train_rows=40_000, window=16)
    return export_policy(tmp_path_factory.mktemp("pg-model"), spec, random_weights(spec, 2, seed=0), (0.0, 1.0))


def _config(tmp_path: Path, model_path: Path, ledger_url: str, candles: int, *extra: str) -> BotAppConfig:
    return load_config(
        BotAppConfig,
        [
            "bot.mode=paper",
            f"bot.model_path={model_path}",
            f"bot.ledger_url={ledger_url}",
            f"bot.ledger_dir={tmp_path / 'unused'}",
            f"output_dir={tmp_path / 'outputs'}",
            "bot.risk.max_position_notional=100000",
            "bot.risk.max_total_notional=100000",
            "bot.risk.max_order_notional=100000",
            "bot.risk.max_drawdown=1",
            "bot.risk.max_daily_loss=1",
            "bot.risk.reduce_at=1",
            "bot.schedule.equity_snapshot=",
            "bot.schedule.reconciliation=",
            f"bot.max_candles={candles}",
            *extra,
        ],
    )


async def _run_paper(server: BinanceServer, cfg: BotAppConfig, clock: FakeClock, policy: OnnxPolicy) -> Any:
    async with CcxtAdapter(
        daemon_ccxt_config(server, timeout_ms=1000), None, clock_ms=clock, sleep=clock.sleep
    ) as feed:
        return await run_daemon(cfg, policy, feed, clock=clock.now, install_signals=False)


def test_postgres_urls_as_users_write_them_get_the_psycopg_driver() -> None:
    assert sqlalchemy_url("postgresql://u:pw@db:5432/ledger") == "postgresql+psycopg://u:pw@db:5432/ledger"
    assert sqlalchemy_url("postgres://u@db/ledger") == "postgresql+psycopg://u@db/ledger"
    assert sqlalchemy_url("postgresql+psycopg2://u@db/x") == "postgresql+psycopg2://u@db/x"  # an explicit choice
    assert sqlalchemy_url("sqlite:///state/paper.db") == "sqlite:///state/paper.db"
    assert is_postgresql("postgresql://u@db/x") and not is_postgresql("sqlite://")
    assert "pw" not in redacted("postgresql://u:pw@db/x")


@pytest.mark.integration
async def test_a_paper_daemon_trades_on_postgresql_and_restarts_consistently(
    postgres_server: PostgresServer, binance_server: BinanceServer, tmp_path: Path, model_path: Path
) -> None:
    database = postgres_server.create_database()
    url = postgres_server.url(database, driver="postgresql")  # the plain URL a user writes
    try:
        policy = OnnxPolicy.load(model_path)
        clock = FakeClock(T0 + 30 * 60_000)
        binance_server.market_clock_ms = clock
        engine = await _run_paper(binance_server, _config(tmp_path, model_path, url, 40), clock, policy)
        assert engine.stats.candles == 40 and engine.stats.orders_submitted > 2
        assert not (tmp_path / "unused").exists(), "no SQLite ledger may be written when a URL is given"
        with Ledger(url) as ledger:
            assert ledger.engine.dialect.name == "postgresql"
            orders, fills = ledger.orders(), ledger.fills()
            assert len(orders) == engine.stats.orders_submitted
            assert fills and all(f.requested_price is not None for f in fills)
            first_ids = {o.client_order_id for o in orders}
            first_trades = {f.trade_id for f in fills}
        # The rows really are in PostgreSQL, with amounts stored exactly (text, never float).
        raw = sa.create_engine(sqlalchemy_url(url))
        with raw.connect() as conn:
            stored = conn.execute(sa.text("SELECT amount FROM orders")).scalars().all()
        raw.dispose()
        assert sorted(Decimal(a) for a in stored) == sorted(o.amount for o in orders)

        # Restart on the same database: the paper account is rebuilt from the fills, reconciliation passes and no
        # earlier order is sent again.
        engine2 = await _run_paper(binance_server, _config(tmp_path, model_path, url, 20), clock, policy)
        assert engine2.stats.candles == 20
        with Ledger(url) as ledger:
            again = [o for o in ledger.orders() if o.client_order_id in first_ids]
            assert len(again) == len(first_ids) and all(o.status.is_final for o in again)
            # The account's 10,000 USDT: the bot's allocation (bot.capital) plus what it holds outside the bot.
            state = ledger.state("book.")
            assert Decimal(state["book.outside.USDT"]) + Decimal(state["book.capital.USDT"]) == 10_000
            flows = ledger.currency_flows()
            assert {f.trade_id for f in ledger.fills()} >= first_trades
        balances = await engine2.venue.fetch_balances()
        assert balances["USDT"].total == Decimal(10_000) + flows["USDT"]
    finally:
        postgres_server.drop_database(database)
