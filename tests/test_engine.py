"""The daemon's engine: the backtest reproduces training's evaluation; paper mode trades against a local exchange."""

from __future__ import annotations

import asyncio
import io
import json
from collections import Counter
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from structlog.testing import capture_logs

from adapters.ccxt.adapter import CcxtAdapter
from adapters.costs import CostModel
from adapters.data.ohlcv import load_ohlcv
from adapters.data.sample import sample_path
from adapters.paper.config import BTC_USDT
from adapters.types import OrderStatus, utc_from_ms
from bot.app_config import BotAppConfig
from bot.backtest.mode import run_backtest_mode
from bot.backtest.run import BacktestResult, run_backtest
from bot.config import load_config
from bot.daemon import run_daemon
from bot.engine.decision import PositionTracker, TradingSettings
from bot.engine.scheduler import build_scheduler, cron_trigger
from bot.errors import ConfigError
from bot.ledger.store import Ledger
from bot.model.features import position_state
from bot.model.policy import OnnxPolicy
from bot.risk import RiskConfig, RiskManager
from tests.support.binance_server import BinanceServer, daemon_ccxt_config
from tests.support.policy_model import MlpWeights, export_policy, fitted_spec, random_weights

START = pd.Timestamp("2024-01-01", tz="UTC")
END = pd.Timestamp("2024-04-01", tz="UTC")
ACTIONS = (0.0, 1.0)
BIG = Decimal("1e12")
NO_LIMITS = RiskConfig(
    max_position_notional=BIG,
    max_total_notional=BIG,
    max_order_notional=BIG,
    max_orders_per_minute=1000,
    max_daily_loss=Decimal(1),
    max_drawdown=Decimal(1),
    reduce_at=Decimal(1),
)
"""Risk limits that never bind: training's evaluation has none, so equal numbers need none here."""


@pytest.fixture(scope="module")
def frame() -> pd.DataFrame:
    return load_ohlcv(sample_path("BTC/USDT-1h"))


@pytest.fixture(scope="module")
def model(frame: pd.DataFrame, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, MlpWeights]:
    spec = fitted_spec(frame, train_rows=40_000, window=16)
    weights = random_weights(spec, len(ACTIONS), seed=0)
    return export_policy(tmp_path_factory.mktemp("model"), spec, weights, ACTIONS), weights


def training_evaluation(frame: pd.DataFrame, policy: OnnxPolicy, weights: MlpWeights, costs: CostModel) -> Any:
    """Training's own evaluation (training.evaluation.evaluate_split) of the same policy over the same window.

    The numpy twin of the ONNX graph acts on the env's normalised observations, as the torch model does there.
    """
    from adapters.data.splits import Segment
    from training.env import EnvConfig
    from training.evaluation import evaluate_split, frame_with_warmup

    begin, stop = int(frame.index.searchsorted(START)), int(frame.index.searchsorted(END))
    spec = policy.feature_spec

    def act(batch: np.ndarray) -> np.ndarray:
        return np.array([weights.act_normalised(obs) for obs in batch])

    return evaluate_split(
        act,
        frame_with_warmup(frame, Segment(begin, stop), spec),
        spec,
        EnvConfig(window=spec.window, actions=ACTIONS),
        costs,
        "1h",
    )


