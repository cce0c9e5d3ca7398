"""Risk manager: every limit, the ACTIVE/REDUCING/HALTED states, refusals as events/logs/metrics, persistence."""

from __future__ import annotations

import dataclasses
import threading
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from adapters.paper.config import BTC_USDT
from adapters.types import ClientOrderId, OrderRequest, OrderType, Side
from bot.events import AlertEvent, Event, RiskRefusalEvent
from bot.ledger.store import Ledger
from bot.risk import (
    ExitIntent,
    Refusal,
    RefusalReason,
    RiskConfig,
    RiskContext,
    RiskManager,
    RiskState,
    StateWriter,
)

T0 = datetime(2024, 3, 1, 12, 0, tzinfo=UTC)
PRICE = Decimal("40000")
CONFIG = RiskConfig(
    max_position_notional=Decimal("1000"),
    max_total_notional=Decimal("1500"),
    max_order_notional=Decimal("600"),
    max_orders_per_minute=3,
    price_band_bps=Decimal("100"),
    max_daily_loss=Decimal("0.05"),
    max_drawdown=Decimal("0.10"),
    reduce_at=Decimal("0.8"),
)


def order(side: Side, amount: str, price: str | None = None, cid: str = "c1") -> OrderRequest:
    kind = OrderType.LIMIT if price is not None else OrderType.MARKET
    return OrderRequest(
        ClientOrderId(cid), "BTC/USDT", side, kind, Decimal(amount), None if price is None else Decimal(price)
    )


def ctx(position: str = "0", total: str | None = None, now: datetime = T0, **kwargs: Any) -> RiskContext:
    pos = Decimal(position)
    values: dict[str, Any] = {
        "now": now,
        "last_price": PRICE,
        "position": pos,
        "total_notional": Decimal(total) if total is not None else abs(pos) * PRICE,
        "last_candle_close": now - timedelta(minutes=30),
        "timeframe_s": 3600.0,
        "market": BTC_USDT,
    }
    values.update(kwargs)
    return RiskContext(**values)


class Recorder:
    """Collects refusal callbacks and events."""

    def __init__(self) -> None:
        self.refusals: list[Refusal] = []
        self.events: list[Event] = []


@pytest.fixture
def rec() -> Recorder:
    return Recorder()


@pytest.fixture
def risk(rec: Recorder) -> RiskManager:
    return RiskManager(CONFIG, None, bot_id="b", on_refusal=rec.refusals.append, emit=rec.events.append)


def test_order_within_limits_passes_unchanged(risk: RiskManager) -> None:
    request = order(Side.BUY, "0.01")
    decision = risk.check(request, ctx())
    assert decision.approved and decision.request is request and decision.adjustments == ()


def test_refusal_is_a_callback_an_event_a_log_line_and_a_count(risk: RiskManager, rec: Recorder) -> None:
    with capture_logs() as logs:
        decision = risk.check(order(Side.BUY, "0.01", price="41000"), ctx())
    assert not decision.approved and decision.refusal is not None
    assert decision.refusal.reason is RefusalReason.PRICE_BAND
    assert rec.refusals == [decision.refusal]
    assert isinstance(rec.events[0], RiskRefusalEvent) and rec.events[0].reason == "price_band"
    assert logs[0]["event"] == "risk_refused" and logs[0]["reason"] == "price_band"
    assert risk.refusals[RefusalReason.PRICE_BAND] == 1


def test_price_band_checks_limit_and_decision_prices(risk: RiskManager) -> None:
    assert risk.check(order(Side.BUY, "0.01", price="40399"), ctx()).approved  # 99.75 bps
    assert not risk.check(order(Side.BUY, "0.01"), ctx(reference_price=Decimal("39500"))).approved
    assert risk.check(order(Side.BUY, "0.01"), ctx(reference_price=Decimal("39700"))).approved


def test_no_price_is_refused(risk: RiskManager) -> None:
    decision = risk.check(order(Side.BUY, "0.01"), ctx(last_price=Decimal(0)))
    assert decision.refusal is not None and decision.refusal.reason is RefusalReason.NO_PRICE


def test_stale_data_blocks_new_exposure_but_not_reduction(risk: RiskManager) -> None:
    stale: dict[str, Any] = {"last_candle_close": T0 - timedelta(hours=2, seconds=1)}
    decision = risk.check(order(Side.BUY, "0.01"), ctx(**stale))
    assert decision.refusal is not None and decision.refusal.reason is RefusalReason.STALE_DATA
    assert risk.check(order(Side.BUY, "0.01"), ctx(last_candle_close=T0 - timedelta(hours=2))).approved
    assert not risk.check(order(Side.BUY, "0.01"), ctx(last_candle_close=None)).approved
    assert risk.check(order(Side.SELL, "0.01"), ctx(position="0.02", **stale)).approved


