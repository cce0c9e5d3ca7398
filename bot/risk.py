"""Risk manager: the limits every order passes between the policy and the venue, and the ACTIVE/REDUCING/HALTED state.

States:

- ``ACTIVE``: orders pass the limits below (and may be shrunk to fit them).
- ``REDUCING``: only orders that bring a position toward flat pass (an order that would flip it is cut to
  close it). Entered by command (:meth:`RiskManager.reduce_only`), or automatically when the day's loss or the
  drawdown reaches ``reduce_at`` of its limit; the automatic kind returns to ACTIVE once both are back below.
- ``HALTED``: nothing passes, except orders that flatten a position when ``flatten_on_halt`` is set. Entered by
  command (:meth:`RiskManager.halt`) or when the day's loss or the drawdown reaches its limit. Only
  :meth:`RiskManager.resume` (a command) leaves it, also across restarts: the state is kept in the ledger's
  bot state and read back when a new manager opens the same ledger.

Limits (RiskConfig): notional per symbol and in total, notional per order, orders per minute, a price band
around the last price, stale data (no candle for ``stale_after_timeframes`` timeframes → no new exposure), daily
loss (fraction of the equity at the start of the UTC day) and drawdown (fraction of the peak equity).

Protections (Freqtrade's, per symbol; none applies to an order that only reduces a position):

- cooldown: after a losing round trip (:meth:`RiskManager.on_trade_closed`), no new exposure for
  ``cooldown_candles`` candles or ``cooldown_s`` seconds, whichever is longer;
- stop-loss: with ``stop_loss`` set, :meth:`RiskManager.on_candle` returns an :class:`ExitIntent` once the price
  falls that fraction below the entry (rises above it for a short);
- stop-loss guard: ``stoploss_guard_trades`` stop-outs within ``stoploss_guard_window_s`` lock the symbol for
  ``stoploss_guard_lock_s``.

Refusals: every refusal is a structured :class:`Refusal`, counted by reason (``refusals``, for the metrics), a
``risk_refusal`` event to the sinks and a call of ``on_refusal``; the ``risk_refused`` log line is written only
when a symbol's refusal reason changes, with how often the previous one repeated. Time is always passed in;
nothing sleeps.

Persistence: the state is kept in the ledger's bot state. With a :class:`StateWriter` the writes are handed to
its worker thread (coalesced, never on the caller's thread: the async daemon's event loop does no SQLite I/O);
without one they are written inline (backtests, tests).
"""

from __future__ import annotations

import dataclasses
import json
import threading
from collections import Counter, deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from enum import StrEnum
from typing import Protocol

import structlog

from adapters.errors import InvalidOrder
from adapters.types import Market, OrderRequest, Side
from bot.events import AlertEvent, AlertLevel, Event, RiskRefusalEvent

log = structlog.get_logger()

ZERO = Decimal(0)
ONE = Decimal(1)


class RiskState(StrEnum):
    """Trading permission level."""

    ACTIVE = "active"
    REDUCING = "reducing"
    HALTED = "halted"


class RefusalReason(StrEnum):
    """Why the risk manager refused an order (the `reason` of refusal events and metrics)."""

    HALTED = "halted"
    REDUCE_ONLY = "reduce_only"
    NO_PRICE = "no_price"
    PRICE_BAND = "price_band"
    STALE_DATA = "stale_data"
    RATE_LIMIT = "rate_limit"
    POSITION_LIMIT = "position_limit"
    TOTAL_LIMIT = "total_limit"
    BELOW_MINIMUM = "below_minimum"
    COOLDOWN = "cooldown"
    STOPLOSS_GUARD = "stoploss_guard"