def test_backtest_reproduces_training_evaluation(frame: pd.DataFrame, model: tuple[Path, MlpWeights]) -> None:
    path, weights = model
    policy = OnnxPolicy.load(path)
    costs = CostModel()
    result = run_backtest(
        frame,
        symbol="BTC/USDT",
        policy=policy,
        market=BTC_USDT,
        risk=RiskManager(NO_LIMITS),
        costs=costs,
        settings=TradingSettings(),
        initial_quote=Decimal(10_000),
        start=START,
        end=END,
    )
    training = training_evaluation(frame, policy, weights, costs)
    expected = training.reports["policy"]

    # The same window and the same decisions at every bar (the last one never fills), so the same trades.
    assert result.frame.index.equals(training.frame.index)
    assert np.array_equal(result.targets[:-1], training.targets[:-1])
    assert expected.trade_count > 50, "the fixture policy should trade"
    assert result.report.trade_count == expected.trade_count
    theirs = training.trades
    assert [t.entry_time for t in result.trades] == list(theirs["entry_time"])
    assert [t.exit_time for t in result.trades] == list(theirs["exit_time"])
    assert [t.bars for t in result.trades] == list(theirs["bars"])
    # Tolerance: the venue buys amount = cash / (open·(1+slip)·(1+fee)) rounded DOWN to the 0.00001 BTC step
    # and rounds prices to the 0.01 tick, whereas the simulation charges (fee + slip) × Δposition × equity with
    # fractional positions. Per fill that differs by at most ~(slip·fee + step·price/equity) ≈ 5e-5 of equity;
    # over these ~240 fills the measured gap is ~0.02 pp, well inside 0.05 pp.
    assert result.report.total_return == pytest.approx(expected.total_return, abs=5e-4)
    assert result.report.final_equity == pytest.approx(expected.final_equity, rel=5e-4)
    assert result.report.max_drawdown == pytest.approx(expected.max_drawdown, abs=5e-4)
    assert result.report.sharpe == pytest.approx(expected.sharpe, rel=0.01)
    assert result.report.sortino == pytest.approx(expected.sortino, rel=0.01)
    assert result.report.win_rate == expected.win_rate
    assert result.report.exposure == expected.exposure
    assert result.report.profit_factor == pytest.approx(expected.profit_factor, rel=0.01)
    assert result.report.total_costs == pytest.approx(expected.total_costs, rel=0.005)
    np.testing.assert_allclose([t.entry_price for t in result.trades], theirs["entry_price"], rtol=1e-6)
    np.testing.assert_allclose([t.pnl for t in result.trades], theirs["pnl"], atol=2.0)


def backtest_with_default_limits(frame: pd.DataFrame, policy: OnnxPolicy) -> BacktestResult:
    """`run_backtest` of `policy` over [START, END) with the shipped risk limits and settings, 10,000 USDT."""
    return run_backtest(
        frame,
        symbol="BTC/USDT",
        policy=policy,
        market=BTC_USDT,
        risk=RiskManager(RiskConfig()),
        costs=CostModel(),
        settings=TradingSettings(),
        initial_quote=Decimal(10_000),
        start=START,
        end=END,
    )


class OffByOneUlpInBatches(OnnxPolicy):
    """The same ONNX policy, its batched targets one ulp off: what a kernel summing in another order could give."""

    def target_positions(self, observations: np.ndarray) -> np.ndarray:
        return np.nextafter(super().target_positions(observations), np.inf)


def test_flat_bars_decided_ahead_are_the_bar_by_bar_decisions(
    frame: pd.DataFrame, model: tuple[Path, MlpWeights]
) -> None:
    """Flat bars take the policy's target from batches computed ahead; a run that decides every bar by itself (the
    batches refused, being one ulp off) trades the same, with the shipped default risk limits."""
    policy = OnnxPolicy.load(model[0])
    offset = OffByOneUlpInBatches(policy.session, policy.card, policy.onnx_path, policy.feature_spec)
    ahead = backtest_with_default_limits(frame, policy)
    with capture_logs() as logs:
        by_bar = backtest_with_default_limits(frame, offset)
    assert [e["event"] for e in logs].count("flat_targets_off") == 1
    assert by_bar.decisions_ahead == 0
    decided = int(np.isfinite(ahead.targets).sum())
    assert decided * 0.3 < ahead.decisions_ahead < decided, "some bars flat, some in a position"
    assert len(ahead.orders) > 20
    assert np.array_equal(ahead.targets, by_bar.targets, equal_nan=True)
    assert np.array_equal(ahead.equity, by_bar.equity)
    assert [(o.side, o.amount, o.created_at) for o in ahead.orders] == [
        (o.side, o.amount, o.created_at) for o in by_bar.orders
    ]


def test_default_limits_split_an_order_and_still_reach_the_target(
    frame: pd.DataFrame, model: tuple[Path, MlpWeights]
) -> None:
    """With the shipped limits an order is at most 500 USDT and a position at most 1,000: a move from flat to long or
    back takes two orders, and the rebalance band must not stop it halfway (it left 5% of equity held when the
    policy said flat, and half the position when it said long)."""
    result = backtest_with_default_limits(frame, OnnxPolicy.load(model[0]))
    limits = RiskConfig()
    # Sized at the decision's close, filled at the next open: within the open's move and the slippage of 500.
    notional = [float(o.amount * o.average_price) for o in result.orders if o.average_price]
    assert max(notional) < 1.03 * float(limits.max_order_notional)
    assert sum(n > 0.97 * float(limits.max_order_notional) for n in notional) > 50, "orders were split"
    targets, held = result.targets, result.positions
    # Three closes with the same target: two orders have filled, at the opens of the second and third bar after.
    for target in (0.0, 1.0):
        settled = (targets[:-3] == target) & (targets[1:-2] == target) & (targets[2:-1] == target)
        assert settled.sum() > 300
        if target == 0.0:
            assert held[3:][settled].max() < 1e-3, "at most the dust below the lot step and minimum order"
        else:
            cap = float(limits.max_position_notional) / 10_000
            assert np.percentile(held[3:][settled], 5) > 0.85 * cap


