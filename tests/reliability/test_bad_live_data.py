"""Bad live data through the running engine: refused, reported once per change, never traded on, halted if it persists.

A paper daemon's parts (the real Engine, PaperVenue, OrderManager, SQLite ledger, Book, RiskManager with the shipped
default limits) trade real bundled candles from a replay feed, into which the test injects what a live feed can
deliver: a NaN and a zero price, a duplicate and an out-of-order candle, a 50 % one-candle spike, and at the end a
level that stays 100 % away (a broken feed), which must halt trading. The feed wrapper is the test's input, not
a stand-in for a component under test.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from datetime import timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pandas as pd
from structlog.testing import capture_logs

from adapters.candle_guard import CandleGuardConfig
from adapters.data.ohlcv import load_ohlcv
from adapters.data.sample import sample_path
from adapters.paper.config import BTC_USDT
from adapters.paper.replay import ReplayConfig, ReplayFeed
from adapters.paper.venue import PaperVenue
from adapters.types import Candle
from bot.app_config import BotAppConfig
from bot.clock import MarketClock
from bot.config import load_config
from bot.engine.core import Engine
from bot.engine.decision import TradingSettings
from bot.events import AlertEvent, Event
from bot.ledger.store import Ledger
from bot.model.policy import OnnxPolicy
from bot.orders.book import Book, CapitalConfig
from bot.orders.manager import OrderManager
from bot.risk import RiskManager, RiskState
from bot.sinks.bus import EventBus
from bot.wiring import paper_account
from monitoring.metrics import BotMetrics
from tests.support.policy_model import export_policy, fitted_spec, random_weights

START = pd.Timestamp("2024-01-01", tz="UTC")
GOOD = 400
HOUR = timedelta(hours=1)


class InjectingFeed:
    """The replay's candles, with bad ones inserted after given good candles (by their index in the window)."""

    def __init__(self, replay: ReplayFeed, inject: dict[int, list[str]], tail: int, after_resume: int = 0) -> None:
        self.replay = replay
        self.inject = inject
        self.tail = tail
        self.after_resume = after_resume
        self.resume: Callable[[], Awaitable[Mapping[str, Any]]] | None = None
        """The engine's `resume` command: with `after_resume`, a human looks after the tail and resumes."""
        self.resumed: Mapping[str, Any] | None = None
        self.sent: list[tuple[str, Candle]] = []

    async def fetch_ohlcv(self, symbol: str, timeframe: str, since_ms: int | None = None, limit: int | None = None):  # type: ignore[no-untyped-def]
        return await self.replay.fetch_ohlcv(symbol, timeframe, since_ms, limit)

    async def candles(self, symbol: str, timeframe: str) -> AsyncIterator[Candle]:
        played: list[Candle] = []
        async for candle in self.replay.candles(symbol, timeframe):
            played.append(candle)
            self.sent.append(("good", candle))
            yield candle
            for kind in self.inject.get(len(played) - 1, []):
                bad = _bad(kind, played)
                self.sent.append((kind, bad))
                yield bad
        last = played[-1]
        for k in range(self.tail + self.after_resume):  # every further candle is twice the last good close
            if k == self.tail and self.resume is not None:
                self.resumed = await self.resume()  # the level is real after all: an operator resumes
            level = last.close * 2
            broken = dataclasses.replace(
                last,
                open_time=last.open_time + (k + 1) * HOUR,
                open=level,
                high=level * 1.01,
                low=level * 0.99,
                close=level,
            )
            self.sent.append(("broken" if k < self.tail else "new_level", broken))
            yield broken


def _bad(kind: str, played: list[Candle]) -> Candle:
    last = played[-1]
    nxt = last.open_time + HOUR
    if kind == "nan":
        return dataclasses.replace(last, open_time=nxt, close=float("nan"))
    if kind == "zero":
        return dataclasses.replace(last, open_time=nxt, low=0.0)
    if kind == "duplicate":
        return last
    if kind == "out_of_order":
        return played[-5]
    if kind == "spike":
        up = last.close * 1.5
        return dataclasses.replace(last, open_time=nxt, open=up, high=up * 1.01, low=up * 0.99, close=up)
    raise AssertionError(kind)


@dataclasses.dataclass
class Run:
    cfg: BotAppConfig
    feed: InjectingFeed
    venue: PaperVenue
    engine: Engine
    risk: RiskManager
    metrics: BotMetrics
    alerts: list[AlertEvent]
    logs: list[dict[str, Any]]
    fills: list[Any]


