"""Versioned JSON events the daemon emits to every sink (ledger, W&B, MQTT, Prometheus).

One schema for all sinks (DESIGN.md, "Events"): a flat JSON object with ``schema_version``, ``type`` and the
event's fields. Decimals are serialised as strings (exact), datetimes as ISO-8601 UTC strings, enums as their
values. :func:`from_json` validates by hand (pydantic is not a dependency of the daemon): an unknown type, a
missing or unknown field, a value of the wrong type, a non-finite number or a naive timestamp raises
:class:`EventError` naming the event type and the field.
"""

from __future__ import annotations

import dataclasses
import json
import math
import types
import typing
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from enum import StrEnum
from typing import Any, ClassVar, Literal, get_args, get_origin, get_type_hints

from adapters.types import Fill, Order, OrderStatus, OrderType, Side, TradeResult, slippage_bps

EVENT_SCHEMA_VERSION = 1
"""Version of the event schema; bump it on any incompatible change and keep old readers in mind."""

AlertLevel = Literal["info", "warning", "error", "critical"]


class EventError(ValueError):
    """An event is malformed; the message names the event type and the field."""


@dataclass(frozen=True, slots=True)
class Event:
    """Base of every event: when it happened and which bot emitted it."""

    type: ClassVar[str] = "event"

    ts: datetime
    """When the event happened (UTC)."""
    bot_id: str
    """Which bot emitted it."""

    def __post_init__(self) -> None:
        _validate(self)

    def to_dict(self) -> dict[str, Any]:
        """Return the JSON-ready mapping: schema version, type and every field serialised."""
        out: dict[str, Any] = {"schema_version": EVENT_SCHEMA_VERSION, "type": self.type}
        for f in dataclasses.fields(self):
            out[f.name] = _dump(getattr(self, f.name))
        return out

    def to_json(self) -> str:
        """Serialise to a compact JSON string."""
        return json.dumps(self.to_dict(), separators=(",", ":"), allow_nan=False)


class _Carried:
    """The fields an event takes from a domain record (an `Order`, a `Fill`): every event field the record has
    under the same name (or the name in `renamed`), found once from both declarations, so that a field added to
    both travels without a line of copying."""

    def __init__(self, event: type[Event], record: type, renamed: dict[str, str] | None = None) -> None:
        names = {f.name for f in dataclasses.fields(record)}
        renamed = renamed or {}
        self.pairs = tuple(
            (f.name, renamed.get(f.name, f.name))
            for f in dataclasses.fields(event)
            if f.init and renamed.get(f.name, f.name) in names and f.name not in ("ts", "bot_id")
        )

    def of(self, record: object) -> dict[str, Any]:
        """Return the event's keyword arguments taken from `record`."""
        return {field: getattr(record, attribute) for field, attribute in self.pairs}


@dataclass(frozen=True, slots=True)
class OrderEvent(Event):
    """An order changed state (new, sent, open, partially filled, filled, cancelled, rejected, unknown)."""

    type: ClassVar[str] = "order"

    client_order_id: str
    """Our id for the order, written to the ledger before submission."""
    symbol: str
    """Market symbol, e.g. BTC/USDT."""
    side: Side
    """Buy or sell."""
    order_type: OrderType
    """Market or limit."""
    amount: Decimal
    """Ordered amount in the base currency."""
    status: OrderStatus
    """State after the change."""
    filled: Decimal = Decimal(0)
    """Amount filled so far."""
    price: Decimal | None = None
    """Limit price, if any."""
    average_price: Decimal | None = None
    """Average fill price so far."""
    venue_order_id: str | None = None
    """The venue's id once known."""
    reason: str | None = None
    """Why the state changed (rejection text, timeout, reconciliation)."""
    model_sha: str | None = None
    """sha256 of the ONNX model that decided the order."""

    @classmethod
    def of(cls, order: Order, *, ts: datetime, bot_id: str, reason: str | None, model_sha: str | None) -> OrderEvent:
        """Return the `order` event of `order`'s state at `ts`."""
        return cls(ts=ts, bot_id=bot_id, reason=reason, model_sha=model_sha, **_ORDER_FIELDS.of(order))