def test_backtest_with_ledger_records_orders_before_fills(frame: pd.DataFrame, model: tuple[Path, MlpWeights]) -> None:
    policy = OnnxPolicy.load(model[0])
    with Ledger("sqlite://") as ledger:
        result = run_backtest(
            frame,
            symbol="BTC/USDT",
            policy=policy,
            market=BTC_USDT,
            risk=RiskManager(NO_LIMITS),
            costs=CostModel(),
            settings=TradingSettings(),
            initial_quote=Decimal(10_000),
            start=START,
            end=START + pd.Timedelta(days=14),
            ledger=ledger,
        )
        orders = ledger.orders()
        assert len(orders) == len(result.orders) > 0
        assert all(ledger.order_model_sha(o.client_order_id) == policy.sha256 for o in orders)
        assert {o.status for o in orders} <= {OrderStatus.FILLED, OrderStatus.OPEN}
        assert len(ledger.fills()) == len(result.fills)
        flows = ledger.currency_flows()
    # The ledger's fills explain the paper account: cash plus holdings at the last close is the final equity.
    last_close = float(result.frame["close"].iloc[-1])
    explained = float(Decimal(10_000) + flows["USDT"]) + float(flows.get("BTC", Decimal(0))) * last_close
    assert explained == pytest.approx(float(result.equity[-1]), abs=1e-6)


def test_position_tracker_encodes_state_like_the_env() -> None:
    tracker = PositionTracker()
    assert tracker.update(0.0, 10_000.0) == position_state(0.0, 0.0, 0)
    # Entry filled at this bar's open: one bar held, PnL against the equity before the entry.
    assert tracker.update(0.99, 9_980.0) == pytest.approx(position_state(0.99, (9_980 - 10_000) / 9_980, 1))
    assert tracker.update(0.99, 10_100.0) == pytest.approx(position_state(0.99, 100 / 10_100, 2))
    assert tracker.update(0.0, 10_090.0) == position_state(0.0, 0.0, 0)


def test_scheduler_rejects_a_bad_cron_string_and_runs_jobs() -> None:
    with pytest.raises(ConfigError, match=r"bot.schedule.equity_snapshot: invalid cron expression '61 \* \* \* \*'"):
        build_scheduler({"equity_snapshot": ("61 * * * *", _noop)})
    trigger = cron_trigger("*/15 * * * *", "x")
    after = trigger.get_next_fire_time(None, datetime(2025, 1, 1, 0, 1, tzinfo=UTC))
    assert after == datetime(2025, 1, 1, 0, 15, tzinfo=UTC)
    seconds = cron_trigger("*/20 * * * * *", "x")  # six fields: seconds first
    assert seconds.get_next_fire_time(None, datetime(2025, 1, 1, 0, 1, 1, tzinfo=UTC)) == datetime(
        2025, 1, 1, 0, 1, 20, tzinfo=UTC
    )
    with pytest.raises(ConfigError, match=r"x: invalid cron expression '\* \* \*'"):
        cron_trigger("* * *", "x")
    calls: list[str] = []

    async def failing() -> None:
        calls.append("failing")
        raise RuntimeError("boom")

    scheduler, stats = build_scheduler({"reconciliation": ("*/5 * * * *", failing), "off": ("", _noop)})
    assert [job.id for job in scheduler.get_jobs()] == ["reconciliation"]
    asyncio.run(scheduler.get_job("reconciliation").func())  # a failing job is counted, not raised
    assert calls == ["failing"] and stats.failures == {"reconciliation": 1}


async def _noop() -> None:
    return None


# --------------------------------------------------------------------------------------------- paper mode

HOUR_MS = 3_600_000
T0 = 1_704_067_200_000  # 2024-01-01 00:00 UTC, inside the bundled candles the local server serves


