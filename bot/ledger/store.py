"""The ledger: orders, fills, positions, closed trades, equity, events and bot state, through SQLAlchemy Core.

SQLite in WAL mode by default (one database file per mode: ``paper.db``, ``live.db``); a PostgreSQL URL
works the same (only portable column types and DDL are used). Amounts and prices are stored as TEXT holding
the exact ``Decimal`` (never a float); timestamps as integer epoch milliseconds (UTC). On SQLite the order and
fill path's statements, compiled by SQLAlchemy, run on the driver's cursor (`_DirectSqlite`: same SQL and type
processing, without SQLAlchemy's per-call execution machinery).

Durability. Every write method commits before it returns. SQLite runs in WAL mode with ``synchronous=NORMAL``
by default: a committed transaction is in the WAL file before the call returns, so it survives a ``kill -9`` or
any crash of the process (the done-when criterion), but the last commits may be lost if the *machine* loses
power. ``synchronous="FULL"`` also survives power loss, at one fsync per commit: measured on the shared build
machine (tests/benchmarks/bench_ledger_write.py) that costs ~4 ms at the median and ~8 ms at p99, which breaks
the 5 ms decision budget, whereas NORMAL costs ~0.1 ms at the median and ~4.5 ms at p99. A pre-send record
lost to a power cut is not silent either: reconciliation then finds the venue order the ledger lacks (open: it
refuses to trade; filled: its fills are recorded and reported as foreign fills with a warning). Choose FULL
with ``Ledger(url, synchronous="FULL")`` where fsync is fast.

Threads. The methods are synchronous and blocking. The async engine must call them off the event loop, from
one dedicated writer thread or with ``await asyncio.to_thread(ledger.method, ...)``; an in-process lock
serialises writers, so concurrent ``to_thread`` calls are safe. One process writes a ledger at a time; other
processes (dashboard, reports) may read it concurrently (WAL).

Schema. Tables and migrations live in :mod:`bot.ledger.schema`: ``schema_version`` records the migrations
applied; ``MIGRATIONS`` is the ordered list of migration functions and :class:`Ledger` applies the missing ones
when it opens a database, each in its own transaction.
"""

from __future__ import annotations

import threading
from collections import namedtuple
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import replace
from datetime import datetime
from decimal import Decimal
from typing import Any, NamedTuple, NoReturn, TypedDict, Unpack

import sqlalchemy as sa
import structlog
from sqlalchemy.engine import Connection, Dialect, Engine
from sqlalchemy.sql.expression import Executable

from adapters.types import (
    ClientOrderId,
    Fill,
    Order,
    OrderRequest,
    OrderStatus,
    VenueOrderId,
    ms_from_utc,
    split_symbol,
    utc_from_ms,
)
from bot.clock import utc_now
from bot.events import EquityEvent, Event
from bot.ledger.positions import POSITION_BY_SYMBOL, apply_fill
from bot.ledger.schema import (
    LedgerError,
    Synchronous,
    bot_state,
    closed_trades,
    create_ledger_engine,
    equity_snapshots,
    events,
    fills,
    migrate,
    order_events,
    orders,
    positions,
    within,
)
from bot.ledger.types import (
    CLOSED_TRADE_ROWS,
    EQUITY_ROWS,
    FILL_ROWS,
    ORDER_ROWS,
    ClosedTrade,
    DuplicateOrderError,
    FillResult,
    Position,
    StaleOrderState,
    Transition,
    position_from_state,
)

log = structlog.get_logger()

ZERO = Decimal(0)


def _updated(order: Order, status: OrderStatus, ts: datetime, figures: OrderFigures) -> Order:
    """`order` as `_UPDATE_ORDER` leaves its row: the new state and time, each figure given (not None) set, the
    others kept (`test_ledger` compares the two, order by order)."""
    changes: dict[str, Any] = {name: figures.get(name) for name in _ORDER_FIELD_FIGURES}
    return replace(
        order,
        status=status,
        updated_at=utc_from_ms(_ms(ts)),
        **{name: value for name, value in changes.items() if value is not None},
    )


def _ms(ts: datetime) -> int:
    return ms_from_utc(ts)