@dataclass(frozen=True, slots=True)
class FillEvent(Event):
    """One execution of (part of) an order."""

    type: ClassVar[str] = "fill"

    trade_id: str
    """The venue's trade id (unique per venue)."""
    client_order_id: str
    """Our id of the order that filled."""
    symbol: str
    """Market symbol."""
    side: Side
    """Buy or sell."""
    amount: Decimal
    """Filled amount in the base currency."""
    price: Decimal
    """Fill price."""
    fee: Decimal
    """Fee charged."""
    fee_currency: str
    """Currency of the fee."""
    is_maker: bool = False
    """Whether the fill added liquidity."""
    requested_price: Decimal | None = None
    """Reference price the order was decided at, for slippage."""
    slippage_bps: float | None = None
    """Adverse slippage against the requested price, in bps."""

    @classmethod
    def of(cls, fill: Fill, bot_id: str) -> FillEvent:
        """Return the `fill` event of a venue fill, with its slippage against the requested price."""
        slippage = slippage_bps(fill.side, fill.price, fill.requested_price)
        return cls(ts=fill.timestamp, bot_id=bot_id, slippage_bps=slippage, **_FILL_FIELDS.of(fill))


@dataclass(frozen=True, slots=True)
class RoundTrip(TradeResult, Event):
    """One round trip (flat to flat, or to a flip): the fields of `adapters.types.TradeResult` after `ts` and
    `bot_id`, then its duration and the model's ids; shared by the live and the shadow trade events."""

    duration_seconds: float
    """Time from the first entry fill to the closing fill."""
    model_sha: str | None = None
    """sha256 of the model that was trading."""
    run_id: str | None = None
    """Training run id of that model."""


@dataclass(frozen=True, slots=True)
class TradeClosedEvent(RoundTrip):
    """A position of the bot went back to flat (or flipped): one round trip, with its result after fees."""

    type: ClassVar[str] = "trade_closed"


@dataclass(frozen=True, slots=True)
class EquityEvent(Event):
    """A mark-to-market snapshot of the account."""

    type: ClassVar[str] = "equity"

    equity: Decimal
    """Account value in the quote currency."""
    cash: Decimal
    """Quote currency held."""
    positions_value: Decimal
    """Value of the open positions."""
    realized_pnl: Decimal
    """Realized profit so far (after fees)."""
    unrealized_pnl: Decimal
    """Profit of the open positions if closed at the mark."""
    drawdown: float = 0.0
    """Fall from the peak equity, as a fraction (0.1 = 10 %)."""


@dataclass(frozen=True, slots=True)
class StatusEvent(Event):
    """What the bot is doing: trading state, risk state and mode."""

    type: ClassVar[str] = "status"

    state: str
    """Engine state, e.g. starting, running, paused, stopping."""
    risk_state: str
    """Risk manager state: active, reducing or halted."""
    mode: str
    """backtest, paper or live."""
    uptime_s: float = 0.0
    """Seconds since start."""
    message: str | None = None
    """Free-text detail (why paused, what is wrong)."""


@dataclass(frozen=True, slots=True)
class HeartbeatEvent(Event):
    """A periodic sign of life."""

    type: ClassVar[str] = "heartbeat"

    seq: int
    """Heartbeat counter since start."""
    uptime_s: float = 0.0
    """Seconds since start."""


@dataclass(frozen=True, slots=True)
class AlertEvent(Event):
    """Something a human should look at."""

    type: ClassVar[str] = "alert"

    level: AlertLevel
    """info, warning, error or critical."""
    code: str
    """Machine-readable cause, e.g. risk_halted, reconciliation_failed."""
    message: str
    """What happened and what to do."""


@dataclass(frozen=True, slots=True)
class RiskRefusalEvent(Event):
    """The risk manager refused (or could not approve) an order."""

    type: ClassVar[str] = "risk_refusal"

    symbol: str
    """Market symbol of the refused order."""
    reason: str
    """Reason code (see bot.risk.RefusalReason)."""
    message: str
    """Human-readable detail with the numbers involved."""
    risk_state: str
    """Risk state at the time."""
    client_order_id: str | None = None
    """Id of the refused order, if one was planned."""
    requested_amount: Decimal | None = None
    """Amount asked for."""


# --------------------------------------------------------------------------------------------- shadow models
# A shadow model (bot.shadow) trades a virtual book beside the live policy and never sends an order. Its events
# are types of their own, so no consumer of the live `order`, `trade_closed` or `equity` events can mistake them.


