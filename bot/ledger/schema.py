"""The ledger's schema: column types, the current tables, the ordered migrations, and the engine set-up.

``bot.ledger.store`` is the API; this module is what it stores and how the database is opened. Tables are declared
twice on purpose: the module-level tables are the *current* schema that queries use, while each migration
declares the tables as they were at its version, so an old migration never changes when the schema moves on.
A test checks that migrating an empty database yields exactly the current tables.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from typing import Any, Literal

import sqlalchemy as sa
import structlog
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.pool import StaticPool

from adapters.types import ms_from_utc
from bot.clock import utc_now
from bot.errors import RefuseToTrade
from bot.ledger.urls import sqlalchemy_url

log = structlog.get_logger()

Mode = Literal["backtest", "paper", "live"]
Synchronous = Literal["FULL", "NORMAL", "EXTRA"]


class LedgerError(RefuseToTrade):
    """The ledger cannot do what was asked (unknown order, duplicate id, stale state, newer schema). Callers that
    expect one (a stale state, a known id) handle it; one that reaches `ai-trading bot` stops it: exit 3."""

    headline = "ledger unusable"
    log_event = "daemon_ledger_unusable"


# --------------------------------------------------------------------------------------------- types


class DecimalText(sa.types.TypeDecorator[Decimal]):
    """A Decimal stored exactly as TEXT; binding a float is an error."""

    impl = sa.String(64)
    cache_ok = True

    def process_bind_param(self, value: Any, dialect: sa.Dialect) -> str | None:
        if value is None:
            return None
        if not isinstance(value, Decimal):
            raise TypeError(f"ledger amounts must be Decimal, got {type(value).__name__} {value!r}")
        if not value.is_finite():
            raise ValueError(f"ledger amounts must be finite, got {value}")
        return str(value)

    def process_result_value(self, value: Any, dialect: sa.Dialect) -> Decimal | None:
        return None if value is None else Decimal(value)


# --------------------------------------------------------------------------------------------- schema

metadata = sa.MetaData()

schema_version = sa.Table(
    "schema_version",
    metadata,
    sa.Column("version", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("applied_at_ms", sa.BigInteger, nullable=False),
)

orders = sa.Table(
    "orders",
    metadata,
    sa.Column("client_order_id", sa.String(64), primary_key=True),
    sa.Column("venue_order_id", sa.String(64)),
    sa.Column("symbol", sa.String(32), nullable=False),
    sa.Column("side", sa.String(8), nullable=False),
    sa.Column("type", sa.String(16), nullable=False),
    sa.Column("amount", DecimalText, nullable=False),
    sa.Column("price", DecimalText),
    sa.Column("status", sa.String(24), nullable=False),
    sa.Column("filled", DecimalText, nullable=False),
    sa.Column("average_price", DecimalText),
    sa.Column("fee", DecimalText, nullable=False),
    sa.Column("fee_currency", sa.String(16)),
    sa.Column("reason", sa.Text),
    sa.Column("created_at_ms", sa.BigInteger, nullable=False),
    sa.Column("updated_at_ms", sa.BigInteger, nullable=False),
    sa.Column("model_sha", sa.String(64)),
    sa.Index("ix_orders_status", "status"),
)

order_events = sa.Table(
    "order_events",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("client_order_id", sa.String(64), sa.ForeignKey("orders.client_order_id"), nullable=False),
    sa.Column("ts_ms", sa.BigInteger, nullable=False),
    sa.Column("from_status", sa.String(24)),
    sa.Column("to_status", sa.String(24), nullable=False),
    sa.Column("reason", sa.Text),
)

fills = sa.Table(
    "fills",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("trade_id", sa.String(64), nullable=False),
    sa.Column("client_order_id", sa.String(64), nullable=False),
    sa.Column("venue_order_id", sa.String(64)),
    sa.Column("symbol", sa.String(32), nullable=False),
    sa.Column("side", sa.String(8), nullable=False),
    sa.Column("amount", DecimalText, nullable=False),
    sa.Column("price", DecimalText, nullable=False),
    sa.Column("fee", DecimalText, nullable=False),
    sa.Column("fee_currency", sa.String(16), nullable=False),
    sa.Column("ts_ms", sa.BigInteger, nullable=False),
    sa.Column("requested_price", DecimalText),
    sa.Column("is_maker", sa.Boolean, nullable=False),
    sa.UniqueConstraint("symbol", "trade_id", name="uq_fills_symbol_trade_id"),
)

positions = sa.Table(
    "positions",
    metadata,
    sa.Column("symbol", sa.String(32), primary_key=True),
    sa.Column("amount", DecimalText, nullable=False),
    sa.Column("average_entry_price", DecimalText, nullable=False),
    sa.Column("realized_pnl", DecimalText, nullable=False),
    sa.Column("fees", DecimalText, nullable=False),
    sa.Column("opened_at_ms", sa.BigInteger),
    sa.Column("updated_at_ms", sa.BigInteger, nullable=False),
    # Accumulators of the open round trip, turned into a closed_trades row when it ends.
    sa.Column("trip_fees", DecimalText, nullable=False),
    sa.Column("trip_closed_qty", DecimalText, nullable=False),
    sa.Column("trip_exit_notional", DecimalText, nullable=False),
    sa.Column("trip_gross_pnl", DecimalText, nullable=False),
)

bot_state = sa.Table(
    "bot_state",
    metadata,
    sa.Column("key", sa.String(128), primary_key=True),
    sa.Column("value", sa.Text, nullable=False),
    sa.Column("updated_at_ms", sa.BigInteger, nullable=False),
)


def _round_trip_columns() -> list[sa.Column[Any]]:
    """The columns of one closed round trip: the bot's (closed_trades) and a shadow's (shadow_trades)."""
    return [
        sa.Column("symbol", sa.String(32), nullable=False),
        sa.Column("side", sa.String(8), nullable=False),
        sa.Column("qty", DecimalText, nullable=False),
        sa.Column("entry_price", DecimalText, nullable=False),
        sa.Column("exit_price", DecimalText, nullable=False),
        sa.Column("realized_pnl", DecimalText, nullable=False),
        sa.Column("fees", DecimalText, nullable=False),
        sa.Column("opened_at_ms", sa.BigInteger, nullable=False),
        sa.Column("closed_at_ms", sa.BigInteger, nullable=False),
        sa.Column("model_sha", sa.String(64)),
        sa.Column("run_id", sa.String(128)),
    ]


closed_trades = sa.Table(
    "closed_trades",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    *_round_trip_columns(),
)

equity_snapshots = sa.Table(
    "equity_snapshots",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("ts_ms", sa.BigInteger, nullable=False, index=True),
    sa.Column("bot_id", sa.String(64), nullable=False),
    sa.Column("equity", DecimalText, nullable=False),
    sa.Column("cash", DecimalText, nullable=False),
    sa.Column("positions_value", DecimalText, nullable=False),
    sa.Column("realized_pnl", DecimalText, nullable=False),
    sa.Column("unrealized_pnl", DecimalText, nullable=False),
    sa.Column("drawdown", sa.Float, nullable=False),
)

events = sa.Table(
    "events",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("ts_ms", sa.BigInteger, nullable=False, index=True),
    sa.Column("type", sa.String(32), nullable=False),
    sa.Column("payload", sa.Text, nullable=False),
)


# Shadow models (bot.shadow): their would-be orders and round trips, never mixed with the bot's own, and the mark of
# every model (live and shadows) at each close, which the live-vs-shadow report compares.
shadow_orders = sa.Table(
    "shadow_orders",
    metadata,
    sa.Column("model", sa.String(64), primary_key=True),
    sa.Column("client_order_id", sa.String(64), primary_key=True),
    sa.Column("symbol", sa.String(32), nullable=False),
    sa.Column("side", sa.String(8), nullable=False),
    sa.Column("amount", DecimalText, nullable=False),
    sa.Column("status", sa.String(24), nullable=False),
    sa.Column("filled", DecimalText, nullable=False),
    sa.Column("average_price", DecimalText),
    sa.Column("fee", DecimalText, nullable=False),
    sa.Column("created_at_ms", sa.BigInteger, nullable=False),
    sa.Column("updated_at_ms", sa.BigInteger, nullable=False),
    sa.Column("model_sha", sa.String(64)),
)

shadow_trades = sa.Table(
    "shadow_trades",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("model", sa.String(64), nullable=False, index=True),
    *_round_trip_columns(),
)

model_marks = sa.Table(
    "model_marks",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("ts_ms", sa.BigInteger, nullable=False, index=True),
    sa.Column("session_ms", sa.BigInteger, nullable=False),
    sa.Column("model", sa.String(64), nullable=False),
    sa.Column("role", sa.String(8), nullable=False),
    sa.Column("symbol", sa.String(32), nullable=False),
    sa.Column("sha256", sa.String(64), nullable=False),
    sa.Column("target", sa.Float),
    sa.Column("equity", DecimalText, nullable=False),
)


def within(query: sa.Select[Any], column: sa.ColumnElement[int], since: datetime | None, until: datetime | None) -> Any:
    """Return `query` kept to rows whose ms timestamp `column` lies in [`since`, `until`) (an open end when None)."""
    if since is not None:
        query = query.where(column >= ms_from_utc(since))
    if until is not None:
        query = query.where(column < ms_from_utc(until))
    return query


# --------------------------------------------------------------------------------------------- migrations


def _migration_1(conn: Connection) -> None:
    """Create orders, order_events, fills, positions and bot_state (schema v1)."""
    v1 = sa.MetaData()
    sa.Table(
        "orders",
        v1,
        sa.Column("client_order_id", sa.String(64), primary_key=True),
        sa.Column("venue_order_id", sa.String(64)),
        sa.Column("symbol", sa.String(32), nullable=False),
        sa.Column("side", sa.String(8), nullable=False),
        sa.Column("type", sa.String(16), nullable=False),
        sa.Column("amount", sa.String(64), nullable=False),
        sa.Column("price", sa.String(64)),
        sa.Column("status", sa.String(24), nullable=False),
        sa.Column("filled", sa.String(64), nullable=False),
        sa.Column("average_price", sa.String(64)),
        sa.Column("fee", sa.String(64), nullable=False),
        sa.Column("fee_currency", sa.String(16)),
        sa.Column("reason", sa.Text),
        sa.Column("created_at_ms", sa.BigInteger, nullable=False),
        sa.Column("updated_at_ms", sa.BigInteger, nullable=False),
    )
    sa.Table(
        "order_events",
        v1,
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("client_order_id", sa.String(64), sa.ForeignKey("orders.client_order_id"), nullable=False),
        sa.Column("ts_ms", sa.BigInteger, nullable=False),
        sa.Column("from_status", sa.String(24)),
        sa.Column("to_status", sa.String(24), nullable=False),
        sa.Column("reason", sa.Text),
    )
    sa.Table(
        "fills",
        v1,
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("trade_id", sa.String(64), nullable=False),
        sa.Column("client_order_id", sa.String(64), nullable=False),
        sa.Column("venue_order_id", sa.String(64)),
        sa.Column("symbol", sa.String(32), nullable=False),
        sa.Column("side", sa.String(8), nullable=False),
        sa.Column("amount", sa.String(64), nullable=False),
        sa.Column("price", sa.String(64), nullable=False),
        sa.Column("fee", sa.String(64), nullable=False),
        sa.Column("fee_currency", sa.String(16), nullable=False),
        sa.Column("ts_ms", sa.BigInteger, nullable=False),
        sa.Column("requested_price", sa.String(64)),
        sa.Column("is_maker", sa.Boolean, nullable=False),
        sa.UniqueConstraint("symbol", "trade_id", name="uq_fills_symbol_trade_id"),
    )
    sa.Table(
        "positions",
        v1,
        sa.Column("symbol", sa.String(32), primary_key=True),
        sa.Column("amount", sa.String(64), nullable=False),
        sa.Column("average_entry_price", sa.String(64), nullable=False),
        sa.Column("realized_pnl", sa.String(64), nullable=False),
        sa.Column("fees", sa.String(64), nullable=False),
        sa.Column("opened_at_ms", sa.BigInteger),
        sa.Column("updated_at_ms", sa.BigInteger, nullable=False),
        sa.Column("trip_fees", sa.String(64), nullable=False),
        sa.Column("trip_closed_qty", sa.String(64), nullable=False),
        sa.Column("trip_exit_notional", sa.String(64), nullable=False),
        sa.Column("trip_gross_pnl", sa.String(64), nullable=False),
    )
    sa.Table(
        "bot_state",
        v1,
        sa.Column("key", sa.String(128), primary_key=True),
        sa.Column("value", sa.Text, nullable=False),
        sa.Column("updated_at_ms", sa.BigInteger, nullable=False),
    )
    v1.create_all(conn)
    sa.Index("ix_orders_status", sa.Table("orders", v1).c.status).create(conn)


def _round_trip_columns_v2() -> list[sa.Column[Any]]:
    """A round trip's columns as schema v2 created closed_trades and v3 shadow_trades (frozen: the live schema may
    move on, these migrations must not)."""
    return [
        sa.Column("symbol", sa.String(32), nullable=False),
        sa.Column("side", sa.String(8), nullable=False),
        sa.Column("qty", sa.String(64), nullable=False),
        sa.Column("entry_price", sa.String(64), nullable=False),
        sa.Column("exit_price", sa.String(64), nullable=False),
        sa.Column("realized_pnl", sa.String(64), nullable=False),
        sa.Column("fees", sa.String(64), nullable=False),
        sa.Column("opened_at_ms", sa.BigInteger, nullable=False),
        sa.Column("closed_at_ms", sa.BigInteger, nullable=False),
        sa.Column("model_sha", sa.String(64)),
        sa.Column("run_id", sa.String(128)),
    ]


def _migration_2(conn: Connection) -> None:
    """Add orders.model_sha and the closed_trades, equity_snapshots and events tables (schema v2)."""
    conn.execute(sa.text("ALTER TABLE orders ADD COLUMN model_sha VARCHAR(64)"))
    v2 = sa.MetaData()
    sa.Table(
        "closed_trades",
        v2,
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        *_round_trip_columns_v2(),
    )
    sa.Table(
        "equity_snapshots",
        v2,
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("ts_ms", sa.BigInteger, nullable=False, index=True),
        sa.Column("bot_id", sa.String(64), nullable=False),
        sa.Column("equity", sa.String(64), nullable=False),
        sa.Column("cash", sa.String(64), nullable=False),
        sa.Column("positions_value", sa.String(64), nullable=False),
        sa.Column("realized_pnl", sa.String(64), nullable=False),
        sa.Column("unrealized_pnl", sa.String(64), nullable=False),
        sa.Column("drawdown", sa.Float, nullable=False),
    )
    sa.Table(
        "events",
        v2,
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("ts_ms", sa.BigInteger, nullable=False, index=True),
        sa.Column("type", sa.String(32), nullable=False),
        sa.Column("payload", sa.Text, nullable=False),
    )
    v2.create_all(conn)


def _migration_3(conn: Connection) -> None:
    """Add the shadow models' shadow_orders and shadow_trades, and model_marks (schema v3)."""
    v3 = sa.MetaData()
    sa.Table(
        "shadow_orders",
        v3,
        sa.Column("model", sa.String(64), primary_key=True),
        sa.Column("client_order_id", sa.String(64), primary_key=True),
        sa.Column("symbol", sa.String(32), nullable=False),
        sa.Column("side", sa.String(8), nullable=False),
        sa.Column("amount", sa.String(64), nullable=False),
        sa.Column("status", sa.String(24), nullable=False),
        sa.Column("filled", sa.String(64), nullable=False),
        sa.Column("average_price", sa.String(64)),
        sa.Column("fee", sa.String(64), nullable=False),
        sa.Column("created_at_ms", sa.BigInteger, nullable=False),
        sa.Column("updated_at_ms", sa.BigInteger, nullable=False),
        sa.Column("model_sha", sa.String(64)),
    )
    sa.Table(
        "shadow_trades",
        v3,
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("model", sa.String(64), nullable=False, index=True),
        *_round_trip_columns_v2(),
    )
    sa.Table(
        "model_marks",
        v3,
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("ts_ms", sa.BigInteger, nullable=False, index=True),
        sa.Column("session_ms", sa.BigInteger, nullable=False),
        sa.Column("model", sa.String(64), nullable=False),
        sa.Column("role", sa.String(8), nullable=False),
        sa.Column("symbol", sa.String(32), nullable=False),
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("target", sa.Float),
        sa.Column("equity", sa.String(64), nullable=False),
    )
    v3.create_all(conn)