def test_orders_per_minute(risk: RiskManager) -> None:
    for i in range(3):
        assert risk.check(order(Side.BUY, "0.001"), ctx(now=T0 + timedelta(seconds=i))).approved
    refused = risk.check(order(Side.BUY, "0.001"), ctx(now=T0 + timedelta(seconds=59)))
    assert refused.refusal is not None and refused.refusal.reason is RefusalReason.RATE_LIMIT
    assert risk.check(order(Side.BUY, "0.001"), ctx(now=T0 + timedelta(seconds=60, microseconds=1))).approved


def test_order_notional_is_shrunk_to_the_cap(risk: RiskManager) -> None:
    decision = risk.check(order(Side.BUY, "0.02"), ctx())  # 800 > 600
    assert decision.request is not None and decision.request.amount == Decimal("0.015")
    assert "max order notional" in decision.adjustments[0]


def test_position_limit_shrinks_then_refuses(risk: RiskManager) -> None:
    shrunk = risk.check(order(Side.BUY, "0.01"), ctx(position="0.02"))  # 800 held, cap 1000
    assert shrunk.request is not None and shrunk.request.amount == Decimal("0.005")
    full = risk.check(order(Side.BUY, "0.01"), ctx(position="0.025"))
    assert full.refusal is not None and full.refusal.reason is RefusalReason.POSITION_LIMIT
    assert risk.check(order(Side.SELL, "0.01"), ctx(position="0.025")).approved  # reducing is always fine
    flip = risk.check(order(Side.SELL, "0.05"), ctx(position="0.01"))  # would end short 0.04 = 1600 > cap 600/order
    assert flip.request is not None and flip.request.amount == Decimal("0.015")


def test_total_limit_counts_other_symbols(risk: RiskManager) -> None:
    shrunk = risk.check(order(Side.BUY, "0.01"), ctx(total="1300"))  # 200 of headroom
    assert shrunk.request is not None and shrunk.request.amount == Decimal("0.005")
    refused = risk.check(order(Side.BUY, "0.01"), ctx(total="1500"))
    assert refused.refusal is not None and refused.refusal.reason is RefusalReason.TOTAL_LIMIT


def test_shrunk_order_below_market_minimum_is_refused(risk: RiskManager) -> None:
    decision = risk.check(order(Side.BUY, "0.01"), ctx(total="1499.9"))  # 0.1 USDT of headroom < min notional 5
    assert decision.refusal is not None and decision.refusal.reason is RefusalReason.BELOW_MINIMUM


def test_reducing_allows_only_orders_toward_flat(risk: RiskManager, rec: Recorder) -> None:
    risk.reduce_only("operator", T0)
    assert risk.state is RiskState.REDUCING
    assert isinstance(rec.events[-1], AlertEvent) and rec.events[-1].code == "risk_reducing"
    refused = risk.check(order(Side.BUY, "0.01"), ctx(position="0.01"))
    assert refused.refusal is not None and refused.refusal.reason is RefusalReason.REDUCE_ONLY
    cut = risk.check(order(Side.SELL, "0.03"), ctx(position="0.01"))
    assert cut.request is not None and cut.request.amount == Decimal("0.01")
    assert risk.check(order(Side.SELL, "0.005"), ctx(position="0.01")).approved


def test_halted_refuses_everything_unless_flattening(rec: Recorder) -> None:
    risk = RiskManager(CONFIG, emit=rec.events.append)
    risk.halt("operator", T0)
    decision = risk.check(order(Side.SELL, "0.01"), ctx(position="0.01"))
    assert decision.refusal is not None and decision.refusal.reason is RefusalReason.HALTED
    assert not risk.should_flatten
    flat = RiskManager(dataclasses.replace(CONFIG, flatten_on_halt=True))
    flat.halt("operator", T0)
    assert flat.should_flatten
    assert flat.check(order(Side.SELL, "0.01"), ctx(position="0.01")).approved
    assert not flat.check(order(Side.BUY, "0.01"), ctx(position="0.01")).approved