@dataclass(frozen=True)
class RiskConfig:
    """Risk limits (config/bot/); money in the quote currency, losses as fractions of equity."""

    max_position_notional: Decimal = Decimal("1000")
    """Largest absolute position value per symbol (amount × last price)."""
    max_total_notional: Decimal = Decimal("2000")
    """Largest sum of absolute position values over all symbols."""
    max_order_notional: Decimal = Decimal("500")
    """Largest value of one order; a larger order is shrunk to it."""
    max_orders_per_minute: int = 10
    """Orders approved in any rolling 60 s; more are refused."""
    price_band_bps: Decimal = Decimal("200")
    """Largest distance of a limit (or decision) price from the last price, in bps."""
    max_daily_loss: Decimal = Decimal("0.05")
    """Loss since the start of the UTC day, as a fraction of that day's starting equity, that halts trading."""
    max_drawdown: Decimal = Decimal("0.20")
    """Fall from the peak equity, as a fraction of the peak, that halts trading."""
    reduce_at: Decimal = Decimal("0.8")
    """Share of either loss limit at which the state becomes REDUCING; 1 turns the automatic REDUCING off."""
    stale_after_timeframes: int = 2
    """Candles missing (in timeframes since the last close) after which no new exposure is taken."""
    flatten_on_halt: bool = False
    """When halted, still allow (and ask for) orders that flatten positions."""
    cooldown_candles: int = 0
    """After a losing round trip, candles during which the symbol takes no new exposure (0: off)."""
    cooldown_s: float = 0.0
    """The same cooldown in seconds (the longer of the two applies; 0: off)."""
    stop_loss: Decimal | None = None
    """Close a position once the price is this fraction below its entry (above, for a short); None: off."""
    stoploss_guard_trades: int = 0
    """Stop-outs within `stoploss_guard_window_s` that lock the symbol (0: off)."""
    stoploss_guard_window_s: float = 86_400.0
    """Window the stop-outs are counted in, in seconds."""
    stoploss_guard_lock_s: float = 43_200.0
    """How long the stop-loss guard locks the symbol against new exposure, in seconds."""

    def __post_init__(self) -> None:
        for name in ("max_position_notional", "max_total_notional", "max_order_notional", "price_band_bps"):
            value = getattr(self, name)
            if not isinstance(value, Decimal) or not value.is_finite() or value <= 0:
                raise ValueError(f"risk.{name} must be a finite Decimal > 0, was {value!r}")
        for name in ("max_daily_loss", "max_drawdown", "reduce_at"):
            value = getattr(self, name)
            if not isinstance(value, Decimal) or not ZERO < value <= ONE:
                raise ValueError(f"risk.{name} must be a Decimal fraction in (0, 1], was {value!r}")
        if self.max_orders_per_minute < 1:
            raise ValueError(f"risk.max_orders_per_minute must be >= 1, was {self.max_orders_per_minute}")
        if self.stale_after_timeframes < 1:
            raise ValueError(f"risk.stale_after_timeframes must be >= 1, was {self.stale_after_timeframes}")
        for name in ("cooldown_candles", "stoploss_guard_trades"):
            if getattr(self, name) < 0:
                raise ValueError(f"risk.{name} must be >= 0, was {getattr(self, name)}")
        for name in ("cooldown_s", "stoploss_guard_window_s", "stoploss_guard_lock_s"):
            if not getattr(self, name) >= 0:
                raise ValueError(f"risk.{name} must be a number of seconds >= 0, was {getattr(self, name)}")
        if self.stop_loss is not None and (not isinstance(self.stop_loss, Decimal) or not ZERO < self.stop_loss < ONE):
            raise ValueError(f"risk.stop_loss must be a Decimal fraction in (0, 1) or null, was {self.stop_loss!r}")


@dataclass(frozen=True, slots=True)
class RiskContext:
    """What the risk manager needs to know about the market and the account for one order."""

    now: datetime
    """Current time (UTC)."""
    last_price: Decimal
    """Last traded (or close) price of the order's symbol."""
    position: Decimal
    """Current signed position of the order's symbol, in the base currency."""
    total_notional: Decimal
    """Sum of absolute position values over all symbols, this one included, at current prices."""
    last_candle_close: datetime | None
    """Close time (open time + timeframe) of the latest candle received for the symbol."""
    timeframe_s: float
    """Length of the symbol's candles in seconds."""
    market: Market | None = None
    """The market's rules, to round a shrunk order and check its minimum."""
    reference_price: Decimal | None = None
    """Price the decision was made at (checked against the band when the order has no limit price)."""
    quote_rate: Decimal = Decimal(1)
    """Value of one unit of the symbol's quote currency in the account currency the notional limits are in."""


@dataclass(frozen=True, slots=True)
class Refusal:
    """A structured refusal: reason code, message with the numbers, and what was refused."""

    reason: RefusalReason
    message: str
    symbol: str
    risk_state: RiskState
    client_order_id: str | None = None
    requested_amount: Decimal | None = None


@dataclass(frozen=True, slots=True)
class RiskDecision:
    """The order to send (possibly shrunk) or the refusal."""

    request: OrderRequest | None
    refusal: Refusal | None = None
    adjustments: tuple[str, ...] = ()
    """How an approved order was changed to fit the limits."""

    @property
    def approved(self) -> bool:
        """Whether an order may be sent."""
        return self.request is not None


