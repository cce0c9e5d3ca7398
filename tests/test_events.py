"""Events: one versioned JSON schema; round-trips hold, valid input never raises, bad input raises EventError."""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from enum import StrEnum
from typing import Any, Literal, get_args, get_origin, get_type_hints

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from adapters.types import OrderStatus, OrderType, Side
from bot.events import (
    EVENT_SCHEMA_VERSION,
    EVENT_TYPES,
    AlertEvent,
    Event,
    EventError,
    FillEvent,
    OrderEvent,
    TradeClosedEvent,
    from_dict,
    from_json,
)

T0 = datetime(2024, 3, 1, 12, 0, tzinfo=UTC)


def _strategy(tp: Any) -> st.SearchStrategy[Any]:
    origin = get_origin(tp)
    if origin is typing.Union or origin is types.UnionType:
        inner = next(a for a in get_args(tp) if a is not type(None))
        return st.none() | _strategy(inner)
    if origin is Literal:
        return st.sampled_from(get_args(tp))
    if tp is Decimal:
        return st.decimals(allow_nan=False, allow_infinity=False)
    if tp is datetime:
        return st.datetimes(
            min_value=datetime(1971, 1, 1),
            max_value=datetime(2200, 1, 1),
            timezones=st.sampled_from([UTC, timezone(timedelta(hours=5, minutes=30))]),
        )
    if tp is float:
        return st.floats(allow_nan=False, allow_infinity=False)
    if tp is int:
        return st.integers(min_value=-(2**53), max_value=2**53)
    if tp is bool:
        return st.booleans()
    if tp is str:
        return st.text(max_size=20)
    if isinstance(tp, type) and issubclass(tp, StrEnum):
        return st.sampled_from(list(tp))
    raise AssertionError(f"no strategy for {tp}")


def _events(cls: type[Event]) -> st.SearchStrategy[Event]:
    hints = get_type_hints(cls)
    return st.builds(cls, **{f.name: _strategy(hints[f.name]) for f in dataclasses.fields(cls)})


any_event = st.one_of([_events(cls) for cls in EVENT_TYPES.values()])


@settings(max_examples=300, deadline=None)
@given(any_event)
def test_every_event_round_trips_through_json(event: Event) -> None:
    text = event.to_json()
    data = json.loads(text)
    assert data["schema_version"] == EVENT_SCHEMA_VERSION and data["type"] == event.type
    back = from_json(text)
    assert back == event and type(back) is type(event)
    assert back.to_json() == text


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=5),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=8), children, max_size=5),
)


@st.composite
def event_like(draw: st.DrawFn) -> Any:
    """A JSON object with a real event type whose fields hold arbitrary JSON values (or valid ones)."""
    kind = draw(st.sampled_from(sorted(EVENT_TYPES)))
    valid = draw(_events(EVENT_TYPES[kind])).to_dict()
    for name in draw(st.lists(st.sampled_from(sorted(valid)), max_size=3)):
        valid[name] = draw(json_values)
    return valid


@settings(max_examples=200, deadline=None)
@given(json_values | event_like())
def test_arbitrary_json_gives_an_event_or_event_error(value: Any) -> None:
    try:
        event = from_json(json.dumps(value))
    except EventError as e:
        assert str(e)
    else:
        assert isinstance(event, Event) and from_json(event.to_json()) == event


def _fill() -> FillEvent:
    return FillEvent(
        ts=T0,
        bot_id="b",
        trade_id="t1",
        client_order_id="c1",
        symbol="BTC/USDT",
        side=Side.BUY,
        amount=Decimal("0.01"),
        price=Decimal("43000.1"),
        fee=Decimal("0.043"),
        fee_currency="USDT",
    )


def test_decimals_are_strings_and_times_are_iso_utc() -> None:
    data = _fill().to_dict()
    assert data["amount"] == "0.01" and data["price"] == "43000.1"
    assert data["ts"] == "2024-03-01T12:00:00+00:00" and data["side"] == "buy"
    assert data["requested_price"] is None


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda d: d.update(type="nope"), "unknown event type 'nope'"),
        (lambda d: d.update(schema_version=2), "schema_version must be 1"),
        (lambda d: d.pop("price"), r"fill event: missing field 'price'"),
        (lambda d: d.update(colour="red"), "unknown field"),
        (lambda d: d.update(amount=0.01), r"fill\.amount: expected a decimal string"),
        (lambda d: d.update(amount="abc"), r"fill\.amount: 'abc' is not a decimal number"),
        (lambda d: d.update(amount="NaN"), r"fill\.amount: expected a finite Decimal"),
        (lambda d: d.update(ts="2024-03-01T12:00:00"), r"fill\.ts: expected a timezone-aware"),
        (lambda d: d.update(ts="yesterday"), r"fill\.ts: 'yesterday' is not an ISO-8601"),
        (lambda d: d.update(side="long"), r"fill\.side: must be one of buy, sell"),
        (lambda d: d.update(is_maker="yes"), r"fill\.is_maker: expected true or false"),
        (lambda d: d.update(trade_id=None), r"fill\.trade_id: must not be null"),
        (lambda d: d.update(slippage_bps=True), r"fill\.slippage_bps: expected a number"),
    ],
)
def test_malformed_events_name_the_field(mutate: Any, message: str) -> None:
    data = _fill().to_dict()
    mutate(data)
    with pytest.raises(EventError, match=message):
        from_dict(data)


def test_non_json_and_nan_are_rejected() -> None:
    with pytest.raises(EventError, match="not valid JSON"):
        from_json("{")
    text = _fill().to_json().replace('"is_maker":false', '"is_maker":false,"slippage_bps":NaN')
    with pytest.raises(EventError, match="NaN"):
        from_json(text)
    with pytest.raises(EventError, match="must be a JSON object"):
        from_json("[1]")


def test_construction_validates_too() -> None:
    with pytest.raises(EventError, match=r"alert\.level"):
        AlertEvent(ts=T0, bot_id="b", level="loud", code="c", message="m")  # type: ignore[arg-type]
    with pytest.raises(EventError, match=r"trade_closed\.duration_seconds: expected a finite number"):
        TradeClosedEvent(
            ts=T0,
            bot_id="b",
            symbol="BTC/USDT",
            side=Side.BUY,
            qty=Decimal(1),
            entry_price=Decimal(1),
            exit_price=Decimal(1),
            realized_pnl=Decimal(0),
            fees=Decimal(0),
            duration_seconds=float("inf"),
        )
    with pytest.raises(EventError, match=r"order\.ts: expected a timezone-aware"):
        OrderEvent(
            ts=datetime(2024, 1, 1),
            bot_id="b",
            client_order_id="c",
            symbol="BTC/USDT",
            side=Side.BUY,
            order_type=OrderType.MARKET,
            amount=Decimal(1),
            status=OrderStatus.NEW,
        )


def test_contract_event_types_exist() -> None:
    contract = {"order", "fill", "trade_closed", "equity", "status", "heartbeat", "alert", "risk_refusal"}
    shadows = {"shadow_order", "shadow_trade_closed", "shadow_equity", "model_promoted"}
    assert contract | shadows == set(EVENT_TYPES)
    fields = {f.name for f in dataclasses.fields(TradeClosedEvent)}
    assert {
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
    } <= fields