class FakeClock:
    """Market time that moves only when the code under test sleeps (the feed's poll waits)."""

    def __init__(self, now_ms: int) -> None:
        self.now_ms = now_ms

    def __call__(self) -> int:
        return self.now_ms

    def now(self) -> datetime:
        return utc_from_ms(self.now_ms)

    async def sleep(self, seconds: float) -> None:
        self.now_ms += int(seconds * 1000)
        await asyncio.sleep(0)


def paper_config(tmp_path: Path, model_path: Path, overrides: list[str]) -> BotAppConfig:
    return load_config(
        BotAppConfig,
        [
            "bot.mode=paper",
            f"bot.model_path={model_path}",
            f"bot.ledger_dir={tmp_path}",
            # The risk limits and the capital are config/bot/default.yaml's, as a user gets them.
            "bot.schedule.equity_snapshot=",
            "bot.schedule.reconciliation=",
            *overrides,
        ],
    )


async def run_paper(server: BinanceServer, cfg: BotAppConfig, clock: FakeClock, policy: OnnxPolicy) -> Any:
    ccxt_config = daemon_ccxt_config(server, timeout_ms=1000)
    async with CcxtAdapter(ccxt_config, None, clock_ms=clock, sleep=clock.sleep) as feed:
        return await run_daemon(cfg, policy, feed, clock=clock.now, install_signals=False)


@pytest.mark.integration
async def test_paper_mode_trades_against_the_local_exchange_and_restarts_consistently(
    binance_server: BinanceServer,
    tmp_path: Path,
    model: tuple[Path, MlpWeights],
) -> None:
    path = model[0]
    policy = OnnxPolicy.load(path)
    clock = FakeClock(T0 + 30 * 60_000)
    binance_server.market_clock_ms = clock
    cfg = paper_config(tmp_path, path, ["bot.max_candles=60"])
    engine = await run_paper(binance_server, cfg, clock, policy)
    assert engine.stats.candles == 60
    assert engine.stats.orders_submitted > 3
    # Paper mode never sends an order to the exchange: only public market data is used.
    assert binance_server.calls("POST", "/api/v3/order") == []
    with Ledger(f"sqlite:///{tmp_path}/paper.db") as ledger:
        orders = ledger.orders()
        fills = ledger.fills()
        assert len(orders) == engine.stats.orders_submitted
        assert fills and all(f.requested_price is not None for f in fills)
        first_trade_ids = {f.trade_id for f in fills}
        first_ids = {o.client_order_id for o in orders}
        flows = ledger.currency_flows()
    # Restart on the same ledger (a kill would leave at most a resting order, closed at restart): the paper account
    # is rebuilt from the fills, reconciliation passes, and no earlier order is sent again.
    engine2 = await run_paper(binance_server, paper_config(tmp_path, path, ["bot.max_candles=20"]), clock, policy)
    assert engine2.stats.candles == 20 and engine2.stats.orders_submitted >= 2
    with Ledger(f"sqlite:///{tmp_path}/paper.db") as ledger:
        again = [o for o in ledger.orders() if o.client_order_id in first_ids]
        assert len(again) == len(first_ids)
        assert all(o.status.is_final for o in again)
        # The bot trades its 1000 USDT of bot.capital; the other 9000 of the paper account are not its own.
        assert ledger.get_state("book.outside.USDT") == "9000"
        new_fills = [f for f in ledger.fills() if f.trade_id not in first_trade_ids]
    assert new_fills, "fills after the restart must not be taken for duplicates of the first run's"
    # The rebuilt paper account holds what the first run's fills left (plus what the second run traded).
    with Ledger(f"sqlite:///{tmp_path}/paper.db") as ledger:
        all_flows = ledger.currency_flows()
    balances = await engine2.venue.fetch_balances()
    assert balances["USDT"].total == Decimal(10_000) + all_flows["USDT"]
    assert balances["BTC"].total == all_flows.get("BTC", Decimal(0))
    assert flows


# --------------------------------------------------------------------------------------------- default settings


def _default_backtest(tmp_path: Path, model_path: Path, *overrides: str) -> tuple[dict[str, Any], list[Any]]:
    """Backtest with config/bot/default.yaml as a user gets it (only `overrides` changed); return summary, logs."""
    cfg = load_config(
        BotAppConfig,
        [
            "bot.mode=backtest",
            f"bot.model_path={model_path}",
            "bot.start=2021-01-01",
            f"output_dir={tmp_path}",
            "run_name=bt",
            *overrides,
        ],
    )
    with capture_logs() as logs:
        run_backtest_mode(cfg, io.StringIO())
    summary = json.loads((tmp_path / "bt" / "summary.json").read_text())
    return summary, logs


