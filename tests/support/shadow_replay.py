"""The one engine over a replay feed and the paper venue, with shadow models beside the live policy.

Used by tests/test_shadows.py and tests/benchmarks/shadow_latency.py: config/bot/default.yaml's limits and capital,
a real SQLite ledger file, the candles of `frame` in [start, end).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from pathlib import Path

import pandas as pd

from adapters.paper.config import PaperConfig
from adapters.paper.replay import ReplayConfig, ReplayFeed
from adapters.paper.venue import PaperVenue
from adapters.types import Candle
from bot.app_config import BotAppConfig
from bot.config import load_config
from bot.engine.core import Engine
from bot.events import Event
from bot.ledger.store import Ledger
from bot.model.policy import OnnxPolicy
from bot.orders.book import Book
from bot.orders.manager import OrderManager
from bot.risk import RiskManager
from bot.shadow.pool import ShadowPool
from bot.sinks.bus import EventBus
from bot.wiring import shadow_pool, trading_settings


class Collect:
    """An event sink that keeps every event."""

    def __init__(self) -> None:
        self.events: list[Event] = []

    def publish(self, event: Event) -> None:
        self.events.append(event)


class LatencyRecorder:
    """The engine's direct metrics, keeping every decision latency (seconds) instead of a histogram."""

    def __init__(self) -> None:
        self.samples: list[float] = []
        self.decision_latency = self

    def observe(self, seconds: float) -> None:
        self.samples.append(seconds)

    def set_staleness(self, symbol: str, seconds: float) -> None:
        """Ignored."""

    def set_position(self, symbol: str, amount: object) -> None:
        """Ignored."""

    def set_risk_state(self, state: str) -> None:
        """Ignored."""

    def candle_refused(self, symbol: str, problem: str) -> None:
        """Ignored."""


@dataclass
class Run:
    engine: Engine
    pool: ShadowPool
    events: list[Event]
    ledger_url: str
    latencies_s: list[float] = field(default_factory=list)
    """Every decision's latency, candle received to decided (the engine's decision_latency)."""


async def replay(
    tmp_path: Path,
    frame: pd.DataFrame,
    live: Path,
    shadows: list[Path],
    *,
    start: datetime,
    end: datetime,
    overrides: tuple[str, ...] = (),
    on_candle: Callable[[Engine, Candle], None] | None = None,
    paced: bool = False,
) -> Run:
    """Run the engine over [`start`, `end`) of `frame` with `shadows` (named by file stem) beside the live model.

    `paced`: each candle waits until the shadows handled the one before, as the hour between two live candles
    lets them (without it, the replay hands candles back to back and the shadows catch up at the end)."""
    cfg = load_config(BotAppConfig, [f"bot.model_path={live}", *overrides])
    policy = OnnxPolicy.load(live)
    window = frame[frame.index < pd.Timestamp(end)]
    feed = ReplayFeed(window, symbol="BTC/USDT", timeframe="1h", config=ReplayConfig(start=start))
    venue = PaperVenue(PaperConfig(initial_balances={"USDT": Decimal("10000")}, costs=cfg.costs), feed=feed)
    now = [start]
    url = f"sqlite:///{tmp_path}/shadows.db"
    sink = Collect()
    bus = EventBus([sink])
    recorder = LatencyRecorder()
    ledger = Ledger(url)
    try:
        book = Book.from_ledger(ledger, cfg.bot.capital, "USDT")
        risk = RiskManager(cfg.bot.risk, ledger)
        orders = OrderManager(
            ledger,
            venue,
            bot_id="bt",
            book=book,
            clock=lambda: now[0],
            emit=bus.publish,
            # As bot.wiring does: the risk manager learns of each closed trade (cooldowns, the stop-loss guard).
            on_trade_closed=lambda t: risk.on_trade_closed(t.symbol, t.realized_pnl, t.closed_at),
        )
        loaded = [(p.stem, OnnxPolicy.load(p)) for p in shadows]
        markets = {"BTC/USDT": venue.market("BTC/USDT")}
        pool = shadow_pool(cfg, loaded, markets, ledger=ledger, bus=bus, clock=lambda: now[0], metrics=None)
        engine: Engine

        def follow(candle: Candle) -> None:
            now[0] = candle.open_time + pd.Timedelta(hours=1).to_pytimedelta()
            if on_candle is not None:
                on_candle(engine, candle)

        engine = Engine(
            venue=venue,
            orders=orders,
            policy=policy,
            risk=risk,
            costs=cfg.costs,
            settings=trading_settings(cfg),
            symbols=["BTC/USDT"],
            bus=bus,
            clock=lambda: now[0],
            on_candle=follow,
            metrics=recorder,  # type: ignore[arg-type]  # the engine's direct metrics, as samples
            shadows=pool,
            promote_position=cfg.bot.promote_position,
        )
        engine.timeout_check_s = 0  # replayed time: no wall-clock timeout task
        if paced:
            candles = venue.candles

            async def paced_candles(symbol: str, timeframe: str) -> AsyncIterator[Candle]:
                async for candle in candles(symbol, timeframe):
                    await pool.join()
                    yield candle

            venue.candles = paced_candles  # type: ignore[method-assign]
        pool.start()
        await engine.run()
        await pool.aclose()
    finally:
        ledger.close()
    return Run(engine, pool, sink.events, url, recorder.samples)