@dataclass(frozen=True, slots=True)
class ExitIntent:
    """An order the risk manager asks for outside the policy: close a position (the stop-loss)."""

    symbol: str
    side: Side
    amount: Decimal
    """Base amount to close (the whole position)."""
    reason: str
    trigger_price: Decimal
    """The stop price the candle's price crossed."""


class StateStore(Protocol):
    """Where the risk state survives restarts: the ledger's bot state."""

    def get_state(self, key: str) -> str | None:
        """Return one value, or None."""
        ...

    def set_states(self, values: Mapping[str, str], *, ts: datetime | None = None) -> None:
        """Set several values durably."""
        ...


class StateWriter:
    """Writes risk state to a store from its own worker thread: `submit` never blocks on I/O (values coalesce)."""

    def __init__(self, store: StateStore) -> None:
        """Start the worker thread writing to `store` (a Ledger)."""
        self._store = store
        self._pending: dict[str, str] = {}
        self._ts: datetime | None = None
        self._busy = False
        self._closed = False
        self.writes = 0
        """Batches written."""
        self.errors = 0
        """Batches that failed (logged; the next submit writes the latest values again)."""
        self._cond = threading.Condition()
        self._thread = threading.Thread(target=self._run, name="risk-state-writer", daemon=True)
        self._thread.start()

    def submit(self, values: Mapping[str, str], ts: datetime) -> None:
        """Queue `values` (later values of a key replace earlier ones); returns at once."""
        with self._cond:
            if self._closed:
                raise RuntimeError("StateWriter.submit after close")
            self._pending.update(values)
            self._ts = ts
            self._cond.notify_all()

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._pending and not self._closed:
                    self._cond.wait()
                if not self._pending:
                    return
                batch, ts = self._pending, self._ts
                self._pending, self._busy = {}, True
            try:
                self._store.set_states(batch, ts=ts)
                self.writes += 1
            except Exception as e:  # a full disk must not kill the thread silently
                self.errors += 1
                log.error("risk_state_write_failed", error=f"{type(e).__name__}: {e}", keys=sorted(batch))
            with self._cond:
                self._busy = False
                self._cond.notify_all()

    def flush(self) -> None:
        """Block until everything submitted so far is written (call it off the event loop)."""
        with self._cond:
            while self._pending or self._busy:
                self._cond.wait()

    def close(self) -> None:
        """Write what is pending and stop the thread."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        self._thread.join()


KEY_STATE = "risk.state"
KEY_REASON = "risk.reason"
KEY_AUTO = "risk.auto"
KEY_PEAK = "risk.peak_equity"
KEY_DAY = "risk.day"
KEY_DAY_START = "risk.day_start_equity"
KEY_PROTECTIONS = "risk.protections"
"""JSON of the protections' memory: each symbol's last loss (cooldown), its recent stop-outs and its guard lock."""


def _utc(text: object) -> datetime:
    """Parse a stored ISO-8601 instant; refuse one without a timezone (TypeError/ValueError name the value)."""
    if not isinstance(text, str):
        raise TypeError(f"expected an ISO-8601 string, got {text!r}")
    ts = datetime.fromisoformat(text)
    if ts.tzinfo is None:
        raise ValueError(f"timestamp {text!r} has no timezone")
    return ts.astimezone(UTC)


def _sign(value: Decimal) -> int:
    return (value > 0) - (value < 0)


class RiskManager:
    """Check orders against the limits and keep the ACTIVE/REDUCING/HALTED state (persisted in `store`)."""

    def __init__(
        self,
        config: RiskConfig,
        store: StateStore | None = None,
        *,
        bot_id: str = "bot",
        on_refusal: Callable[[Refusal], None] | None = None,
        emit: Callable[[Event], None] | None = None,
        writer: StateWriter | None = None,
        shadow: str | None = None,
    ) -> None:
        """Restore the state from `store` (a Ledger) if it holds one; otherwise start ACTIVE.

        `shadow` names the shadow model whose virtual book this manager guards (`bot.shadow`): its lines carry
        ``shadow=<name>`` and its state changes are info, not the live bot's warnings and errors.

        With `writer`, state changes are written through it (off the caller's thread); otherwise to `store` inline.
        """
        self.config = config
        self._store = store
        self._writer = writer
        self._last_refusal: dict[str, tuple[RefusalReason, int]] = {}
        self._losses: dict[str, datetime] = {}
        self._stopouts: dict[str, deque[datetime]] = {}
        self._locked_until: dict[str, datetime] = {}
        self._stop_issued: set[str] = set()
        self.bot_id = bot_id
        self.shadow = shadow
        self._log = log.bind(shadow=shadow) if shadow is not None else log
        self._on_refusal = on_refusal
        self._emit = emit
        self.refusals: Counter[RefusalReason] = Counter()
        """Refusals by reason since start."""
        self._approved: deque[datetime] = deque()
        self._state = RiskState.ACTIVE
        self._reason = ""
        self._auto = False
        self._peak: Decimal | None = None
        self._day: date | None = None
        self._day_start: Decimal | None = None
        self._last_equity: Decimal | None = None
        self._day_span: tuple[date, datetime, datetime] | None = None
        """The UTC day `update_equity` saw last, with its [start, end) instants (most candles fall in it)."""
        self._soft_limits: tuple[RiskConfig, Decimal, Decimal] | None = None
        self._checked: tuple[Decimal, date, RiskState, bool, RiskConfig, Decimal | None, Decimal | None] | None = None
        """What the last `update_equity` left: the same equity, day, state, limits, peak and day start again
        give the same result with nothing to do (a flat bot's equity between orders)."""
        """The config, and its daily loss and drawdown at which the state becomes REDUCING."""
        if store is not None:
            self._restore(store)

    def _restore(self, store: StateStore) -> None:
        state = store.get_state(KEY_STATE)
        if state is not None:
            try:
                self._state = RiskState(state)
            except ValueError:
                # An unreadable state must not silently allow trading.
                self._state = RiskState.HALTED
                log.error("risk_state_unreadable", value=state)
        self._reason = store.get_state(KEY_REASON) or ""
        self._auto = store.get_state(KEY_AUTO) == "1"
        peak = store.get_state(KEY_PEAK)
        self._peak = None if peak is None else Decimal(peak)
        day = store.get_state(KEY_DAY)
        self._day = None if day is None else date.fromisoformat(day)
        start = store.get_state(KEY_DAY_START)
        self._day_start = None if start is None else Decimal(start)
        protections = store.get_state(KEY_PROTECTIONS)
        if protections is not None:
            try:
                self._restore_protections(protections)
            except (ValueError, TypeError, AttributeError) as e:
                # A cooldown or lock that cannot be read must not silently lapse: halt until an operator looks.
                self._state, self._reason = RiskState.HALTED, f"unreadable {KEY_PROTECTIONS} in the ledger: {e}"
                log.error("risk_protections_unreadable", error=str(e))
        if self._state is not RiskState.ACTIVE:
            log.warning("risk_state_restored", state=self._state.value, reason=self._reason)

    def _restore_protections(self, text: str) -> None:
        data = json.loads(text)
        losses = {str(s): _utc(ts) for s, ts in data["losses"].items()}
        stopouts = {str(s): deque(_utc(ts) for ts in times) for s, times in data["stopouts"].items()}
        locks = {str(s): _utc(ts) for s, ts in data["locked_until"].items()}
        self._losses, self._stopouts, self._locked_until = losses, stopouts, locks
        if locks or losses:
            log.info("risk_protections_restored", locked=sorted(locks), cooldowns=sorted(losses))

    def _protections_json(self) -> str:
        return json.dumps(
            {
                "losses": {s: ts.isoformat() for s, ts in sorted(self._losses.items())},
                "stopouts": {s: [ts.isoformat() for ts in times] for s, times in sorted(self._stopouts.items())},
                "locked_until": {s: ts.isoformat() for s, ts in sorted(self._locked_until.items())},
            },
            separators=(",", ":"),
        )

    @property
    def state(self) -> RiskState:
        """Current state."""
        return self._state

    @property
    def reason(self) -> str:
        """Why the state is what it is (empty when ACTIVE)."""
        return self._reason

    @property
    def should_flatten(self) -> bool:
        """Whether the engine should close all positions now (halted with flatten_on_halt)."""
        return self._state is RiskState.HALTED and self.config.flatten_on_halt

    # ------------------------------------------------------------------------------------- state changes

    def _persist(self, now: datetime) -> None:
        if self._store is None and self._writer is None:
            return
        values = {KEY_STATE: self._state.value, KEY_REASON: self._reason, KEY_AUTO: "1" if self._auto else "0"}
        if self._peak is not None:
            values[KEY_PEAK] = str(self._peak)
        if self._day is not None:
            values[KEY_DAY] = self._day.isoformat()
        if self._day_start is not None:
            values[KEY_DAY_START] = str(self._day_start)
        self._write(values, now)

    def _persist_protections(self, now: datetime) -> None:
        # Only when a trade changed them: not at every new equity peak, which `_persist` writes.
        if self._store is not None or self._writer is not None:
            self._write({KEY_PROTECTIONS: self._protections_json()}, now)

    def _write(self, values: Mapping[str, str], now: datetime) -> None:
        if self._writer is not None:
            self._writer.submit(values, now)  # merged per key with what is pending
        elif self._store is not None:
            self._store.set_states(values, ts=now)

    def _set_state(self, state: RiskState, reason: str, now: datetime, *, auto: bool) -> None:
        previous = self._state
        self._state, self._reason, self._auto = state, reason, auto
        self._persist(now)
        if previous is state:
            return
        levels: dict[RiskState, AlertLevel] = {
            RiskState.HALTED: "critical",
            RiskState.REDUCING: "warning",
            RiskState.ACTIVE: "info",
        }
        level = levels[state]
        log_fn = log.error if state is RiskState.HALTED else log.warning
        if self.shadow is not None:  # a shadow's virtual book halting is information, not an incident
            log_fn = self._log.info
        log_fn("risk_state_changed", from_state=previous.value, to_state=state.value, reason=reason, automatic=auto)
        if self._emit is not None:
            self._emit(
                AlertEvent(
                    ts=now,
                    bot_id=self.bot_id,
                    level=level,
                    code=f"risk_{state.value}",
                    message=f"risk state {previous.value} -> {state.value}: {reason}",
                )
            )

    def halt(self, reason: str, now: datetime) -> None:
        """Stop all new orders until `resume` (a command); survives restarts."""
        self._set_state(RiskState.HALTED, reason, now, auto=False)

    def reduce_only(self, reason: str, now: datetime) -> None:
        """Allow only orders that reduce positions until `resume`."""
        if self._state is not RiskState.HALTED:
            self._set_state(RiskState.REDUCING, reason, now, auto=False)

    def resume(self, now: datetime) -> None:
        """Return to ACTIVE (a command); the loss limits then count from the last equity seen."""
        if self._last_equity is not None:
            self._peak = self._day_start = self._last_equity
            self._day = now.astimezone(UTC).date()
        self._set_state(RiskState.ACTIVE, "", now, auto=False)

    def update_equity(self, equity: Decimal, now: datetime) -> RiskState:
        """Track peak and start-of-day equity; halt or reduce when the loss limits are reached."""
        today = self._utc_day(now)
        checked = self._checked
        if (
            checked is not None
            and checked[0] == equity
            and checked[1] == today
            and checked[2] is self._state
            and checked[3] is self._auto
            and checked[4] is self.config
            and checked[5] is self._peak
            and checked[6] is self._day_start
        ):
            self._last_equity = equity
            return self._state
        state = self._update_equity(equity, now, today)
        self._checked = (equity, today, state, self._auto, self.config, self._peak, self._day_start)
        return state

    def _update_equity(self, equity: Decimal, now: datetime, today: date) -> RiskState:
        self._last_equity = equity
        changed = False
        if self._day != today or self._day_start is None:
            self._day, self._day_start, changed = today, equity, True
        if self._peak is None or equity > self._peak:
            self._peak, changed = equity, True
        daily_loss = (self._day_start - equity) / self._day_start if self._day_start > 0 else ZERO
        drawdown = (self._peak - equity) / self._peak if self._peak > 0 else ZERO
        cfg = self.config
        soft_limits = self._soft_limits
        if soft_limits is None or soft_limits[0] is not cfg:
            limits = cfg.reduce_at * cfg.max_daily_loss, cfg.reduce_at * cfg.max_drawdown
            soft_limits = self._soft_limits = (cfg, *limits)
        if self._state is not RiskState.HALTED:
            if daily_loss >= cfg.max_daily_loss:
                self._set_state(
                    RiskState.HALTED,
                    f"daily loss {daily_loss:.4f} reached the limit "
                    f"{cfg.max_daily_loss} (equity {equity}, day start {self._day_start})",
                    now,
                    auto=True,
                )
                return self._state
            if drawdown >= cfg.max_drawdown:
                self._set_state(
                    RiskState.HALTED,
                    f"drawdown {drawdown:.4f} reached the limit {cfg.max_drawdown} "
                    f"(equity {equity}, peak {self._peak})",
                    now,
                    auto=True,
                )
                return self._state
            soft = daily_loss >= soft_limits[1] or drawdown >= soft_limits[2]
            manual_reducing = self._state is RiskState.REDUCING and not self._auto
            if soft and cfg.reduce_at < ONE and self._state is RiskState.ACTIVE:
                self._set_state(
                    RiskState.REDUCING,
                    f"daily loss {daily_loss:.4f} / drawdown {drawdown:.4f} near the limits",
                    now,
                    auto=True,
                )
                return self._state
            if not soft and self._state is RiskState.REDUCING and not manual_reducing:
                self._set_state(RiskState.ACTIVE, "", now, auto=False)
                return self._state
        if changed:
            self._persist(now)
        return self._state

    def _utc_day(self, now: datetime) -> date:
        span = self._day_span
        if span is not None and now.tzinfo is not None and span[1] <= now < span[2]:
            return span[0]
        today = now.astimezone(UTC).date()
        start = datetime(today.year, today.month, today.day, tzinfo=UTC)
        self._day_span = (today, start, start + timedelta(days=1))
        return today

    # ------------------------------------------------------------------------------------- checks

    def _refuse(self, reason: RefusalReason, message: str, request: OrderRequest, now: datetime) -> RiskDecision:
        refusal = Refusal(reason, message, request.symbol, self._state, request.client_order_id, request.amount)
        self.refusals[reason] += 1
        last = self._last_refusal.get(request.symbol)
        if last is None or last[0] is not reason:
            # One line per change of reason, not one per candle; it says how often the previous one repeated.
            self._log.warning(
                "risk_refused",
                reason=reason.value,
                symbol=request.symbol,
                client_order_id=request.client_order_id,
                amount=str(request.amount),
                risk_state=self._state.value,
                detail=message,
                previous_reason=None if last is None else last[0].value,
                previous_repeated=0 if last is None else last[1],
                total=self.refusals[reason],
            )
            self._last_refusal[request.symbol] = (reason, 1)
        else:
            self._last_refusal[request.symbol] = (reason, last[1] + 1)
        if self._on_refusal is not None:
            self._on_refusal(refusal)
        if self._emit is not None:
            self._emit(
                RiskRefusalEvent(
                    ts=now,
                    bot_id=self.bot_id,
                    symbol=request.symbol,
                    reason=reason.value,
                    message=message,
                    risk_state=self._state.value,
                    client_order_id=request.client_order_id,
                    requested_amount=request.amount,
                )
            )
        return RiskDecision(None, refusal)

    def refusal_counts(self) -> dict[str, int]:
        """Refusals since start by reason value (for the metrics)."""
        return {reason.value: n for reason, n in self.refusals.items()}

    # ------------------------------------------------------------------------------------- protections

    def on_candle(
        self, symbol: str, price: Decimal, now: datetime, position: Decimal, entry_price: Decimal
    ) -> ExitIntent | None:
        """Check the stop-loss of `symbol`'s position at this candle's price; return the exit to send, or None.

        The intent comes back at every candle while the price stays past the stop (send it once; the order
        manager blocks the symbol while it is pending). O(1).
        """
        stop = self.config.stop_loss
        if stop is None or position == 0 or entry_price <= 0:
            self._stop_issued.discard(symbol)
            return None
        if position > 0:
            trigger = entry_price * (ONE - stop)
            if price > trigger:
                return None
            side = Side.SELL
        else:
            trigger = entry_price * (ONE + stop)
            if price < trigger:
                return None
            side = Side.BUY
        reason = f"stop-loss: price {price} crossed {trigger} ({stop} from the entry {entry_price})"
        if symbol not in self._stop_issued:
            self._stop_issued.add(symbol)
            self._log.warning("stop_loss_triggered", symbol=symbol, price=str(price), trigger=str(trigger))
        return ExitIntent(symbol, side, abs(position), reason, trigger)

    def on_trade_closed(
        self, symbol: str, realized_pnl: Decimal, now: datetime, *, stop_out: bool | None = None
    ) -> None:
        """Record a closed round trip: a loss starts the cooldown; a stop-out counts toward the stop-loss guard.

        `stop_out` None: the trade counts as stopped out when this manager issued a stop-loss for the symbol.
        """
        stopped = symbol in self._stop_issued if stop_out is None else stop_out
        self._stop_issued.discard(symbol)
        cfg = self.config
        cooling = realized_pnl < 0 and (cfg.cooldown_candles > 0 or cfg.cooldown_s > 0)
        if cooling:
            self._losses[symbol] = now
        if not stopped or cfg.stoploss_guard_trades <= 0:
            if cooling:
                self._persist_protections(now)  # a restart keeps the cooldown
            return
        window = self._stopouts.setdefault(symbol, deque())
        window.append(now)
        start = now - timedelta(seconds=cfg.stoploss_guard_window_s)
        while window and window[0] < start:
            window.popleft()
        if len(window) >= cfg.stoploss_guard_trades:
            until = now + timedelta(seconds=cfg.stoploss_guard_lock_s)
            self._locked_until[symbol] = until
            window.clear()
            message = (
                f"{symbol}: {cfg.stoploss_guard_trades} stop-outs within {cfg.stoploss_guard_window_s:g} s: "
                f"no new exposure until {until.isoformat()}"
            )
            self._log.warning("stoploss_guard_locked", symbol=symbol, until=until.isoformat())
            if self._emit is not None:
                self._emit(
                    AlertEvent(ts=now, bot_id=self.bot_id, level="warning", code="stoploss_guard", message=message)
                )
        self._persist_protections(now)  # a restart keeps the cooldown, the stop-outs counted so far and the lock

    def locked_until(self, symbol: str) -> datetime | None:
        """When the stop-loss guard's lock of `symbol` ends (None when not locked)."""
        return self._locked_until.get(symbol)

    def _protection_refusal(self, symbol: str, ctx: RiskContext) -> tuple[RefusalReason, str] | None:
        now = ctx.now
        until = self._locked_until.get(symbol)
        if until is not None:
            if now < until:
                return RefusalReason.STOPLOSS_GUARD, f"locked by the stop-loss guard until {until.isoformat()}"
            del self._locked_until[symbol]
        loss_at = self._losses.get(symbol)
        if loss_at is not None:
            cfg = self.config
            cooldown = max(cfg.cooldown_candles * ctx.timeframe_s, cfg.cooldown_s)
            ends = loss_at + timedelta(seconds=cooldown)
            if now < ends:
                return RefusalReason.COOLDOWN, f"cooldown after a losing trade until {ends.isoformat()}"
            del self._losses[symbol]
        return None

    # ------------------------------------------------------------------------------------- checks

    def check(self, request: OrderRequest, ctx: RiskContext, *, protective: bool = False) -> RiskDecision:
        """Approve `request` (possibly shrunk to fit the limits) or refuse it with a reason.

        `protective` (a stop-loss exit, a flatten): an order that only brings the position toward flat passes
        the risk state, the protections, the price band and the orders-per-minute limit.
        """
        cfg = self.config
        now = ctx.now
        price = ctx.last_price
        if not price.is_finite() or price <= 0:
            return self._refuse(RefusalReason.NO_PRICE, f"no valid last price ({price})", request, now)
        if not ctx.quote_rate.is_finite() or ctx.quote_rate <= 0:
            return self._refuse(
                RefusalReason.NO_PRICE, f"no price to value the quote currency ({ctx.quote_rate})", request, now
            )
        pos = ctx.position
        sign = request.side.sign
        amount = request.amount
        adjustments: list[str] = []

        new_pos = pos + sign * amount
        flips = pos != 0 and _sign(new_pos) == -_sign(pos)
        reduces = abs(new_pos) < abs(pos) and not flips
        if protective and (reduces or flips):
            if flips:
                amount = abs(pos)
                adjustments.append("cut to close without flipping (protective)")
            return self._approve(request, amount, now, adjustments, ctx)
        if (flips or abs(new_pos) > abs(pos)) and (self._locked_until or self._losses):
            protection = self._protection_refusal(request.symbol, ctx)
            if protection is not None:
                return self._refuse(protection[0], protection[1], request, now)
        if self._state is not RiskState.ACTIVE:
            halted = self._state is RiskState.HALTED
            if halted and not cfg.flatten_on_halt:
                return self._refuse(RefusalReason.HALTED, f"trading halted: {self._reason}", request, now)
            if not (reduces or flips):
                code = RefusalReason.HALTED if halted else RefusalReason.REDUCE_ONLY
                return self._refuse(
                    code,
                    f"state {self._state.value} allows only orders toward flat "
                    f"(position {pos}, order {request.side.value} {amount})",
                    request,
                    now,
                )
            if flips:
                amount = abs(pos)
                adjustments.append(f"cut to {amount} to close without flipping ({self._state.value})")
                new_pos, flips, reduces = ZERO, False, True

        check_price = request.price if request.price is not None else ctx.reference_price
        if check_price is not None:
            distance_bps = abs(check_price - price) / price * 10_000
            if distance_bps > cfg.price_band_bps:
                return self._refuse(
                    RefusalReason.PRICE_BAND,
                    f"price {check_price} is {distance_bps:.1f} bps from "
                    f"the last price {price} (band {cfg.price_band_bps} bps)",
                    request,
                    now,
                )

        increases = abs(new_pos) > abs(pos)
        if increases:
            stale_after = timedelta(seconds=cfg.stale_after_timeframes * ctx.timeframe_s)
            if ctx.last_candle_close is None or now - ctx.last_candle_close > stale_after:
                return self._refuse(
                    RefusalReason.STALE_DATA,
                    f"no candle since {ctx.last_candle_close} "
                    f"(> {cfg.stale_after_timeframes} timeframes of {ctx.timeframe_s:g} s): no new "
                    "exposure",
                    request,
                    now,
                )

        window_start = now - timedelta(seconds=60)
        while self._approved and self._approved[0] <= window_start:
            self._approved.popleft()
        if len(self._approved) >= cfg.max_orders_per_minute:
            return self._refuse(
                RefusalReason.RATE_LIMIT,
                f"{len(self._approved)} orders in the last minute (limit {cfg.max_orders_per_minute})",
                request,
                now,
            )

        # Notional limits are in the account currency: a cross pair's (ETH/BTC) price is converted first.
        value_price = price * ctx.quote_rate
        if amount * value_price > cfg.max_order_notional:
            amount = cfg.max_order_notional / value_price
            adjustments.append(f"shrunk to the max order notional {cfg.max_order_notional}")
            new_pos = pos + sign * amount
        if abs(new_pos) > abs(pos):
            cap_position = cfg.max_position_notional / value_price
            cap_total = abs(pos) + (cfg.max_total_notional - ctx.total_notional) / value_price
            cap = min(cap_position, cap_total)
            if abs(new_pos) > cap:
                code = RefusalReason.POSITION_LIMIT if cap_position <= cap_total else RefusalReason.TOTAL_LIMIT
                same_side = _sign(new_pos) == _sign(pos) or pos == 0
                # When flipping: close, then open at most `cap` the other way.
                allowed = cap - abs(pos) if same_side else abs(pos) + max(cap, ZERO)
                if allowed <= 0:
                    limit = (
                        cfg.max_position_notional if code is RefusalReason.POSITION_LIMIT else cfg.max_total_notional
                    )
                    return self._refuse(
                        code, f"position {pos} at {price} is already at the {code.value} {limit}", request, now
                    )
                amount = allowed
                adjustments.append(f"shrunk to fit the {code.value}")

        if ctx.market is not None and amount != request.amount:
            amount = ctx.market.round_amount(amount)
            try:
                ctx.market.check_order(amount, price)
            except InvalidOrder as e:
                return self._refuse(
                    RefusalReason.BELOW_MINIMUM, f"after shrinking to fit the limits: {e}", request, now
                )
        if amount <= 0:
            return self._refuse(
                RefusalReason.BELOW_MINIMUM, "nothing left after shrinking to fit the limits", request, now
            )
        return self._approve(request, amount, now, adjustments, ctx)

    def _approve(
        self, request: OrderRequest, amount: Decimal, now: datetime, adjustments: list[str], ctx: RiskContext
    ) -> RiskDecision:
        if ctx.market is not None and amount != request.amount:
            amount = ctx.market.round_amount(amount)
            if amount <= 0:
                return self._refuse(RefusalReason.BELOW_MINIMUM, "nothing left after rounding", request, now)
        approved = request if amount == request.amount else dataclasses.replace(request, amount=amount)
        self._approved.append(now)
        self._last_refusal.pop(request.symbol, None)
        if adjustments:
            self._log.info(
                "risk_order_adjusted",
                symbol=request.symbol,
                client_order_id=request.client_order_id,
                requested=str(request.amount),
                approved=str(amount),
                adjustments=adjustments,
            )
        return RiskDecision(approved, None, tuple(adjustments))