def test_the_default_config_trades_in_a_backtest_within_its_limits_and_never_logs_per_candle(
    tmp_path: Path, model: tuple[Path, MlpWeights]
) -> None:
    summary, logs = _default_backtest(tmp_path, model[0])
    assert summary["candles"] > 40_000
    assert summary["fills"] > 10, "the defaults must let the model trade"
    assert summary["evaluation"]["backtest"]["policy"]["trade_count"] >= 1
    trades = pd.read_parquet(tmp_path / "bt" / "trades-backtest.parquet")
    assert len(trades) >= 1
    # Sizing respects the notional limits: nothing proposed that the risk manager had to refuse or shrink for them
    # (refusals of the risk STATE, e.g. reduce_only after a drawdown, are counted and logged once per change).
    refusals = summary["risk_refusals"]
    assert not {"position_limit", "total_limit", "below_minimum"} & set(refusals), refusals
    assert not [e for e in logs if e["event"] == "risk_order_adjusted"]
    assert len([e for e in logs if e["event"] == "risk_refused"]) <= 2 * len(refusals)
    # A handful of lines for ~43,000 candles: none per candle.
    assert len(logs) < 20, Counter(e["event"] for e in logs).most_common(5)


def test_a_halt_mid_backtest_is_counted_and_logged_once_not_per_candle(
    tmp_path: Path, model: tuple[Path, MlpWeights]
) -> None:
    # A drawdown limit of 0.5% (default 20%) halts the bot within the run; the other limits stay the defaults.
    summary, logs = _default_backtest(tmp_path, model[0], "bot.risk.max_drawdown=0.005", "bot.risk.reduce_at=1")
    refusals = summary["risk_refusals"]
    assert refusals.get("halted", 0) > 50, refusals
    refused_lines = [e for e in logs if e["event"] == "risk_refused"]
    assert 1 <= len(refused_lines) <= len(refusals), refused_lines
    assert len(logs) < 30, Counter(e["event"] for e in logs).most_common(5)


@pytest.mark.integration
async def test_flatten_on_halt_closes_the_bots_position_through_the_engine(
    binance_server: BinanceServer, tmp_path: Path, model: tuple[Path, MlpWeights]
) -> None:
    path = model[0]
    policy = OnnxPolicy.load(path)
    clock = FakeClock(T0 + 30 * 60_000)
    binance_server.market_clock_ms = clock
    # A 0.1% drawdown limit (default 20%) halts the bot within minutes of trading; flatten_on_halt closes it.
    cfg = paper_config(
        tmp_path,
        path,
        ["bot.max_candles=60", "bot.risk.flatten_on_halt=true", "bot.risk.max_drawdown=0.001", "bot.risk.reduce_at=1"],
    )
    with capture_logs() as logs:
        engine = await run_paper(binance_server, cfg, clock, policy)
    assert engine.risk.state.value == "halted"
    events = [e["event"] for e in logs]
    assert "flatten_on_halt" in events
    flattening = [e for e in logs if e["event"] == "position_flattening"]
    assert flattening and all(e["reason"] == "flatten_on_halt" and e["side"] == "sell" for e in flattening)
    assert engine.book is not None and engine.book.position("BTC/USDT") == 0
    with Ledger(f"sqlite:///{tmp_path}/paper.db") as ledger:
        assert ledger.position("BTC/USDT").amount == 0