@dataclass(frozen=True, slots=True)
class ShadowOrderEvent(Event):
    """A would-be order of a shadow model changed state on its virtual book (never sent to a venue)."""

    type: ClassVar[str] = "shadow_order"

    model: str
    """The shadow model's name."""
    client_order_id: str
    """The virtual order's id."""
    symbol: str
    """Market symbol."""
    side: Side
    """Buy or sell."""
    amount: Decimal
    """Ordered amount in the base currency."""
    status: OrderStatus
    """State on the virtual book."""
    filled: Decimal = Decimal(0)
    """Amount filled so far."""
    average_price: Decimal | None = None
    """Average fill price so far."""
    fee: Decimal = Decimal(0)
    """Fees charged so far (quote)."""
    model_sha: str | None = None
    """sha256 of the shadow's ONNX model."""

    @classmethod
    def of(cls, order: Order, *, ts: datetime, bot_id: str, model: str, model_sha: str | None) -> ShadowOrderEvent:
        """Return the `shadow_order` event of the virtual `order`'s state at `ts`."""
        return cls(ts=ts, bot_id=bot_id, model=model, model_sha=model_sha, **_SHADOW_ORDER_FIELDS.of(order))


@dataclass(frozen=True, slots=True)
class ShadowTradeClosedEvent(RoundTrip):
    """A round trip of a shadow model's virtual book closed."""

    type: ClassVar[str] = "shadow_trade_closed"

    model: str = ""
    """The shadow model's name (after the round trip's fields, which end in defaults)."""


@dataclass(frozen=True, slots=True)
class ShadowEquityEvent(Event):
    """A shadow model's virtual book marked at a close."""

    type: ClassVar[str] = "shadow_equity"

    model: str
    """The shadow model's name."""
    equity: Decimal
    """Virtual book value in the account currency."""
    cash: Decimal
    """Account currency held."""
    positions_value: Decimal
    """Value of the open positions."""
    realized_pnl: Decimal
    """Realized profit after fees since the shadow started."""
    trades: int = 0
    """Round trips closed since the shadow started."""
    agreement: float | None = None
    """Share of this run's decisions where the shadow's target equalled the live policy's."""


@dataclass(frozen=True, slots=True)
class ModelPromotedEvent(Event):
    """A shadow model became the live policy (`promote`)."""

    type: ClassVar[str] = "model_promoted"

    model: str
    """The promoted shadow's name."""
    path: str
    """Its ONNX file."""
    sha256: str
    """Its sha256 (the live model from now on)."""
    previous_sha256: str
    """The model it replaced."""
    position: Literal["kept", "flattened"]
    """What happened to the live position: kept for the new policy, or flattened first."""


_ORDER_FIELDS = _Carried(OrderEvent, Order, {"order_type": "type"})
_FILL_FIELDS = _Carried(FillEvent, Fill)
_SHADOW_ORDER_FIELDS = _Carried(ShadowOrderEvent, Order)

EVENT_TYPES: dict[str, type[Event]] = {
    cls.type: cls
    for cls in (
        OrderEvent,
        FillEvent,
        TradeClosedEvent,
        EquityEvent,
        StatusEvent,
        HeartbeatEvent,
        AlertEvent,
        RiskRefusalEvent,
        ShadowOrderEvent,
        ShadowTradeClosedEvent,
        ShadowEquityEvent,
        ModelPromotedEvent,
    )
}
"""Event classes by their `type` string."""


def from_dict(data: Any) -> Event:
    """Build and validate an event from a decoded JSON mapping; raise EventError on anything malformed."""
    if not isinstance(data, dict):
        raise EventError(f"event must be a JSON object, got {type(data).__name__}")
    kind = data.get("type")
    cls = EVENT_TYPES.get(kind) if isinstance(kind, str) else None
    if cls is None:
        raise EventError(f"unknown event type {kind!r}; known: {', '.join(sorted(EVENT_TYPES))}")
    version = data.get("schema_version")
    if not isinstance(version, int) or isinstance(version, bool) or version != EVENT_SCHEMA_VERSION:
        raise EventError(f"{kind} event: schema_version must be {EVENT_SCHEMA_VERSION}, got {version!r}")
    hints = _hints(cls)
    unknown = set(data) - set(hints) - {"type", "schema_version"}
    if unknown:
        raise EventError(f"{kind} event: unknown field(s) {', '.join(sorted(unknown))}")
    kwargs: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        if f.name not in data:
            if f.default is dataclasses.MISSING:
                raise EventError(f"{kind} event: missing field {f.name!r}")
            continue
        kwargs[f.name] = _load(hints[f.name], data[f.name], f"{kind}.{f.name}")
    return cls(**kwargs)


def from_json(text: str | bytes) -> Event:
    """Parse and validate one JSON event; raise EventError on anything malformed."""
    try:
        data = json.loads(text, parse_constant=_reject_constant)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise EventError(f"event is not valid JSON: {e}") from e
    return from_dict(data)


