"""One shape per record (issue 10): events and ledger rows are derived from the domain types, not copied.

A field the domain record and its event (or its table) share travels by name; these tests fail when a field is
added to one side under a name the other does not know, or when a conversion (enum, ms timestamp, Decimal) is lost.
"""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from types import SimpleNamespace

import pytest
import sqlalchemy as sa

from adapters.types import ClientOrderId, Fill, Order, OrderStatus, OrderType, Side, TradeResult, VenueOrderId
from bot.events import EquityEvent, FillEvent, OrderEvent, RoundTrip, ShadowOrderEvent, from_json
from bot.ledger.schema import LedgerError
from bot.ledger.store import Ledger
from bot.ledger.types import CLOSED_TRADE_ROWS, ORDER_ROWS, ClosedTrade, RecordRows

T0 = datetime(2024, 3, 1, 12, 0, tzinfo=UTC)

ORDER = Order(
    client_order_id=ClientOrderId("bot-1"),
    symbol="BTC/USDT",
    side=Side.SELL,
    type=OrderType.LIMIT,
    amount=Decimal("0.25"),
    status=OrderStatus.PARTIALLY_FILLED,
    price=Decimal("42000.5"),
    venue_order_id=VenueOrderId("v9"),
    filled=Decimal("0.1"),
    average_price=Decimal("42001"),
    fee=Decimal("0.42"),
    fee_currency="USDT",
    created_at=T0,
    updated_at=T0 + timedelta(seconds=3),
)


def _fields(cls: type) -> set[str]:
    return {f.name for f in dataclasses.fields(cls)}


def test_an_order_event_carries_every_field_the_order_has() -> None:
    event = OrderEvent.of(ORDER, ts=T0, bot_id="b", reason="partial", model_sha="abc")
    assert event.order_type is ORDER.type
    for name in _fields(OrderEvent) & _fields(Order):
        assert getattr(event, name) == getattr(ORDER, name), name
    # Only the event's own fields are not the order's: a new OrderEvent field must come from Order or be listed.
    assert _fields(OrderEvent) - _fields(Order) == {"ts", "bot_id", "order_type", "reason", "model_sha"}
    assert from_json(event.to_json()) == event


def test_a_shadow_order_event_carries_the_virtual_orders_fields() -> None:
    event = ShadowOrderEvent.of(ORDER, ts=T0, bot_id="b", model="candidate", model_sha=None)
    for name in _fields(ShadowOrderEvent) & _fields(Order):
        assert getattr(event, name) == getattr(ORDER, name), name
    assert _fields(ShadowOrderEvent) - _fields(Order) == {"ts", "bot_id", "model", "model_sha"}


def test_a_fill_event_carries_the_fill_and_its_slippage() -> None:
    fill = Fill(
        trade_id="t1",
        client_order_id=ClientOrderId("bot-1"),
        symbol="BTC/USDT",
        side=Side.BUY,
        amount=Decimal("0.5"),
        price=Decimal("101"),
        fee=Decimal("0.05"),
        fee_currency="USDT",
        timestamp=T0,
        requested_price=Decimal("100"),
        is_maker=True,
    )
    event = FillEvent.of(fill, "b")
    assert event.ts == T0
    for name in _fields(FillEvent) & _fields(Fill):
        assert getattr(event, name) == getattr(fill, name), name
    assert event.slippage_bps == pytest.approx(100.0)
    assert _fields(FillEvent) - _fields(Fill) == {"ts", "bot_id", "slippage_bps"}


def test_a_round_trip_is_declared_once_for_the_ledger_and_the_events() -> None:
    shared = _fields(TradeResult)
    assert shared <= _fields(ClosedTrade) and shared <= _fields(RoundTrip)
    trade = ClosedTrade(
        symbol="BTC/USDT",
        side=Side.BUY,
        qty=Decimal("0.3"),
        entry_price=Decimal("100"),
        exit_price=Decimal("110"),
        realized_pnl=Decimal("2.9"),
        fees=Decimal("0.1"),
        opened_at=T0,
        closed_at=T0 + timedelta(hours=2),
        model_sha="abc",
        run_id="run-1",
    )
    event = trade.to_event("b")
    for name in shared | {"model_sha", "run_id"}:
        assert getattr(event, name) == getattr(trade, name), name
    assert event.duration_seconds == 7200.0
    # The wire keeps its order: ts and bot_id first, then the trade, then its duration and the model's ids.
    assert list(event.to_dict())[2:] == [
        "ts",
        "bot_id",
        "symbol",
        "side",
        "qty",
        "entry_price",
        "exit_price",
        "realized_pnl",
        "fees",
        "duration_seconds",
        "model_sha",
        "run_id",
    ]


def test_ledger_rows_round_trip_orders_trades_and_equity() -> None:
    ledger = Ledger("sqlite://")
    try:
        trade = ClosedTrade(
            symbol="ETH/USDT",
            side=Side.SELL,
            qty=Decimal("1.5"),
            entry_price=Decimal("2000"),
            exit_price=Decimal("1900"),
            realized_pnl=Decimal("149.1"),
            fees=Decimal("0.9"),
            opened_at=T0,
            closed_at=T0 + timedelta(minutes=5),
        )
        row = CLOSED_TRADE_ROWS.row(trade)
        assert row["side"] == "sell" and row["opened_at_ms"] == 1709294400000 and row["qty"] == Decimal("1.5")
        snapshot = EquityEvent(
            ts=T0,
            bot_id="b",
            equity=Decimal("1000.5"),
            cash=Decimal("500"),
            positions_value=Decimal("500.5"),
            realized_pnl=Decimal("1"),
            unrealized_pnl=Decimal("-0.5"),
            drawdown=0.25,
        )
        ledger.record_equity(snapshot)
        assert ledger.equity_snapshots() == [snapshot]
    finally:
        ledger.close()
    order_row = ORDER_ROWS.row(ORDER)
    assert order_row["status"] == "partially_filled" and order_row["type"] == "limit"
    assert order_row["updated_at_ms"] == 1709294403000
    assert ORDER_ROWS.from_row(SimpleNamespace(**order_row)) == ORDER
    assert CLOSED_TRADE_ROWS.from_row(SimpleNamespace(**row)) == trade


def test_a_record_field_its_table_lacks_is_an_error_at_import() -> None:
    table = sa.Table("t", sa.MetaData(), sa.Column("symbol", sa.String), sa.Column("side", sa.String))
    with pytest.raises(LedgerError, match=r"TradeResult.qty: the table t has no column qty"):
        RecordRows(TradeResult, table)