async def test_an_order_open_past_the_timeout_is_cancelled_by_the_engines_check(
    tmp_path: Path, model: tuple[Path, MlpWeights], frame: pd.DataFrame
) -> None:
    from datetime import timedelta

    from adapters.paper.config import PaperConfig
    from adapters.paper.venue import PaperVenue
    from adapters.types import Candle, OrderRequest, OrderType, Side
    from bot.engine.core import Engine
    from bot.orders.book import Book, CapitalConfig
    from bot.orders.manager import OrderManager

    row = frame.loc[START]
    now = [START.to_pydatetime()]
    venue = PaperVenue(PaperConfig(initial_balances={"USDT": Decimal("10000")}))
    candle = Candle("BTC/USDT", "1h", now[0], row["open"], row["high"], row["low"], row["close"], row["volume"])
    venue.book.on_candle(candle)
    with Ledger(f"sqlite:///{tmp_path}/t.db") as ledger:
        book = Book(CapitalConfig(), "USDT")
        # bot.order_timeout_s as in config/bot/default.yaml (60 s).
        cfg = load_config(BotAppConfig, [])
        orders = OrderManager(
            ledger, venue, bot_id="t", book=book, clock=lambda: now[0], order_timeout_s=cfg.bot.order_timeout_s
        )
        engine = Engine(
            venue=venue,
            orders=orders,
            policy=OnnxPolicy.load(model[0]),
            risk=RiskManager(cfg.bot.risk),
            costs=cfg.costs,
            settings=TradingSettings(),
            symbols=["BTC/USDT"],
            clock=lambda: now[0],
        )
        assert engine.timeout_check_s == 30.0, "checked twice per timeout"
        price = Decimal(str(round(row["close"] * 0.5, 2)))  # far below the market: it rests
        resting = await orders.submit(
            OrderRequest("t-resting-1", "BTC/USDT", Side.BUY, OrderType.LIMIT, Decimal("0.001"), price)
        )
        assert not resting.status.is_final
        assert await engine.check_timeouts() == []
        now[0] += timedelta(seconds=61)
        assert await engine.check_timeouts() == ["t-resting-1"]
        assert ledger.get_order("t-resting-1").status is OrderStatus.CANCELLED
        assert not orders.is_blocked("BTC/USDT"), "the next candle decides again"
        assert book.free_quote("USDT") == Decimal(1000), "the cancelled buy's reservation is released"


async def test_the_engine_replays_candles_through_the_paper_venue_which_pushes_its_fills(
    tmp_path: Path, model: tuple[Path, MlpWeights], frame: pd.DataFrame
) -> None:
    """Backtest-shaped run of the one engine: replay feed → paper venue → order manager, ledger, book, risk (the
    default config's limits and capital); the venue pushes fills at the candle that fills, nothing polls orders."""
    from adapters.paper.config import PaperConfig
    from adapters.paper.replay import ReplayConfig, ReplayFeed
    from adapters.paper.venue import PaperVenue
    from bot.engine.core import Engine
    from bot.orders.book import Book
    from bot.orders.manager import OrderManager

    cfg = load_config(BotAppConfig, [])
    window = frame[frame.index < pd.Timestamp("2024-02-01", tz="UTC")]
    feed = ReplayFeed(window, symbol="BTC/USDT", timeframe="1h", config=ReplayConfig(start=START.to_pydatetime()))
    venue = PaperVenue(PaperConfig(initial_balances={"USDT": Decimal("10000")}, costs=cfg.costs), feed=feed)
    lookups: list[str] = []
    original = venue.fetch_order

    async def counting_fetch_order(symbol: str, client_order_id: Any) -> Any:
        lookups.append(client_order_id)
        return await original(symbol, client_order_id)

    venue.fetch_order = counting_fetch_order  # type: ignore[method-assign]
    now = [START.to_pydatetime()]
    with Ledger(f"sqlite:///{tmp_path}/bt.db") as ledger:
        book = Book.from_ledger(ledger, cfg.bot.capital, "USDT")
        risk = RiskManager(cfg.bot.risk, ledger)
        orders = OrderManager(ledger, venue, bot_id="bt", book=book, clock=lambda: now[0])

        def follow(candle: Any) -> None:
            now[0] = candle.open_time + pd.Timedelta(hours=1).to_pytimedelta()

        engine = Engine(
            venue=venue,
            orders=orders,
            policy=OnnxPolicy.load(model[0]),
            risk=risk,
            costs=cfg.costs,
            settings=TradingSettings(),
            symbols=["BTC/USDT"],
            clock=lambda: now[0],
            on_candle=follow,
        )
        engine.timeout_check_s = 0  # replayed time: no wall-clock timeout task
        assert engine.pushes_fills
        await engine.run()
        assert engine.stats.candles == 31 * 24
        assert engine.stats.orders_submitted > 3
        fills = ledger.fills()
        assert fills, "the defaults trade"
        assert lookups == [], "pending orders are never polled: the paper venue pushes its fills"
        assert all(o.status.is_final for o in ledger.orders()[:-1])
        # Position and cash of the book are the ledger's fills; the limits held on every buy.
        assert book.position("BTC/USDT") == ledger.position("BTC/USDT").amount
        assert all(f.amount * f.price <= cfg.bot.risk.max_order_notional * Decimal("1.01") for f in fills)