def _flows(fills_: Iterable[Fill]) -> dict[str, Decimal]:
    flows: dict[str, Decimal] = {}
    for fill in fills_:
        base, quote = split_symbol(fill.symbol)
        flows[base] = flows.get(base, ZERO) + fill.side.sign * fill.amount
        flows[quote] = flows.get(quote, ZERO) - fill.side.sign * fill.amount * fill.price
        flows[fill.fee_currency] = flows.get(fill.fee_currency, ZERO) - fill.fee
    return flows


# The statements of the order and fill path are built once, with bound parameters: building a statement per call
# (its clauses, coercions and cache key) cost SQLAlchemy several times what SQLite spends running it (profiled on
# a backtest: most of the ledger's time). Parameters named b_* are the ones that are not a column's SET value.
_B = sa.bindparam
_INSERT_ORDER = sa.insert(orders)
_INSERT_ORDER_EVENT = sa.insert(order_events)
_INSERT_FILL = sa.insert(fills)
_ORDER_BY_ID = sa.select(orders).where(orders.c.client_order_id == _B("b_cid"))
_ORDER_STATUS_BY_ID = sa.select(orders.c.status).where(orders.c.client_order_id == _B("b_cid"))
_ORDER_SHA_BY_ID = sa.select(orders.c.model_sha).where(orders.c.client_order_id == _B("b_cid"))
_FILL_SEEN = sa.select(fills.c.id).where(fills.c.symbol == _B("b_symbol"), fills.c.trade_id == _B("b_trade_id"))
# Before a fill is recorded, in one statement: is it known already, is its order the bot's, with which model.
_FILL_CONTEXT = sa.select(
    _FILL_SEEN.exists().label("seen"),
    sa.exists().where(orders.c.client_order_id == _B("b_cid")).label("own"),
    _ORDER_SHA_BY_ID.scalar_subquery().label("model_sha"),
)


def _keep_unless(name: str) -> Any:
    """SET `name` to its bound value, or keep the stored one when the value is None."""
    column = orders.c[name]
    return sa.func.coalesce(_B(f"b_{name}", type_=column.type), column)


_ORDER_OPTIONAL = ("reason", "venue_order_id", "filled", "average_price", "fee", "fee_currency")
_ORDER_FIELD_FIGURES = _ORDER_OPTIONAL[1:]
"""The optional figures that are `Order` fields (the reason is the ledger's own)."""
_UPDATE_ORDER = (
    sa.update(orders)
    .where(orders.c.client_order_id == _B("b_cid"))
    .values(
        status=_B("b_status"),
        updated_at_ms=_B("b_updated_at_ms"),
        **{name: _keep_unless(name) for name in _ORDER_OPTIONAL},
    )
)
# SQLite (3.35+) and PostgreSQL both return the updated row: no second query for the order just changed.
_UPDATE_ORDER_RETURNING = _UPDATE_ORDER.returning(*orders.c)
# With `expected_from`, the state check is the UPDATE's own condition: one statement, the SELECT only on a miss.
_UPDATE_ORDER_FROM = _UPDATE_ORDER.where(orders.c.status == _B("b_expected"))
_UPDATE_ORDER_FROM_RETURNING = _UPDATE_ORDER_FROM.returning(*orders.c)


class _Plan(NamedTuple):
    """A statement as SQLAlchemy compiles it for one set of parameter names, ready for the driver's cursor."""

    statement: Executable
    sql: str
    names: tuple[str, ...]
    """The bound parameter of each placeholder, in order."""
    binds: tuple[Callable[[Any], Any] | None, ...]
    """SQLAlchemy's bind processor of each placeholder (None: the value as is)."""
    results: tuple[Callable[[Any], Any] | None, ...]
    """SQLAlchemy's result processor of each column of a row."""
    row: Callable[..., Any] | None
    """Makes a row (a named tuple, read by column name like SQLAlchemy's); None for a statement without rows."""