MIGRATIONS: list[Callable[[Connection], None]] = [_migration_1, _migration_2, _migration_3]
"""Schema migrations in order; migration i (0-based) brings the schema to version i + 1. Only ever append."""

SCHEMA_VERSION = len(MIGRATIONS)
"""The schema version this code reads and writes."""


def migrate(engine: Engine, target: int = SCHEMA_VERSION, *, now_ms: int | None = None) -> int:
    """Apply the missing migrations up to `target`, each in its own transaction; return the resulting version."""
    if not 0 <= target <= SCHEMA_VERSION:
        raise LedgerError(f"migrate: target version must be in 0..{SCHEMA_VERSION}, was {target}")
    with engine.begin() as conn:
        schema_version.create(conn, checkfirst=True)
    current = current_version(engine)
    if current > SCHEMA_VERSION:
        raise LedgerError(
            f"ledger {engine.url.render_as_string(hide_password=True)} has schema version {current}, newer than "
            f"this code's {SCHEMA_VERSION}; upgrade the bot instead of opening it with an older version"
        )
    for version in range(current + 1, target + 1):
        with engine.begin() as conn:
            MIGRATIONS[version - 1](conn)
            stamp = now_ms if now_ms is not None else ms_from_utc(utc_now())
            conn.execute(sa.insert(schema_version).values(version=version, applied_at_ms=stamp))
    if target > current:  # one line per opening, however many versions it applied
        log.info(
            "ledger_migrated", from_version=current, version=target, url=engine.url.render_as_string(hide_password=True)
        )
    return max(current, target)