def test_daily_loss_halts_and_a_new_day_starts_fresh(risk: RiskManager, rec: Recorder) -> None:
    assert risk.update_equity(Decimal("10000"), T0) is RiskState.ACTIVE
    assert risk.update_equity(Decimal("9650"), T0 + timedelta(hours=1)) is RiskState.ACTIVE  # 3.5 % < 4 %
    assert risk.update_equity(Decimal("9590"), T0 + timedelta(hours=2)) is RiskState.REDUCING  # 4.1 % >= 0.8 × 5 %
    assert risk.update_equity(Decimal("9700"), T0 + timedelta(hours=3)) is RiskState.ACTIVE  # recovered
    with capture_logs() as logs:
        assert risk.update_equity(Decimal("9500"), T0 + timedelta(hours=4)) is RiskState.HALTED
    assert logs[-1]["event"] == "risk_state_changed" and logs[-1]["to_state"] == "halted"
    assert "daily loss" in risk.reason
    assert isinstance(rec.events[-1], AlertEvent) and rec.events[-1].level == "critical"
    # The next day does not lift a halt by itself.
    assert risk.update_equity(Decimal("9500"), T0 + timedelta(days=1)) is RiskState.HALTED


def test_drawdown_halts_and_resume_rebases(risk: RiskManager) -> None:
    risk.update_equity(Decimal("10000"), T0)
    risk.update_equity(Decimal("12000"), T0 + timedelta(days=1))
    risk.update_equity(Decimal("11500"), T0 + timedelta(days=2))
    assert risk.update_equity(Decimal("10700"), T0 + timedelta(days=3)) is RiskState.HALTED  # 10.8 % from 12000
    assert "drawdown" in risk.reason
    risk.resume(T0 + timedelta(days=3, hours=1))
    assert risk.state is RiskState.ACTIVE
    assert risk.update_equity(Decimal("10650"), T0 + timedelta(days=3, hours=2)) is RiskState.ACTIVE


def test_manual_reducing_is_not_lifted_by_recovering_equity(risk: RiskManager) -> None:
    risk.update_equity(Decimal("10000"), T0)
    risk.reduce_only("operator", T0)
    assert risk.update_equity(Decimal("10100"), T0 + timedelta(hours=1)) is RiskState.REDUCING


def test_halt_persists_across_restarts_until_resumed(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'live.db'}"
    first = RiskManager(CONFIG, Ledger(url))
    first.update_equity(Decimal("10000"), T0)
    first.update_equity(Decimal("9400"), T0 + timedelta(hours=1))
    assert first.state is RiskState.HALTED
    with capture_logs() as logs:
        second = RiskManager(CONFIG, Ledger(url))
    assert second.state is RiskState.HALTED and "daily loss" in second.reason
    assert logs[0]["event"] == "risk_state_restored"
    assert not second.check(order(Side.BUY, "0.001"), ctx()).approved
    second.update_equity(Decimal("9400"), T0 + timedelta(hours=2))
    second.resume(T0 + timedelta(hours=2))
    third = RiskManager(CONFIG, Ledger(url))
    assert third.state is RiskState.ACTIVE
    # The resume re-based the day's start on 9400, so a small further loss does not halt again.
    assert third.update_equity(Decimal("9300"), T0 + timedelta(hours=3)) is RiskState.ACTIVE