class _DirectSqlite:
    """Run the order and fill path's prebuilt statements on the SQLite connection's own cursor.

    Each statement is compiled by SQLAlchemy once per set of parameter names, as `Connection.execute` would compile
    it; the SQL, the bind processors (`DecimalText`'s checks) and the result processors are SQLAlchemy's. What is
    skipped is its per-call execution context, events and result objects: ~20 µs of Python a statement against
    ~5 µs of SQLite (the ledger was most of a backtest's order cost). Errors are wrapped as SQLAlchemy wraps them
    (`DBAPIError.instance`: IntegrityError, StatementError...). Statements run in the transaction of the
    connection they are given, like any other. Only pysqlite (positional ``?`` parameters); other backends, and
    any statement whose compiled form needs more than this (defaults, expanding parameters), take the normal path.
    """

    def __init__(self, dialect: Dialect) -> None:
        self._dialect = dialect
        self._error: type[Exception] = dialect.loaded_dbapi.Error
        self._plans: dict[tuple[int, tuple[str, ...], bool], tuple[Executable, _Plan | None]] = {}

    @staticmethod
    def supports(dialect: Dialect) -> bool:
        """Whether `dialect` is the one this runs on."""
        return dialect.name == "sqlite" and dialect.driver == "pysqlite" and dialect.paramstyle == "qmark"

    def plan(self, statement: Executable, keys: tuple[str, ...], many: bool) -> _Plan | None:
        """Return `statement` compiled for the parameters named `keys`, or None when it must run through SQLAlchemy."""
        key = (id(statement), keys, many)
        known = self._plans.get(key)
        if known is not None and known[0] is statement:
            return known[1]
        try:
            plan = self._compile(statement, sorted(keys), many)
        except AttributeError:
            # The compiled form's attributes read here are SQLAlchemy's internals: a version that names them
            # otherwise runs every statement through SQLAlchemy (slower, the same rows).
            plan = None
        self._plans[key] = (statement, plan)
        return plan

    def _compile(self, statement: Executable, keys: list[str], many: bool) -> _Plan | None:
        # As `Connection.execute` compiles it: for the sorted parameter names, executemany or not.
        dialect = self._dialect
        element: Any = statement  # an Insert, Update or Select: a ClauseElement too
        compiled: Any = element.compile(dialect=dialect, column_keys=keys, for_executemany=many)
        names = compiled.positiontup
        if (
            names is None
            or compiled.literal_execute_params
            or compiled.post_compile_params
            or compiled.insert_prefetch
            or compiled.update_prefetch
            or compiled._insertmanyvalues is not None
        ):
            return None
        processors = compiled._bind_processors
        columns = compiled._result_columns
        results = tuple(column.type._cached_result_processor(dialect, None) for column in columns)
        try:
            row = namedtuple("Row", [column.keyname for column in columns]) if columns else None
        except ValueError:  # a column name a named tuple cannot have
            return None
        binds = tuple(processors.get(name) for name in names)
        return _Plan(statement, compiled.string, tuple(names), binds, results, row)

    def execute(self, conn: Connection, plan: _Plan, params: Mapping[str, Any]) -> Any:
        """Run `plan` with `params` on `conn`'s DBAPI connection; return the driver's cursor."""
        try:
            values = [
                params[name] if process is None else process(params[name])
                for name, process in zip(plan.names, plan.binds, strict=True)
            ]
        except Exception as e:
            raise self._wrapped(plan, params, e) from e
        try:
            return conn.connection.driver_connection.execute(plan.sql, values)  # type: ignore[union-attr]
        except self._error as e:
            raise self._wrapped(plan, values, e) from e

    def execute_many(self, conn: Connection, plan: _Plan, rows: Sequence[Mapping[str, Any]]) -> None:
        """Run `plan` once per parameter set of `rows` (the driver's executemany)."""
        try:
            values = [
                [
                    row[name] if process is None else process(row[name])
                    for name, process in zip(plan.names, plan.binds, strict=True)
                ]
                for row in rows
            ]
        except Exception as e:
            raise self._wrapped(plan, list(rows), e) from e
        try:
            conn.connection.driver_connection.executemany(plan.sql, values)  # type: ignore[union-attr]
        except self._error as e:
            raise self._wrapped(plan, values, e) from e

    def first(self, conn: Connection, plan: _Plan, params: Mapping[str, Any]) -> Any:
        """Run `plan` and return its first row (processed, by column name), or None."""
        cursor = self.execute(conn, plan, params)
        try:
            raw = cursor.fetchone()
        finally:
            cursor.close()
        if raw is None:
            return None
        assert plan.row is not None
        return plan.row(
            *[value if process is None else process(value) for value, process in zip(raw, plan.results, strict=True)]
        )

    def _wrapped(self, plan: _Plan, params: Any, error: Exception) -> BaseException:
        return sa.exc.DBAPIError.instance(plan.sql, params, error, self._error, dialect=self._dialect)


