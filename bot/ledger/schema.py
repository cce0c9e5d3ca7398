"""The ledger's schema: column types, the current tables, the ordered migrations, and the engine set-up.

``bot.ledger.store`` is the API; this module is what it stores and how the database is opened. Each table is
declared once, as it is now, and says which schema version brought it: ``info={"since": 1}`` on the table, and on
each column or index added later its own (``orders.model_sha``: ``info={"since": 2}``). The migrations are derived
from that: migration N creates the tables of since N with only their columns of since <= N and their constraints,
adds the columns of since N to older tables (``ALTER TABLE ... ADD COLUMN``, compiled for the connection's
dialect) and creates the indexes of since N (an index's since is the latest of its own, its table's and its
columns'). A new version appends ``_Migration(N)`` to ``MIGRATIONS``; the annotations are checked at import (a
later column must be nullable or have a server default, and belong to no key or constraint, or ALTER TABLE cannot
add it everywhere).

A change the annotations cannot express (a dropped or renamed column, a constraint on an old table, a data fix)
is a function of the connection given to its version's step, ``_Migration(N, then=fn)``, run after that version's
derived DDL. A dropped or renamed column also changes what the earlier, derived steps build from the current
table, so that change must also give those steps back their old table (a frozen declaration of it, as the
snapshot test will demand): the one case where a table is declared twice.

An old migration must never change when the schema moves on: the snapshot test in tests/test_ledger.py migrates an
empty SQLite to each version and compares its DDL with tests/data/ledger_schema/v{N}.sql, and another test checks
that migrating an empty database yields exactly the current tables.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
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
    sa.Column("model_sha", sa.String(64), info={"since": 2}),
    sa.Index("ix_orders_status", "status"),
    info={"since": 1},
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
    info={"since": 1},
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
    info={"since": 1},
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
    info={"since": 1},
)

bot_state = sa.Table(
    "bot_state",
    metadata,
    sa.Column("key", sa.String(128), primary_key=True),
    sa.Column("value", sa.Text, nullable=False),
    sa.Column("updated_at_ms", sa.BigInteger, nullable=False),
    info={"since": 1},
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
    info={"since": 2},
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
    info={"since": 2},
)

events = sa.Table(
    "events",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("ts_ms", sa.BigInteger, nullable=False, index=True),
    sa.Column("type", sa.String(32), nullable=False),
    sa.Column("payload", sa.Text, nullable=False),
    info={"since": 2},
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
    info={"since": 3},
)

shadow_trades = sa.Table(
    "shadow_trades",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("model", sa.String(64), nullable=False, index=True),
    *_round_trip_columns(),
    info={"since": 3},
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
    info={"since": 3},
)


def within(query: sa.Select[Any], column: sa.ColumnElement[int], since: datetime | None, until: datetime | None) -> Any:
    """Return `query` kept to rows whose ms timestamp `column` lies in [`since`, `until`) (an open end when None)."""
    if since is not None:
        query = query.where(column >= ms_from_utc(since))
    if until is not None:
        query = query.where(column < ms_from_utc(until))
    return query


# --------------------------------------------------------------------------------------------- migrations


def _since(item: sa.Table | sa.Column[Any] | sa.Index) -> int:
    """Return the schema version that brought `item`: its own ``info["since"]``, else its table's (an index: the
    latest of its own, its table's and its columns')."""
    if isinstance(item, sa.Table):
        return int(item.info["since"])
    if isinstance(item, sa.Column):
        return int(item.info.get("since", _since(item.table)))
    assert item.table is not None
    return max([int(item.info.get("since", 0)), _since(item.table), *(_since(c) for c in item.columns)])


def _migrated_tables() -> list[sa.Table]:
    """The tables the steps create, referenced ones first (``migrate`` creates schema_version itself)."""
    return [table for table in metadata.sorted_tables if table is not schema_version]


def _create_table(conn: Connection, table: sa.Table, version: int) -> None:
    # CreateTable has no column filter; it compiles the CreateColumn elements in `columns`, so keep those of then.
    create = sa.schema.CreateTable(table)
    create.columns = [ddl for ddl in create.columns if _since(ddl.element) <= version]
    conn.execute(create)


def _add_column(conn: Connection, column: sa.Column[Any]) -> None:
    # The column's DDL compiled for the connection's dialect, so SQLite and PostgreSQL get the same generic SQL.
    name = conn.dialect.identifier_preparer.format_table(column.table)
    definition = sa.schema.CreateColumn(column).compile(dialect=conn.dialect)
    conn.exec_driver_sql(f"ALTER TABLE {name} ADD COLUMN {definition}")


@dataclass(frozen=True)
class _Migration:
    """Bring the schema to `version`: create the tables that appeared in it (with only their columns of that
    version or older), add the columns that appeared in it to older tables, create its indexes, then run `then`."""

    version: int
    then: Callable[[Connection], None] | None = None

    def __call__(self, conn: Connection) -> None:
        for table in _migrated_tables():
            if _since(table) == self.version:
                _create_table(conn, table, self.version)
            elif _since(table) < self.version:
                for column in table.columns:
                    if _since(column) == self.version:
                        _add_column(conn, column)
            for index in table.indexes:
                if _since(index) == self.version:
                    index.create(conn)
        if self.then is not None:
            self.then(conn)


MIGRATIONS: list[Callable[[Connection], None]] = [
    _Migration(1),  # orders, order_events, fills, positions, bot_state
    _Migration(2),  # orders.model_sha; closed_trades, equity_snapshots, events
    _Migration(3),  # shadow_orders, shadow_trades, model_marks
    # Append _Migration(4) when something says since=4. A change no annotation can express (a dropped or renamed
    # column, a data fix) is a function of the connection run after that version's DDL: _Migration(4, then=...).
]
"""Schema migrations in order; migration i (0-based) brings the schema to version i + 1. Only ever append."""

SCHEMA_VERSION = len(MIGRATIONS)
"""The schema version this code reads and writes."""


def _check_annotations() -> None:
    """Refuse at import an annotation no migration can apply: every error here is the author's, not the database's."""
    for table in _migrated_tables():
        if not 1 <= _since(table) <= SCHEMA_VERSION:
            raise ValueError(f"table {table.name} says since={_since(table)}: versions run 1..{SCHEMA_VERSION}")
        for column in table.columns:
            where = f"column {table.name}.{column.name} (since {_since(column)})"
            if not _since(table) <= _since(column) <= SCHEMA_VERSION:
                raise ValueError(f"{where}: must lie in {_since(table)}..{SCHEMA_VERSION}")
            for key in column.foreign_keys:
                if _since(key.column.table) > _since(column):
                    raise ValueError(f"{where} refers to {key.column.table.name}, which is newer")
            if _since(column) == _since(table):
                continue
            in_constraint = any(
                isinstance(constraint, sa.schema.ColumnCollectionConstraint)
                and constraint.columns.contains_column(column)
                for constraint in table.constraints
            )
            if in_constraint or (not column.nullable and column.server_default is None):
                raise ValueError(
                    f"{where} is a key, in a constraint or NOT NULL without a server default: ALTER TABLE ADD "
                    "COLUMN cannot add it to existing rows on every database; add it in an explicit step"
                )


_check_annotations()


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