def _run(tmp_path: Path, after_resume: int = 0) -> Run:
    """Trade the injected feed on a paper daemon's parts with the shipped defaults; with `after_resume`, an
    operator resumes after the broken tail and that many candles at the new level follow."""
    frame = load_ohlcv(sample_path("BTC/USDT-1h"))
    spec = fitted_spec(frame, train_rows=40_000, window=16)
    policy = OnnxPolicy.load(export_policy(tmp_path, spec, random_weights(spec, 2, seed=0), (0.0, 1.0)))
    cfg = load_config(BotAppConfig, [])  # the shipped defaults: risk limits and candle guard as a user gets them
    history = frame[frame.index < START + GOOD * HOUR]
    replay = ReplayFeed(history, symbol="BTC/USDT", timeframe="1h", config=ReplayConfig(start=START.to_pydatetime()))
    inject = {50: ["nan"], 90: ["zero", "duplicate"], 140: ["out_of_order"], 200: ["spike"]}
    feed = InjectingFeed(replay, inject, tail=cfg.bot.candle_guard.halt_after + 2, after_resume=after_resume)
    settings = TradingSettings()
    venue = PaperVenue(
        paper_account(BTC_USDT, Decimal(10_000), cfg.costs, settings), feed=feed, candle_guard=cfg.bot.candle_guard
    )
    clock = MarketClock(START.to_pydatetime(), HOUR)
    alerts: list[AlertEvent] = []

    class Alerts:
        def publish(self, event: Event) -> None:
            if isinstance(event, AlertEvent):
                alerts.append(event)

    bus = EventBus([Alerts()])
    risk = RiskManager(cfg.bot.risk)
    metrics = BotMetrics(bot_id="bot", mode="paper")
    with Ledger(f"sqlite:///{tmp_path}/paper.db") as ledger:
        orders = OrderManager(
            ledger, venue, bot_id="bot", book=Book(CapitalConfig(quote=Decimal(10_000)), "USDT"), clock=clock
        )
        engine = Engine(
            venue=venue,
            orders=orders,
            policy=policy,
            risk=risk,
            costs=cfg.costs,
            settings=settings,
            symbols=["BTC/USDT"],
            bus=bus,
            clock=clock,
            on_candle=clock.follow,
            candle_guard=cfg.bot.candle_guard,
            metrics=metrics,
            on_reanchor=venue.reanchor_candle_guards,  # as bot.wiring hands it over in paper mode
        )
        engine.timeout_check_s = 0
        feed.resume = engine.commands.resume
        with capture_logs() as logs:
            asyncio.run(engine.run())
        fills = ledger.fills()
    return Run(cfg, feed, venue, engine, risk, metrics, alerts, logs, fills)


def test_bad_candles_are_refused_reported_once_and_never_traded_on_and_a_broken_feed_halts(tmp_path: Path) -> None:
    run = _run(tmp_path)
    cfg, feed, engine, risk, metrics, alerts, logs, fills = (
        run.cfg,
        run.feed,
        run.engine,
        run.risk,
        run.metrics,
        run.alerts,
        run.logs,
        run.fills,
    )

    assert isinstance(cfg.bot.candle_guard, CandleGuardConfig) and cfg.bot.candle_guard.max_jump == 0.25
    kinds = [kind for kind, _ in feed.sent]
    # Every bad candle was refused, and only the good ones reached the features, the policy and the marks.
    assert engine.stats.candles == kinds.count("good") == GOOD
    assert engine.stats.candles_refused == {
        "invalid": 2,
        "duplicate": 1,
        "out_of_order": 1,
        "spike": 1 + kinds.count("broken"),
    }
    # Prometheus counts every refusal, by problem (the dashboard's panel reads the rate of this counter).
    for problem, count in engine.stats.candles_refused.items():
        labels = {"bot_id": "bot", "mode": "paper", "symbol": "BTC/USDT", "problem": problem}
        assert metrics.registry.get_sample_value("aitrading_candles_refused_total", labels) == count, problem
    # Nothing was filled at a bad candle: every fill is at the open of the good candle of its time (plus slippage).
    assert len(fills) > 5, "the default limits let the fixture policy trade"
    opens = {c.open_time: c.open for kind, c in feed.sent if kind == "good"}
    for fill in fills:
        assert abs(float(fill.price) / opens[fill.timestamp] - 1) < 0.01, fill
    # Said once per change of problem (a log line and an alert each), not once per candle; then halted.
    refused_logs = [e for e in logs if e["event"] == "candle_refused"]
    refused_alerts = [a for a in alerts if a.code == "candle_refused"]
    assert [e["problem"] for e in refused_logs] == ["invalid", "invalid", "duplicate", "out_of_order", "spike", "spike"]
    assert len(refused_alerts) == len(refused_logs)
    assert [a.code for a in alerts if a.code == "feed_halted"] == ["feed_halted"]
    assert risk.state is RiskState.HALTED and "refused in a row" in risk.reason


def test_resume_after_a_real_move_beyond_max_jump_trades_the_new_level(tmp_path: Path) -> None:
    """A move the guard halted on can be real (BTC/USDT's high of 2019-04-02 05:00 was 27.8 % over the previous
    close): after the operator's `resume` the next valid candle is the new reference, for the engine's guard and
    the paper venue's, instead of every later candle being refused for ever."""
    run = _run(tmp_path, after_resume=4)
    halt_after = run.cfg.bot.candle_guard.halt_after
    assert [a.code for a in run.alerts if a.code == "feed_halted"] == ["feed_halted"]
    assert run.feed.resumed is not None and run.feed.resumed["previous_risk_state"] == "halted"
    assert run.feed.resumed["candle_guard_reanchored"] == ["BTC/USDT"]
    kinds = [kind for kind, _ in run.feed.sent]
    assert kinds.count("broken") == halt_after + 2 and kinds.count("new_level") == 4
    # Every candle at the new level after the resume was accepted, and trading is active again.
    assert run.engine.stats.candles == GOOD + 4
    assert run.engine.stats.candles_refused["spike"] == 1 + halt_after + 2
    assert run.risk.state is RiskState.ACTIVE
    assert [e["candle_guard_reanchored"] for e in run.logs if e["event"] == "engine_resumed"] == [["BTC/USDT"]]
    # The paper venue's guard took the new level too: its book was marked at the last new-level close, so orders
    # fill there again (before the resume it marks nothing beyond the last good candle).
    level = run.feed.sent[-1][1].close
    assert run.venue.book.last_price("BTC/USDT") == Decimal(repr(level))