def _reject_constant(name: str) -> Any:
    raise EventError(f"event JSON contains {name}, which is not valid JSON")


_HINTS: dict[str, dict[str, Any]] = {}


def _hints(cls: type[Event]) -> dict[str, Any]:
    hints = _HINTS.get(cls.type)
    if hints is None:
        all_hints = get_type_hints(cls)
        hints = _HINTS[cls.type] = {f.name: all_hints[f.name] for f in dataclasses.fields(cls)}
    return hints


def _dump(value: Any) -> Any:
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, datetime):
        return value.astimezone(UTC).isoformat()
    if isinstance(value, StrEnum):
        return value.value
    return value


def optional_inner(tp: Any) -> tuple[Any, bool]:
    """Return (the type, whether None is allowed) of a field annotation such as `Decimal | None` (the events' and
    the ledger rows' conversions read it)."""
    origin = get_origin(tp)
    if origin is typing.Union or origin is types.UnionType:
        args = [a for a in get_args(tp) if a is not type(None)]
        if len(args) == 1 and len(get_args(tp)) == 2:
            return args[0], True
    return tp, False


def _load(tp: Any, value: Any, key: str) -> Any:
    """Convert a JSON value to the field's Python type, or raise EventError naming `key`."""
    inner, optional = optional_inner(tp)
    if value is None:
        if optional:
            return None
        raise EventError(f"{key}: must not be null")
    if inner is Decimal:
        if not isinstance(value, str):
            raise EventError(f"{key}: expected a decimal string, got {value!r}")
        try:
            return Decimal(value)
        except InvalidOperation:
            raise EventError(f"{key}: {value!r} is not a decimal number") from None
    if inner is datetime:
        if not isinstance(value, str):
            raise EventError(f"{key}: expected an ISO-8601 timestamp string, got {value!r}")
        try:
            return datetime.fromisoformat(value)
        except ValueError:
            raise EventError(f"{key}: {value!r} is not an ISO-8601 timestamp") from None
    if isinstance(inner, type) and issubclass(inner, StrEnum):
        try:
            return inner(value)
        except ValueError:
            allowed = ", ".join(m.value for m in inner)
            raise EventError(f"{key}: must be one of {allowed}, got {value!r}") from None
    if get_origin(inner) is Literal:
        if value not in get_args(inner):
            raise EventError(f"{key}: must be one of {', '.join(get_args(inner))}, got {value!r}")
        return value
    if inner is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise EventError(f"{key}: expected a number, got {value!r}")
        return float(value)
    if inner is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise EventError(f"{key}: expected an integer, got {value!r}")
        return value
    if inner is bool:
        if not isinstance(value, bool):
            raise EventError(f"{key}: expected true or false, got {value!r}")
        return value
    if inner is str:
        if not isinstance(value, str):
            raise EventError(f"{key}: expected a string, got {value!r}")
        return value
    raise EventError(f"{key}: unsupported field type {tp!r}")  # pragma: no cover - schema bug


def _validate(event: Event) -> None:
    """Check every field's value against its annotation (types, finiteness, UTC awareness)."""
    hints = _hints(type(event))
    for name, tp in hints.items():
        value = getattr(event, name)
        key = f"{event.type}.{name}"
        inner, optional = optional_inner(tp)
        if value is None:
            if not optional:
                raise EventError(f"{key}: must not be None")
            continue
        if inner is Decimal:
            if not isinstance(value, Decimal) or not value.is_finite():
                raise EventError(f"{key}: expected a finite Decimal, got {value!r}")
        elif inner is datetime:
            if not isinstance(value, datetime) or value.tzinfo is None or value.utcoffset() is None:
                raise EventError(f"{key}: expected a timezone-aware (UTC) datetime, got {value!r}")
        elif inner is float:
            if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
                raise EventError(f"{key}: expected a finite number, got {value!r}")
        elif inner is int:
            if isinstance(value, bool) or not isinstance(value, int):
                raise EventError(f"{key}: expected an integer, got {value!r}")
        elif isinstance(inner, type) and issubclass(inner, StrEnum):
            if not isinstance(value, inner):
                raise EventError(f"{key}: expected {inner.__name__}, got {value!r}")
        elif get_origin(inner) is Literal:
            if value not in get_args(inner):
                raise EventError(f"{key}: must be one of {', '.join(get_args(inner))}, got {value!r}")
        elif isinstance(inner, type) and not isinstance(value, inner):
            raise EventError(f"{key}: expected {inner.__name__}, got {value!r}")