def current_version(engine: Engine) -> int:
    """Return the highest migration applied (0 for an empty database)."""
    with engine.connect() as conn:
        if not sa.inspect(conn).has_table("schema_version"):
            return 0
        value = conn.execute(sa.select(sa.func.max(schema_version.c.version))).scalar()
    return int(value or 0)


# --------------------------------------------------------------------------------------------- engine


def default_ledger_url(mode: Mode, directory: str | Path) -> str:
    """Return the ledger URL of a mode: one SQLite file per mode (paper.db, live.db); backtests stay in memory."""
    if mode == "backtest":
        return "sqlite://"
    if mode not in ("paper", "live"):
        raise ValueError(f"ledger mode must be 'backtest', 'paper' or 'live', was {mode!r}")
    path = Path(directory).expanduser().resolve() / f"{mode}.db"
    return f"sqlite:///{path}"


def create_ledger_engine(url: str, *, synchronous: Synchronous = "NORMAL") -> Engine:
    """Create an engine for `url`; SQLite gets WAL, the `synchronous` level, foreign keys and real transactions."""
    url = sqlalchemy_url(url)
    parsed = sa.engine.make_url(url)
    if parsed.get_backend_name() != "sqlite":
        return sa.create_engine(url, pool_pre_ping=True)
    if synchronous not in ("FULL", "NORMAL", "EXTRA"):
        raise ValueError(f"ledger synchronous must be FULL, NORMAL or EXTRA, was {synchronous!r}")
    database = parsed.database or ""
    in_memory = database in ("", ":memory:") or "mode=memory" in url
    if in_memory:
        engine = sa.create_engine(url, poolclass=StaticPool, connect_args={"check_same_thread": False})
    else:
        Path(database).parent.mkdir(parents=True, exist_ok=True)
        engine = sa.create_engine(url, connect_args={"timeout": 10.0})

    @sa.event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, connection_record: Any) -> None:
        # Let SQLAlchemy's BEGIN below delimit transactions, so DDL in migrations is transactional too.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        if not in_memory:
            cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute(f"PRAGMA synchronous={synchronous}")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA busy_timeout=10000")
        cursor.close()

    @sa.event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        conn.exec_driver_sql("BEGIN")

    return engine