def test_unreadable_persisted_state_fails_closed(tmp_path: Path) -> None:
    ledger = Ledger(f"sqlite:///{tmp_path / 'paper.db'}")
    ledger.set_state("risk.state", "bogus")
    assert RiskManager(CONFIG, ledger).state is RiskState.HALTED


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("max_position_notional", Decimal(0), "max_position_notional must be a finite Decimal > 0"),
        ("max_daily_loss", Decimal("1.5"), r"max_daily_loss must be a Decimal fraction in \(0, 1\]"),
        ("max_orders_per_minute", 0, "max_orders_per_minute must be >= 1"),
        ("stale_after_timeframes", 0, "stale_after_timeframes must be >= 1"),
        ("stop_loss", Decimal("1"), r"stop_loss must be a Decimal fraction in \(0, 1\) or null"),
        ("cooldown_candles", -1, "cooldown_candles must be >= 0"),
        ("stoploss_guard_lock_s", -5.0, "stoploss_guard_lock_s must be a number of seconds >= 0"),
    ],
)
def test_config_rejects_bad_values(field: str, value: Any, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        dataclasses.replace(CONFIG, **{field: value})


def test_repeated_refusals_are_counted_and_logged_once_per_change_of_reason(risk: RiskManager, rec: Recorder) -> None:
    with capture_logs() as logs:
        for _ in range(50):  # one candle each: the same refusal every time
            assert not risk.check(order(Side.BUY, "0.01", price="41000"), ctx()).approved
        for _ in range(3):
            assert not risk.check(order(Side.BUY, "0.01"), ctx(last_candle_close=T0 - timedelta(hours=5))).approved
    refused = [entry for entry in logs if entry["event"] == "risk_refused"]
    assert [(entry["reason"], entry["previous_repeated"]) for entry in refused] == [
        ("price_band", 0),
        ("stale_data", 50),
    ]
    assert risk.refusal_counts() == {"price_band": 50, "stale_data": 3}
    assert len(rec.refusals) == 53  # the metrics still see each one


def test_daily_loss_baseline_resets_at_utc_midnight() -> None:
    # An injected clock: the times are passed in, around 00:00 UTC (a local-time zone must not matter).
    risk = RiskManager(CONFIG)
    late = datetime(2024, 3, 1, 23, 59, 30, tzinfo=UTC)
    assert risk.update_equity(Decimal("10000"), late) is RiskState.ACTIVE
    assert risk.update_equity(Decimal("9580"), late + timedelta(seconds=20)) is RiskState.REDUCING  # 4.2 % today
    just_before = datetime(2024, 3, 2, 0, 59, 59, tzinfo=timezone(timedelta(hours=1)))
    assert risk.update_equity(Decimal("9580"), just_before) is RiskState.REDUCING  # 23:59:59 UTC: same day
    midnight = datetime(2024, 3, 2, 0, 0, 0, tzinfo=UTC)
    assert risk.update_equity(Decimal("9580"), midnight) is RiskState.ACTIVE  # the new day starts from 9580
    # 9150 would be 8.5 % below yesterday's start; from today's 9580 it is 4.5 %: reducing, not halted.
    assert risk.update_equity(Decimal("9150"), midnight + timedelta(hours=1)) is RiskState.REDUCING
    assert risk.update_equity(Decimal("9090"), midnight + timedelta(hours=2)) is RiskState.HALTED  # 5.1 % today


def test_state_writes_go_through_the_writer_thread_coalesced(tmp_path: Path) -> None:
    ledger = Ledger(f"sqlite:///{tmp_path / 'live.db'}")

    class Counting:
        def __init__(self) -> None:
            self.calls = 0
            self.threads: set[str] = set()

        def get_state(self, key: str) -> str | None:
            return ledger.get_state(key)

        def set_states(self, values: Any, *, ts: datetime | None = None) -> None:
            self.calls += 1
            self.threads.add(threading.current_thread().name)
            ledger.set_states(values, ts=ts)

    store = Counting()
    writer = StateWriter(store)
    risk = RiskManager(CONFIG, store, writer=writer)
    for i in range(200):  # a new equity peak at every candle
        risk.update_equity(Decimal(10000 + i), T0 + timedelta(minutes=i))
    writer.flush()
    assert store.threads == {"risk-state-writer"}  # never on the caller's thread
    assert 1 <= store.calls <= 200 and writer.errors == 0
    assert ledger.get_state("risk.peak_equity") == "10199"
    risk.halt("operator", T0 + timedelta(hours=5))
    writer.close()
    assert RiskManager(CONFIG, ledger).state is RiskState.HALTED  # close wrote what was pending


PROTECTED = dataclasses.replace(
    CONFIG,
    max_orders_per_minute=100,
    cooldown_candles=2,
    stop_loss=Decimal("0.05"),
    stoploss_guard_trades=2,
    stoploss_guard_window_s=86_400.0,
    stoploss_guard_lock_s=3_600.0 * 6,
)


def test_cooldown_after_a_losing_trade_blocks_new_exposure_for_n_candles() -> None:
    risk = RiskManager(PROTECTED)
    risk.on_trade_closed("BTC/USDT", Decimal("12"), T0)  # a win: no cooldown
    assert risk.check(order(Side.BUY, "0.01"), ctx()).approved
    risk.on_trade_closed("BTC/USDT", Decimal("-3"), T0)
    refused = risk.check(order(Side.BUY, "0.01"), ctx(now=T0 + timedelta(hours=1)))
    assert refused.refusal is not None and refused.refusal.reason is RefusalReason.COOLDOWN
    assert risk.check(order(Side.SELL, "0.01"), ctx("0.02", now=T0 + timedelta(hours=1))).approved  # reducing
    assert risk.check(order(Side.BUY, "0.01"), ctx(now=T0 + timedelta(hours=2))).approved  # two 1 h candles on


def test_stop_loss_asks_for_an_exit_that_passes_even_when_halted() -> None:
    risk = RiskManager(PROTECTED)
    entry = Decimal("40000")
    assert risk.on_candle("BTC/USDT", Decimal("38001"), T0, Decimal("0.02"), entry) is None
    intent = risk.on_candle("BTC/USDT", Decimal("38000"), T0, Decimal("0.02"), entry)
    assert intent == ExitIntent("BTC/USDT", Side.SELL, Decimal("0.02"), intent.reason, Decimal("38000.00"))
    short = risk.on_candle("ETH/USDT", Decimal("2100"), T0, Decimal("-1"), Decimal("2000"))
    assert short is not None and short.side is Side.BUY and short.amount == 1
    assert RiskManager(CONFIG).on_candle("BTC/USDT", Decimal("1"), T0, Decimal("0.02"), entry) is None  # off
    risk.halt("operator", T0)
    exit_order = order(Side.SELL, "0.02")
    assert not risk.check(exit_order, ctx("0.02", last_price=Decimal("38000"))).approved
    assert risk.check(exit_order, ctx("0.02", last_price=Decimal("38000")), protective=True).approved
    flip = risk.check(order(Side.SELL, "0.05"), ctx("0.02", last_price=Decimal("38000")), protective=True)
    assert flip.request is not None and flip.request.amount == Decimal("0.02")  # cut to flat, never flipped
    assert not risk.check(order(Side.BUY, "0.01"), ctx(), protective=True).approved  # new exposure: not protective


def test_stoploss_guard_locks_the_symbol_after_n_stop_outs_in_the_window(rec: Recorder) -> None:
    risk = RiskManager(PROTECTED, emit=rec.events.append)
    entry = Decimal("40000")
    assert risk.on_candle("BTC/USDT", Decimal("37000"), T0, Decimal("0.01"), entry) is not None
    risk.on_trade_closed("BTC/USDT", Decimal("-30"), T0)  # the stop's fill: a stop-out
    risk.on_trade_closed("BTC/USDT", Decimal("-5"), T0 + timedelta(hours=3))  # the policy's own loss: not one
    assert risk.locked_until("BTC/USDT") is None
    later = T0 + timedelta(hours=4)
    risk.on_trade_closed("BTC/USDT", Decimal("-30"), later, stop_out=True)
    assert risk.locked_until("BTC/USDT") == later + timedelta(hours=6)
    assert isinstance(rec.events[-1], AlertEvent) and rec.events[-1].code == "stoploss_guard"
    locked = risk.check(order(Side.BUY, "0.01"), ctx(now=later + timedelta(hours=5)))
    assert locked.refusal is not None and locked.refusal.reason is RefusalReason.STOPLOSS_GUARD
    assert risk.check(order(Side.BUY, "0.01", cid="c2"), ctx(now=later + timedelta(hours=6))).approved


def test_cooldown_and_stoploss_guard_lock_survive_a_restart(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'paper.db'}"
    first = RiskManager(PROTECTED, Ledger(url))
    first.on_trade_closed("ETH/USDT", Decimal("-3"), T0)  # a loss: ETH cools down for two 1 h candles
    first.on_trade_closed("BTC/USDT", Decimal("-30"), T0, stop_out=True)
    second = RiskManager(PROTECTED, Ledger(url))  # a restart between the two stop-outs keeps the first one counted
    later = T0 + timedelta(hours=4)
    second.on_trade_closed("BTC/USDT", Decimal("-30"), later, stop_out=True)
    assert second.locked_until("BTC/USDT") == later + timedelta(hours=6)
    with capture_logs() as logs:
        third = RiskManager(PROTECTED, Ledger(url))  # and a restart inside the lock keeps the lock
    assert third.locked_until("BTC/USDT") == later + timedelta(hours=6)
    assert [e["event"] for e in logs] == ["risk_protections_restored"]
    locked = third.check(order(Side.BUY, "0.01"), ctx(now=later + timedelta(hours=5)))
    assert locked.refusal is not None and locked.refusal.reason is RefusalReason.STOPLOSS_GUARD
    assert third.check(order(Side.BUY, "0.01", cid="c2"), ctx(now=later + timedelta(hours=6))).approved
    eth = dataclasses.replace(order(Side.BUY, "0.01", cid="c3"), symbol="ETH/USDT")
    cooling = RiskManager(PROTECTED, Ledger(url)).check(eth, ctx(now=T0 + timedelta(hours=1)))
    assert cooling.refusal is not None and cooling.refusal.reason is RefusalReason.COOLDOWN
    assert third.state is RiskState.ACTIVE


def test_unreadable_persisted_protections_fail_closed(tmp_path: Path) -> None:
    ledger = Ledger(f"sqlite:///{tmp_path / 'paper.db'}")
    ledger.set_state("risk.protections", '{"losses": {"BTC/USDT": "2024-01-01T00:00:00"}}')  # naive, stopouts gone
    with capture_logs() as logs:
        risk = RiskManager(PROTECTED, ledger)
    assert risk.state is RiskState.HALTED and "risk.protections" in risk.reason
    assert "risk_protections_unreadable" in [e["event"] for e in logs]
