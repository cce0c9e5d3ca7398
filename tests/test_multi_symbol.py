"""Several symbols at once: each its own task, its own candles, decisions and orders, one account valued across them.

Paper mode against the local Binance-wire server (real ccxt), trading BTC/USDT and the cross pair ETH/BTC on
1h candles (the server aggregates its bundled 5m ETH/BTC candles, as Binance serves every interval).
"""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import pandas as pd
import pytest

from adapters.data.ohlcv import load_ohlcv
from adapters.data.sample import sample_path
from adapters.types import Side
from bot.engine.core import Engine
from bot.ledger.store import Ledger
from bot.model.policy import OnnxPolicy
from tests.support.binance_server import BinanceError, BinanceServer
from tests.support.policy_model import export_policy, fitted_spec, random_weights
from tests.test_engine import FakeClock, paper_config, run_paper

HOUR_MS = 3_600_000
START_MS = int(pd.Timestamp("2018-01-14 00:30", tz="UTC").timestamp() * 1000)
"""Inside both bundled series (ETH/BTC 5m covers 2018-01-10 .. 2018-01-30), with days of warm-up history."""
FAIL_FROM_MS = START_MS + 8 * HOUR_MS
FAIL_UNTIL_MS = START_MS + 12 * HOUR_MS
SYMBOLS = ("BTC/USDT", "ETH/BTC")


@pytest.fixture(scope="module")
def model_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    frame = load_ohlcv(sample_path("BTC/USDT-1h"))
    spec = fitted_spec(frame, train_rows=40_000, window=8)
    return export_policy(tmp_path_factory.mktemp("model"), spec, random_weights(spec, 2, seed=3), (0.0, 1.0))


def test_engine_refuses_a_quote_it_cannot_value() -> None:
    with pytest.raises(ValueError, match="cannot value BTC in USDT: trade BTC/USDT too"):
        Engine(
            venue=None,  # type: ignore[arg-type]
            orders=None,  # type: ignore[arg-type]
            policy=None,  # type: ignore[arg-type]
            risk=None,  # type: ignore[arg-type]
            costs=None,  # type: ignore[arg-type]
            settings=None,  # type: ignore[arg-type]
            symbols=["ETH/USDT", "ETH/BTC"],
        )


@pytest.mark.integration
async def test_symbols_trade_independently_and_one_failing_does_not_stop_the_other(
    binance_server: BinanceServer, tmp_path: Path, model_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = FakeClock(START_MS)
    binance_server.market_clock_ms = clock
    listed = binance_server.spec

    def spec(symbol_id: str) -> object:
        # ETH/BTC is suspended for a few hours: Binance answers -1121 for it, BTC/USDT is unaffected.
        if symbol_id == "ETHBTC" and FAIL_FROM_MS <= clock.now_ms < FAIL_UNTIL_MS:
            raise BinanceError(-1121, "Invalid symbol.")
        return listed(symbol_id)

    monkeypatch.setattr(binance_server, "spec", spec)
    policy = OnnxPolicy.load(model_path)
    overrides = ["bot.symbols=[BTC/USDT,ETH/BTC]", "bot.timeframe=1h", "bot.max_candles=80", "bot.symbol_retry_s=0.001"]
    cfg = paper_config(tmp_path, model_path, overrides)
    engine = await run_paper(binance_server, cfg, clock, policy)

    assert engine.settings.allocation == 0.5
    assert engine.quote == "USDT"
    assert engine.stats.candles >= 80  # the other symbol may finish the candle it is handling
    # The suspension failed ETH/BTC's task (an alert, a retry), not BTC/USDT's nor the engine.
    assert engine.stats.symbol_failures.get("ETH/BTC", 0) >= 1
    assert "BTC/USDT" not in engine.stats.symbol_failures
    status = await engine.commands.status()
    last_close = {s: pd.Timestamp(status["symbols"][s]["last_candle_close"]) for s in SYMBOLS}
    fail_until = pd.Timestamp(FAIL_UNTIL_MS, unit="ms", tz="UTC")
    assert last_close["BTC/USDT"] > fail_until, "BTC/USDT must trade on through ETH/BTC's failure"
    assert last_close["ETH/BTC"] > fail_until, "ETH/BTC must come back after its failure"
    assert all(status["symbols"][s]["target"] is not None for s in SYMBOLS), "both symbols decide"

    with Ledger(f"sqlite:///{tmp_path}/paper.db") as ledger:
        orders = ledger.orders()
    # The ledger row is written before an order is sent (by design), and the engine counts an order once its
    # submission returns: a symbol task cancelled at the stop (bot.max_candles) or failed by the suspension in
    # the middle of a submission leaves at most one more order per symbol in the ledger than it counted.
    assert engine.stats.orders_submitted <= len(orders) <= engine.stats.orders_submitted + len(SYMBOLS)
    assert binance_server.calls("POST", "/api/v3/order") == [], "paper mode sends no order to the exchange"
    # Which cross-pair orders happen depends on whether BTC/USDT holds BTC at that moment (ETH/BTC spends the
    # account's BTC): the deterministic per-symbol order checks are in the same-quote test below.


@pytest.mark.integration
async def test_same_quote_symbols_each_trade_their_own_half_of_the_account(
    binance_server: BinanceServer, tmp_path: Path, model_path: Path
) -> None:
    """ETH/BTC and LTC/BTC from a BTC account: each symbol its own task, candles, decisions, orders and fills."""
    clock = FakeClock(START_MS)
    binance_server.market_clock_ms = clock
    policy = OnnxPolicy.load(model_path)
    overrides = [
        "bot.symbols=[ETH/BTC,LTC/BTC]",
        "bot.timeframe=1h",
        "bot.max_candles=80",
        "bot.initial_balance=2",
        # The account is in BTC: the bot's allocation is the whole 2 BTC paper account (the default is 1000).
        "bot.capital.quote=2",
        "bot.market.min_notional=0.0001",
    ]
    engine = await run_paper(binance_server, paper_config(tmp_path, model_path, overrides), clock, policy)

    assert engine.settings.allocation == 0.5
    assert engine.quote == "BTC"
    assert engine.stats.symbol_failures == {}
    status = await engine.commands.status()
    assert all(status["symbols"][s]["target"] is not None for s in ("ETH/BTC", "LTC/BTC"))
    with Ledger(f"sqlite:///{tmp_path}/paper.db") as ledger:
        orders = ledger.orders()
        fills = ledger.fills()
    for symbol in ("ETH/BTC", "LTC/BTC"):
        assert [o for o in orders if o.symbol == symbol], f"{symbol} placed no order"
        assert [f for f in fills if f.symbol == symbol], f"{symbol} got no fill"
    assert binance_server.calls("POST", "/api/v3/order") == []
    # Allocation split: a buy spends at most half of the account (2 BTC, plus what the policy made meanwhile).
    for fill in fills:
        if fill.side is Side.BUY:
            assert fill.amount * fill.price <= Decimal("2.2") / 2, (fill.symbol, fill.amount * fill.price)