class OrderFigures(TypedDict, total=False):
    """What an order update may also set; a figure not given (or None) keeps its stored value."""

    reason: str | None
    """Why the order is in its new state."""
    venue_order_id: VenueOrderId | None
    """The venue's id of the order."""
    filled: Decimal | None
    """Amount filled so far."""
    average_price: Decimal | None
    """Average fill price so far."""
    fee: Decimal | None
    """Fees charged so far."""
    fee_currency: str | None
    """The currency of `fee`."""


class Ledger:
    """The bot's durable record; every method is synchronous and commits before returning (see module doc)."""

    def __init__(self, url: str, *, synchronous: Synchronous = "NORMAL", run_id: str | None = None) -> None:
        """Open (creating and migrating as needed) the ledger at `url`."""
        self.url = url
        self.run_id = run_id
        self._engine = create_ledger_engine(url, synchronous=synchronous)
        dialect = self._engine.dialect
        self._direct = _DirectSqlite(dialect) if _DirectSqlite.supports(dialect) else None
        self._lock = threading.RLock()
        self._held: Connection | None = None
        self._known: dict[ClientOrderId, Order] | None = None
        """Inside `one_transaction`: the orders as this ledger last read or wrote them (nothing else can write
        them there: the transaction is this process's own and uncommitted), so that a read after a write is not a
        query. None otherwise: a daemon's ledger may be written by another process (`ai-trading ctl`)."""
        with self._lock:
            self.version = migrate(self._engine)

    @property
    def engine(self) -> Engine:
        """The SQLAlchemy engine (for read-only queries by reports and dashboards)."""
        return self._engine

    def close(self) -> None:
        """Release the database connections."""
        self._engine.dispose()

    @contextmanager
    def one_transaction(self) -> Iterator[None]:
        """Run every call inside the block in one transaction, committed when the block ends (rolled back if it
        raises).

        For a backtest's ledger, whose many small commits would cost more than its SQL: nothing is durable, or
        visible to another process, until the block ends; a crash loses the block's writes (a backtest is run
        again). Never for a paper or live daemon, whose writes must be committed before the order is sent.
        """
        with self._lock:
            if self._held is not None:
                raise LedgerError("one_transaction: already inside one")
            with self._engine.begin() as conn:
                self._held, self._known = conn, {}
                try:
                    yield
                finally:
                    self._held, self._known = None, None

    @contextmanager
    def _writing(self) -> Iterator[Connection]:
        with self._lock:
            if self._held is not None:
                yield self._held
                return
            with self._engine.begin() as conn:
                yield conn

    @contextmanager
    def _reading(self) -> Iterator[Connection]:
        if self._held is not None:
            with self._lock:
                yield self._held
            return
        with self._engine.connect() as conn:
            yield conn

    @contextmanager
    def transaction(self) -> Iterator[Connection]:
        """A connection whose writes commit together when the block ends (`bot.ledger.shadows` writes with it)."""
        with self._writing() as conn:
            yield conn

    @contextmanager
    def reader(self) -> Iterator[Connection]:
        """A connection to read with (the current transaction's inside `one_transaction`)."""
        with self._reading() as conn:
            yield conn

    def __enter__(self) -> Ledger:
        return self

    def _execute(self, conn: Connection, statement: Executable, params: Mapping[str, Any]) -> int:
        """Run a prebuilt DML statement (see `_DirectSqlite`); return the number of rows it changed."""
        direct = self._direct
        plan = None if direct is None else direct.plan(statement, tuple(params), False)
        if direct is None or plan is None:
            return conn.execute(statement, params).rowcount
        cursor = direct.execute(conn, plan, params)
        try:
            return int(cursor.rowcount)
        finally:
            cursor.close()

    def _execute_rows(self, conn: Connection, statement: Executable, rows: Sequence[Mapping[str, Any]]) -> None:
        """Run a prebuilt INSERT once per row of `rows` (one row: a plain execute, as SQLAlchemy does)."""
        if len(rows) == 1:
            self._execute(conn, statement, rows[0])
            return
        direct = self._direct
        plan = None if direct is None else direct.plan(statement, tuple(rows[0]), True)
        if direct is None or plan is None:
            conn.execute(statement, list(rows))
            return
        direct.execute_many(conn, plan, rows)

    def _first(self, conn: Connection, statement: Executable, params: Mapping[str, Any]) -> Any:
        """Run a prebuilt statement that returns rows; return its first row (columns by name), or None."""
        direct = self._direct
        plan = None if direct is None else direct.plan(statement, tuple(params), False)
        if direct is None or plan is None:
            return conn.execute(statement, params).first()
        return direct.first(conn, plan, params)

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------------------------- orders

    def record_new_order(
        self,
        request: OrderRequest,
        *,
        ts: datetime,
        model_sha: str | None = None,
        sent: bool = False,
    ) -> None:
        """Write a new order durably, before it is sent; with `sent`, also mark it SENT in the same commit.

        Raises:
            DuplicateOrderError: the client order id is already in the ledger.
        """
        ts_ms = _ms(ts)
        status = OrderStatus.SENT if sent else OrderStatus.NEW
        values = {
            "client_order_id": request.client_order_id,
            "symbol": request.symbol,
            "side": request.side.value,
            "type": request.type.value,
            "amount": request.amount,
            "price": request.price,
            "status": status.value,
            "filled": ZERO,
            "fee": ZERO,
            "created_at_ms": ts_ms,
            "updated_at_ms": ts_ms,
            "model_sha": model_sha,
        }
        try:
            with self._writing() as conn:
                self._execute(conn, _INSERT_ORDER, values)
                transitions = [{"from_status": None, "to_status": OrderStatus.NEW.value}]
                if sent:
                    transitions.append({"from_status": OrderStatus.NEW.value, "to_status": OrderStatus.SENT.value})
                self._execute_rows(
                    conn,
                    _INSERT_ORDER_EVENT,
                    [dict(t, client_order_id=request.client_order_id, ts_ms=ts_ms, reason=None) for t in transitions],
                )
        except sa.exc.IntegrityError as e:
            raise DuplicateOrderError(
                f"record_new_order {request.symbol}: client_order_id={request.client_order_id} is already in the "
                "ledger; a new order needs a new id"
            ) from e

    def update_order(
        self,
        client_order_id: ClientOrderId,
        status: OrderStatus,
        *,
        ts: datetime,
        expected_from: OrderStatus | None = None,
        **figures: Unpack[OrderFigures],
    ) -> OrderStatus:
        """Set an order's state (and fill figures) and record the transition; return the previous state.

        The state machine (which transitions are legal) lives in `bot.orders.manager`; the ledger only refuses an update
        whose `expected_from` no longer holds (StaleOrderState) or whose order is unknown (LedgerError). Figures
        not given (or None) keep their stored value.
        """
        previous, _ = self._update_order(client_order_id, status, ts, expected_from, figures, returning=False)
        return previous

    def transition_order(
        self,
        client_order_id: ClientOrderId,
        status: OrderStatus,
        *,
        ts: datetime,
        expected_from: OrderStatus | None = None,
        **figures: Unpack[OrderFigures],
    ) -> Order:
        """`update_order`, returning the order as it is now stored (one statement, not an update and a read)."""
        known = self._known
        current = None if known is None else known.get(client_order_id)
        if known is not None and current is not None and (expected_from is None or current.status is expected_from):
            # Inside `one_transaction`, with the stored order in hand: the update without RETURNING (SQLite's
            # RETURNING cost 3x the plain UPDATE), and the stored row applied to it as `_UPDATE_ORDER` applies it.
            self._update_order(client_order_id, status, ts, expected_from, figures, returning=False)
            order = _updated(current, status, ts, figures)
            known[client_order_id] = order
            return order
        _, row = self._update_order(client_order_id, status, ts, expected_from, figures, returning=True)
        assert row is not None
        order = ORDER_ROWS.from_row(row)
        if known is not None:
            known[client_order_id] = order
        return order

    def _update_order(
        self,
        client_order_id: ClientOrderId,
        status: OrderStatus,
        ts: datetime,
        expected_from: OrderStatus | None,
        figures: OrderFigures,
        *,
        returning: bool,
    ) -> tuple[OrderStatus, Any]:
        if self._known is not None:  # whatever happens below, the next read asks the database
            self._known.pop(client_order_id, None)
        ts_ms = _ms(ts)
        values: dict[str, Any] = {f"b_{name}": figures.get(name) for name in _ORDER_OPTIONAL}
        params = {"b_cid": client_order_id, "b_status": status.value, "b_updated_at_ms": ts_ms, **values}
        with self._writing() as conn:
            updated: Any = None
            if expected_from is not None:
                conditioned = {**params, "b_expected": expected_from.value}
                if returning:
                    updated = self._first(conn, _UPDATE_ORDER_FROM_RETURNING, conditioned)
                    hit = updated is not None
                else:
                    hit = self._execute(conn, _UPDATE_ORDER_FROM, conditioned) == 1
                if not hit:
                    self._refuse_update(conn, client_order_id, expected_from)
                previous = expected_from
            else:
                row = self._first(conn, _ORDER_STATUS_BY_ID, {"b_cid": client_order_id})
                if row is None:
                    raise LedgerError(f"update_order: client_order_id={client_order_id} is not in the ledger")
                previous = OrderStatus(row.status)
                if returning:
                    updated = self._first(conn, _UPDATE_ORDER_RETURNING, params)
                else:
                    self._execute(conn, _UPDATE_ORDER, params)
            self._execute(
                conn,
                _INSERT_ORDER_EVENT,
                {
                    "client_order_id": client_order_id,
                    "ts_ms": ts_ms,
                    "from_status": previous.value,
                    "to_status": status.value,
                    "reason": values["b_reason"],
                },
            )
        return previous, updated

    def _refuse_update(self, conn: Connection, client_order_id: ClientOrderId, expected_from: OrderStatus) -> NoReturn:
        """Raise why an update conditioned on `expected_from` changed no row."""
        row = self._first(conn, _ORDER_STATUS_BY_ID, {"b_cid": client_order_id})
        if row is None:
            raise LedgerError(f"update_order: client_order_id={client_order_id} is not in the ledger")
        raise StaleOrderState(
            f"update_order {client_order_id}: expected state {expected_from.value}, ledger has {row.status}"
        )

    def get_order(self, client_order_id: ClientOrderId) -> Order | None:
        """Return the ledger's view of one order, or None."""
        known = self._known
        if known is not None:
            order = known.get(client_order_id)
            if order is not None:
                return order
        with self._reading() as conn:
            row = self._first(conn, _ORDER_BY_ID, {"b_cid": client_order_id})
        if row is None:
            return None
        order = ORDER_ROWS.from_row(row)
        if self._known is not None:
            self._known[client_order_id] = order
        return order

    def order_model_sha(self, client_order_id: ClientOrderId) -> str | None:
        """Return the model sha recorded with an order."""
        with self._reading() as conn:
            value = conn.execute(_ORDER_SHA_BY_ID, {"b_cid": client_order_id}).scalar()
        return None if value is None else str(value)

    def order_reason(self, client_order_id: ClientOrderId) -> str | None:
        """Return the last reason recorded for an order's state."""
        with self._reading() as conn:
            value = conn.execute(sa.select(orders.c.reason).where(orders.c.client_order_id == client_order_id)).scalar()
        return None if value is None else str(value)

    def orders(self, statuses: Collection[OrderStatus] | None = None, symbol: str | None = None) -> list[Order]:
        """Return orders (optionally only in `statuses` / of `symbol`), oldest first."""
        query = sa.select(orders).order_by(orders.c.created_at_ms, orders.c.client_order_id)
        if statuses is not None:
            query = query.where(orders.c.status.in_([s.value for s in statuses]))
        if symbol is not None:
            query = query.where(orders.c.symbol == symbol)
        with self._reading() as conn:
            return [ORDER_ROWS.from_row(row) for row in conn.execute(query)]

    def transitions(self, client_order_id: ClientOrderId) -> list[Transition]:
        """Return an order's recorded state changes in order."""
        query = (
            sa.select(order_events).where(order_events.c.client_order_id == client_order_id).order_by(order_events.c.id)
        )
        with self._reading() as conn:
            return [
                Transition(
                    client_order_id=ClientOrderId(row.client_order_id),
                    from_status=None if row.from_status is None else OrderStatus(row.from_status),
                    to_status=OrderStatus(row.to_status),
                    ts=utc_from_ms(row.ts_ms),
                    reason=row.reason,
                )
                for row in conn.execute(query)
            ]

    # ------------------------------------------------------------------------------------- fills and positions

    def record_fill(self, fill: Fill) -> FillResult:
        """Record a fill once (a re-delivered trade id changes nothing) and update the symbol's position."""
        base, quote = split_symbol(fill.symbol)
        with self._writing() as conn:
            keys = {"b_symbol": fill.symbol, "b_trade_id": fill.trade_id, "b_cid": fill.client_order_id}
            context = self._first(conn, _FILL_CONTEXT, keys)
            assert context is not None  # a SELECT of three scalars: always one row
            if context.seen:
                return FillResult(inserted=False, position=self._position(conn, fill.symbol))
            self._execute(
                conn,
                _INSERT_FILL,
                FILL_ROWS.row(fill),
            )
            if not context.own:
                # Not the bot's order (the user's own trade on the account): kept as a fact, never the bot's position.
                return FillResult(inserted=True, position=self._position(conn, fill.symbol), own=False)
            position, closed = apply_fill(
                conn, fill, base, quote, context.model_sha, self.run_id, first=self._first, execute=self._execute
            )
        return FillResult(inserted=True, position=position, closed_trade=closed)

    def fills(self, symbol: str | None = None, client_order_id: ClientOrderId | None = None) -> list[Fill]:
        """Return recorded fills in the order they were recorded."""
        query = sa.select(fills).order_by(fills.c.id)
        if symbol is not None:
            query = query.where(fills.c.symbol == symbol)
        if client_order_id is not None:
            query = query.where(fills.c.client_order_id == client_order_id)
        with self._reading() as conn:
            return [FILL_ROWS.from_row(row) for row in conn.execute(query)]

    def own_fills(self, symbol: str | None = None) -> list[Fill]:
        """Return the fills of the bot's own orders (client order id in the ledger), in the order recorded."""
        query = (
            sa.select(fills)
            .where(fills.c.client_order_id.in_(sa.select(orders.c.client_order_id)))
            .order_by(fills.c.id)
        )
        if symbol is not None:
            query = query.where(fills.c.symbol == symbol)
        with self._reading() as conn:
            return [FILL_ROWS.from_row(row) for row in conn.execute(query)]

    def foreign_flows(self) -> dict[str, Decimal]:
        """Return, per currency, what fills of orders that are not the bot's added to the account's balances."""
        query = sa.select(fills).where(fills.c.client_order_id.not_in(sa.select(orders.c.client_order_id)))
        with self._reading() as conn:
            return _flows(FILL_ROWS.from_row(row) for row in conn.execute(query))

    def filled_by_fills(self, client_order_id: ClientOrderId) -> Decimal:
        """Return the amount of an order covered by recorded fills."""
        return sum((f.amount for f in self.fills(client_order_id=client_order_id)), ZERO)

    def last_fill_time(self, symbol: str) -> datetime | None:
        """Return the timestamp of the latest recorded fill of `symbol`."""
        with self._reading() as conn:
            value = conn.execute(sa.select(sa.func.max(fills.c.ts_ms)).where(fills.c.symbol == symbol)).scalar()
        return None if value is None else utc_from_ms(int(value))

    def position(self, symbol: str) -> Position:
        """Return the ledger's position in `symbol` (flat if never traded)."""
        with self._reading() as conn:
            return self._position(conn, symbol)

    def _position(self, conn: Connection, symbol: str) -> Position:
        state = self._position_state(conn, symbol)
        return Position(symbol) if state is None else position_from_state(symbol, state)

    def position_state(self, symbol: str) -> dict[str, Any] | None:
        """Return the accounting state of `symbol`'s position (the `positions` row: the open round trip's
        accumulators too), or None if never traded."""
        with self._reading() as conn:
            return self._position_state(conn, symbol)

    @staticmethod
    def _position_state(conn: Connection, symbol: str) -> dict[str, Any] | None:
        row = conn.execute(POSITION_BY_SYMBOL, {"b_symbol": symbol}).first()
        return None if row is None else dict(row._mapping)

    def positions(self) -> dict[str, Position]:
        """Return every position the ledger has seen, by symbol."""
        with self._reading() as conn:
            rows = list(conn.execute(sa.select(positions).order_by(positions.c.symbol)))
        return {row.symbol: position_from_state(row.symbol, dict(row._mapping)) for row in rows}

    def currency_flows(self, symbols: Collection[str] | None = None) -> dict[str, Decimal]:
        """Return, per currency, what all recorded fills added to (or took from) the account's balances."""
        return _flows(f for f in self.fills() if symbols is None or f.symbol in symbols)

    def closed_trades(
        self, symbol: str | None = None, *, since: datetime | None = None, until: datetime | None = None
    ) -> list[ClosedTrade]:
        """Return closed round trips (closed in [`since`, `until`) when given), oldest first."""
        query = sa.select(closed_trades).order_by(closed_trades.c.id)
        if symbol is not None:
            query = query.where(closed_trades.c.symbol == symbol)
        query = within(query, closed_trades.c.closed_at_ms, since, until)
        with self._reading() as conn:
            return [CLOSED_TRADE_ROWS.from_row(row) for row in conn.execute(query)]

    # ------------------------------------------------------------------------------------- equity, events, state

    def record_equity(self, snapshot: EquityEvent) -> None:
        """Store one equity snapshot."""
        with self._writing() as conn:
            conn.execute(sa.insert(equity_snapshots).values(**EQUITY_ROWS.row(snapshot)))

    def equity_snapshots(self, since: datetime | None = None, until: datetime | None = None) -> list[EquityEvent]:
        """Return equity snapshots (taken in [`since`, `until`) when given), oldest first."""
        query = sa.select(equity_snapshots).order_by(equity_snapshots.c.ts_ms, equity_snapshots.c.id)
        query = within(query, equity_snapshots.c.ts_ms, since, until)
        with self._reading() as conn:
            return [EQUITY_ROWS.from_row(row) for row in conn.execute(query)]

    def last_equity_before(self, ts: datetime) -> EquityEvent | None:
        """Return the latest equity snapshot taken before `ts` (a window's opening equity), or None."""
        query = (
            sa.select(equity_snapshots)
            .where(equity_snapshots.c.ts_ms < _ms(ts))
            .order_by(equity_snapshots.c.ts_ms.desc(), equity_snapshots.c.id.desc())
            .limit(1)
        )
        with self._reading() as conn:
            row = conn.execute(query).first()
        return None if row is None else EQUITY_ROWS.from_row(row)

    def record_event(self, event: Event) -> None:
        """Append an event (its JSON) to the event journal."""
        with self._writing() as conn:
            conn.execute(sa.insert(events).values(ts_ms=_ms(event.ts), type=event.type, payload=event.to_json()))

    def event_payloads(self, type_: str | None = None) -> list[str]:
        """Return the JSON of journalled events (of one type), oldest first."""
        query = sa.select(events.c.payload).order_by(events.c.id)
        if type_ is not None:
            query = query.where(events.c.type == type_)
        with self._reading() as conn:
            return [str(p) for p in conn.execute(query).scalars()]

    def get_state(self, key: str) -> str | None:
        """Return one bot-state value, or None."""
        with self._reading() as conn:
            value = conn.execute(sa.select(bot_state.c.value).where(bot_state.c.key == key)).scalar()
        return None if value is None else str(value)

    def set_state(self, key: str, value: str, *, ts: datetime | None = None) -> None:
        """Set one bot-state value durably."""
        self.set_states({key: value}, ts=ts)

    def set_states(self, values: Mapping[str, str], *, ts: datetime | None = None) -> None:
        """Set several bot-state values in one transaction."""
        stamp = _ms(ts or utc_now())
        with self._writing() as conn:
            for key, value in values.items():
                updated = conn.execute(
                    sa.update(bot_state).where(bot_state.c.key == key).values(value=value, updated_at_ms=stamp)
                ).rowcount
                if not updated:
                    conn.execute(sa.insert(bot_state).values(key=key, value=value, updated_at_ms=stamp))

    def state(self, prefix: str = "") -> dict[str, str]:
        """Return bot-state values whose key starts with `prefix`."""
        query = sa.select(bot_state.c.key, bot_state.c.value).where(bot_state.c.key.startswith(prefix, autoescape=True))
        with self._reading() as conn:
            return {row.key: row.value for row in conn.execute(query)}
