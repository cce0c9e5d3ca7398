"""Ledger: migrations, SQLite settings, exact Decimal storage, idempotent fills, position accounting, bot state.

Every test that takes `db_url` or `ledger` runs twice: on a SQLite file and on a real PostgreSQL server
(tests/support/postgres.py: Debian's postgresql, started once per session; a fresh database per test).
"""

from __future__ import annotations

import re
import sys
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pytest
import sqlalchemy as sa

from adapters.types import ClientOrderId, Fill, OrderRequest, OrderStatus, OrderType, Side
from bot.events import AlertEvent, EquityEvent, from_json
from bot.ledger import positions as positions_module
from bot.ledger.schema import (
    SCHEMA_VERSION,
    LedgerError,
    create_ledger_engine,
    default_ledger_url,
    metadata,
    migrate,
    schema_version,
)
from bot.ledger.store import Ledger
from bot.ledger.types import DuplicateOrderError, StaleOrderState
from tests.support.postgres import PostgresServer

T0 = datetime(2024, 3, 1, 12, 0, tzinfo=UTC)
SCHEMA_SNAPSHOTS = Path(__file__).parent / "data" / "ledger_schema"


def fill(
    trade_id: str,
    side: Side,
    amount: str,
    price: str,
    fee: str = "0",
    fee_currency: str = "USDT",
    minutes: int = 0,
    cid: str = "o1",
) -> Fill:
    return Fill(
        trade_id,
        ClientOrderId(cid),
        "BTC/USDT",
        side,
        Decimal(amount),
        Decimal(price),
        Decimal(fee),
        fee_currency,
        T0 + timedelta(minutes=minutes),
    )


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.integration)])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """An empty ledger database: a SQLite file, or a fresh database on the session's PostgreSQL server."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'paper.db'}"
        return
    server: PostgresServer = request.getfixturevalue("postgres_server")
    name = server.create_database()
    try:
        yield server.url(name)
    finally:
        server.drop_database(name)


@pytest.fixture
def ledger(db_url: str) -> Iterator[Ledger]:
    ledger = Ledger(db_url)
    try:
        yield ledger
    finally:
        ledger.close()


@pytest.fixture
def sqlite_ledger(tmp_path: Path) -> Ledger:
    return Ledger(f"sqlite:///{tmp_path / 'paper.db'}")


def test_new_database_is_migrated_to_exactly_the_current_schema(ledger: Ledger) -> None:
    assert ledger.version == SCHEMA_VERSION == 3
    inspector = sa.inspect(ledger.engine)
    assert set(inspector.get_table_names()) == set(metadata.tables)
    for name, table in metadata.tables.items():
        assert [c["name"] for c in inspector.get_columns(name)] == [c.name for c in table.columns], name


def test_sqlite_runs_in_wal_with_foreign_keys(sqlite_ledger: Ledger) -> None:
    ledger = sqlite_ledger
    with ledger.engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
        assert conn.exec_driver_sql("PRAGMA synchronous").scalar() == 1  # NORMAL (see the module docstring)
    full = Ledger(str(ledger.engine.url).replace("paper.db", "full.db"), synchronous="FULL")
    with full.engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA synchronous").scalar() == 2


def test_v1_database_with_data_migrates_to_current(db_url: str) -> None:
    url = db_url
    engine = create_ledger_engine(url)
    assert migrate(engine, target=1) == 1
    with engine.begin() as conn:
        conn.exec_driver_sql(
            "INSERT INTO orders (client_order_id, symbol, side, type, amount, status, filled, fee, created_at_ms, "
            "updated_at_ms) VALUES ('old-1', 'BTC/USDT', 'buy', 'market', '0.5', 'filled', '0.5', '0.01', 1, 2)"
        )
        assert not sa.inspect(conn).has_table("closed_trades")
    engine.dispose()
    ledger = Ledger(url)
    assert ledger.version == SCHEMA_VERSION
    old = ledger.get_order(ClientOrderId("old-1"))
    assert old is not None and old.amount == Decimal("0.5") and old.status is OrderStatus.FILLED
    assert ledger.order_model_sha(ClientOrderId("old-1")) is None
    assert ledger.closed_trades() == []
    with ledger.engine.connect() as conn:
        applied = list(conn.execute(sa.select(schema_version.c.version).order_by(schema_version.c.version)).scalars())
        assert applied == list(range(1, SCHEMA_VERSION + 1))
        assert sa.inspect(conn).has_table("shadow_trades") and sa.inspect(conn).has_table("model_marks")
    ledger.close()
    assert Ledger(url).version == SCHEMA_VERSION  # reopening applies nothing twice


def _normalised(sql: str) -> str:
    sql = " ".join(sql.split())
    return re.sub(r"\s*,\s*", ", ", re.sub(r"\s+\)", ")", re.sub(r"\(\s+", "(", sql)))


def schema_snapshot(version: int, directory: Path) -> str:
    """Return the normalised DDL of an empty SQLite ledger migrated to `version`: its tables' and indexes' SQL
    from sqlite_master, whitespace collapsed, one statement a line, sorted."""
    engine = create_ledger_engine(f"sqlite:///{directory / f'v{version}.db'}")
    try:
        assert migrate(engine, target=version, now_ms=0) == version
        with engine.connect() as conn:
            rows = conn.exec_driver_sql(
                "SELECT sql FROM sqlite_master WHERE type IN ('table', 'index') AND sql IS NOT NULL"
            ).scalars()
            statements = [_normalised(sql) for sql in rows]
    finally:
        engine.dispose()
    return "".join(f"{statement};\n" for statement in sorted(statements))


def write_schema_snapshot(version: int, directory: Path) -> Path:
    """Write tests/data/ledger_schema/v{version}.sql for the newest migration only, never over an existing one."""
    path = SCHEMA_SNAPSHOTS / f"v{version}.sql"
    if path.exists():
        raise FileExistsError(f"{path} exists: an old migration must never change; add a new step instead")
    if version != SCHEMA_VERSION:
        raise ValueError(f"only the newest migration ({SCHEMA_VERSION}) gets a new snapshot, not {version}")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(schema_snapshot(version, directory))
    return path


@pytest.mark.parametrize("version", range(1, SCHEMA_VERSION + 1))
def test_each_migration_still_builds_its_snapshot(version: int, tmp_path: Path) -> None:
    """Migrating an empty SQLite to each version gives the DDL pinned in tests/data/ledger_schema/v{N}.sql.

    A database in the field is at some old version and will be upgraded by the steps after it, so each step must
    keep building what it always built. After appending migration N (and only then), write its snapshot once with
    ``python -m tests.test_ledger N`` (it refuses to overwrite an existing one) and commit it with the migration.
    """
    path = SCHEMA_SNAPSHOTS / f"v{version}.sql"
    if not path.exists():
        pytest.fail(f"no snapshot of migration {version}: once it is final, run python -m tests.test_ledger {version}")
    actual = schema_snapshot(version, tmp_path)
    assert actual == path.read_text(), (
        f"migration {version} changed: an old migration must never change; add a new step instead "
        f"(the DDL of an empty database migrated to v{version} no longer matches {path.name})"
    )


def test_every_schema_snapshot_has_its_migration() -> None:
    assert sorted(p.name for p in SCHEMA_SNAPSHOTS.glob("v*.sql")) == sorted(
        f"v{v}.sql" for v in range(1, SCHEMA_VERSION + 1)
    ), f"the snapshots must be exactly v1..v{SCHEMA_VERSION}.sql: migrations are only appended, each with its own"


def test_newer_schema_is_refused(db_url: str) -> None:
    url = db_url
    Ledger(url).close()
    engine = create_ledger_engine(url)
    with engine.begin() as conn:
        conn.execute(sa.insert(schema_version).values(version=99, applied_at_ms=0))
    with pytest.raises(LedgerError, match="schema version 99, newer"):
        Ledger(url)


def test_default_urls_separate_paper_and_live(tmp_path: Path) -> None:
    paper, live = default_ledger_url("paper", tmp_path), default_ledger_url("live", tmp_path)
    assert paper.endswith("/paper.db") and live.endswith("/live.db")
    assert default_ledger_url("backtest", tmp_path) == "sqlite://"
    with pytest.raises(ValueError, match="'demo'"):
        default_ledger_url("demo", tmp_path)  # type: ignore[arg-type]
    Ledger(paper).set_state("k", "paper")
    assert Ledger(live).get_state("k") is None
    memory = Ledger("sqlite://")
    memory.set_state("k", "v")
    assert memory.get_state("k") == "v"


def test_orders_are_stored_exactly_and_transitions_recorded(ledger: Ledger) -> None:
    request = OrderRequest(
        ClientOrderId("a-1"),
        "BTC/USDT",
        Side.SELL,
        OrderType.LIMIT,
        Decimal("0.123456789012345678"),
        Decimal("43210.0000001"),
    )
    ledger.record_new_order(request, ts=T0, model_sha="f" * 64)
    with ledger.engine.connect() as conn:
        raw = conn.exec_driver_sql("SELECT amount, price FROM orders WHERE client_order_id='a-1'").one()
    assert tuple(raw) == ("0.123456789012345678", "43210.0000001")  # TEXT, not a float
    with pytest.raises(DuplicateOrderError, match="a-1"):
        ledger.record_new_order(request, ts=T0)
    ledger.update_order(ClientOrderId("a-1"), OrderStatus.SENT, ts=T0, expected_from=OrderStatus.NEW)
    ledger.update_order(
        ClientOrderId("a-1"),
        OrderStatus.PARTIALLY_FILLED,
        ts=T0 + timedelta(seconds=1),
        filled=Decimal("0.1"),
        average_price=Decimal("43210"),
        venue_order_id="v9",
    )  # type: ignore[arg-type]
    with pytest.raises(StaleOrderState, match="expected state sent"):
        ledger.update_order(ClientOrderId("a-1"), OrderStatus.FILLED, ts=T0, expected_from=OrderStatus.SENT)
    with pytest.raises(LedgerError, match="nope"):
        ledger.update_order(ClientOrderId("nope"), OrderStatus.FILLED, ts=T0)
    order = ledger.get_order(ClientOrderId("a-1"))
    assert order is not None and order.status is OrderStatus.PARTIALLY_FILLED
    assert order.filled == Decimal("0.1") and order.venue_order_id == "v9" and order.price == request.price
    assert [(t.from_status, t.to_status) for t in ledger.transitions(ClientOrderId("a-1"))] == [
        (None, OrderStatus.NEW),
        (OrderStatus.NEW, OrderStatus.SENT),
        (OrderStatus.SENT, OrderStatus.PARTIALLY_FILLED),
    ]
    assert [o.client_order_id for o in ledger.orders({OrderStatus.PARTIALLY_FILLED})] == ["a-1"]
    assert ledger.orders({OrderStatus.OPEN}) == []


def test_transition_returns_the_stored_order_and_keeps_fill_figures_not_given(ledger: Ledger) -> None:
    request = OrderRequest(ClientOrderId("t-1"), "BTC/USDT", Side.BUY, OrderType.MARKET, Decimal("0.5"))
    ledger.record_new_order(request, ts=T0, sent=True)
    opened = ledger.transition_order(
        ClientOrderId("t-1"), OrderStatus.OPEN, ts=T0, expected_from=OrderStatus.SENT, venue_order_id="v1"
    )  # type: ignore[arg-type]
    filled = ledger.transition_order(
        ClientOrderId("t-1"),
        OrderStatus.FILLED,
        ts=T0 + timedelta(seconds=1),
        expected_from=OrderStatus.OPEN,
        filled=Decimal("0.5"),
        average_price=Decimal("43000.5"),
        fee=Decimal("0.0005"),
        fee_currency="BTC",
    )
    assert opened.status is OrderStatus.OPEN and opened.venue_order_id == "v1" and opened.filled == 0
    # The venue id given once is kept by a later update that does not repeat it; the row returned is the stored one.
    assert filled == ledger.get_order(ClientOrderId("t-1"))
    assert (filled.status, filled.venue_order_id, filled.filled, filled.average_price, filled.fee) == (
        OrderStatus.FILLED,
        "v1",
        Decimal("0.5"),
        Decimal("43000.5"),
        Decimal("0.0005"),
    )
    with pytest.raises(StaleOrderState, match="expected state open"):
        ledger.transition_order(ClientOrderId("t-1"), OrderStatus.CANCELLED, ts=T0, expected_from=OrderStatus.OPEN)
    # The refused update changed nothing: the state check is the UPDATE's own condition.
    assert ledger.get_order(ClientOrderId("t-1")) == filled
    assert [t.to_status for t in ledger.transitions(ClientOrderId("t-1"))][-1] is OrderStatus.FILLED
    with pytest.raises(LedgerError, match="client_order_id=ghost is not in the ledger"):
        ledger.transition_order(ClientOrderId("ghost"), OrderStatus.OPEN, ts=T0, expected_from=OrderStatus.SENT)


def _order_path(ledger: Ledger) -> list[object]:
    """Run orders and fills through every statement of the order path; return what the calls returned."""
    out: list[object] = []
    limit = OrderRequest(
        ClientOrderId("a-1"), "BTC/USDT", Side.SELL, OrderType.LIMIT, Decimal("0.5"), Decimal("43210.1")
    )
    ledger.record_new_order(limit, ts=T0, model_sha="f" * 64)
    ledger.record_new_order(
        OrderRequest(ClientOrderId("o1"), "BTC/USDT", Side.BUY, OrderType.MARKET, Decimal("2")), ts=T0, sent=True
    )
    with pytest.raises(DuplicateOrderError, match="a-1"):
        ledger.record_new_order(limit, ts=T0)
    out.append(ledger.update_order(ClientOrderId("a-1"), OrderStatus.SENT, ts=T0, expected_from=OrderStatus.NEW))
    out.append(ledger.update_order(ClientOrderId("a-1"), OrderStatus.OPEN, ts=T0, venue_order_id="v1"))  # type: ignore[arg-type]
    with pytest.raises(StaleOrderState, match="expected state sent"):
        ledger.update_order(ClientOrderId("a-1"), OrderStatus.FILLED, ts=T0, expected_from=OrderStatus.SENT)
    with pytest.raises(LedgerError, match="nope"):
        ledger.update_order(ClientOrderId("nope"), OrderStatus.FILLED, ts=T0)
    with pytest.raises(sa.exc.StatementError, match="must be Decimal"):
        ledger.update_order(ClientOrderId("a-1"), OrderStatus.OPEN, ts=T0, filled=0.1)  # type: ignore[arg-type]
    out.append(ledger.transition_order(ClientOrderId("o1"), OrderStatus.OPEN, ts=T0, expected_from=OrderStatus.SENT))
    out.append(
        ledger.transition_order(
            ClientOrderId("o1"),
            OrderStatus.FILLED,
            ts=T0 + timedelta(minutes=1),
            filled=Decimal("2"),
            average_price=Decimal("100"),
            fee=Decimal("0.2"),
            fee_currency="USDT",
        )
    )
    out.append(ledger.record_fill(fill("t1", Side.BUY, "2", "100", fee="0.2")))
    out.append(ledger.record_fill(fill("t1", Side.BUY, "2", "100", fee="0.2")))  # known: changes nothing
    out.append(ledger.record_fill(fill("t2", Side.SELL, "2", "110", minutes=5)))  # closes the round trip
    out.append(ledger.record_fill(fill("t4", Side.BUY, "3", "105", fee="0.001", fee_currency="BTC", minutes=6)))
    out.append(ledger.record_fill(fill("t5", Side.SELL, "4", "108", fee="0.4", minutes=7)))  # flips: short
    out.append(ledger.record_fill(fill("t3", Side.SELL, "1", "110", cid="not-ours")))
    out += [ledger.get_order(ClientOrderId(cid)) for cid in ("a-1", "o1", "ghost")]
    return out


def test_the_direct_sqlite_path_stores_and_raises_what_sqlalchemy_does(tmp_path: Path) -> None:
    # The order path runs on SQLite's own cursor (`_DirectSqlite`); with it off, every call goes through SQLAlchemy.
    direct, plain = Ledger(f"sqlite:///{tmp_path / 'direct.db'}"), Ledger(f"sqlite:///{tmp_path / 'plain.db'}")
    plain._direct = None
    assert direct._direct is not None
    try:
        assert _order_path(direct) == _order_path(plain)
        tables = [t for name, t in metadata.tables.items() if name != "schema_version"]  # stamped when migrated
        dumps = []
        for ledger in (direct, plain):
            with ledger.engine.connect() as conn:
                dumps.append({t.name: [tuple(r) for r in conn.execute(sa.select(t))] for t in tables})
        assert dumps[0] == dumps[1]
        assert len(dumps[0]["order_events"]) == 7 and len(dumps[0]["fills"]) == 5
        assert len(dumps[0]["closed_trades"]) == 2 and len(dumps[0]["positions"]) == 1
        # The position statements ran on SQLite's own cursor, not through SQLAlchemy's fallback.
        assert direct._direct is not None
        planned = {statement for statement, plan in direct._direct._plans.values() if plan is not None}
        assert {positions_module.POSITION_BY_SYMBOL, positions_module._UPDATE_POSITION} <= planned
    finally:
        direct.close()
        plain.close()


def test_direct_sqlite_writes_are_committed_and_unknown_internals_fall_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A write on the driver's cursor is inside SQLAlchemy's transaction: another process's connection sees it.
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    writer, other = Ledger(url), Ledger(url)
    try:
        assert writer._direct is not None
        writer.record_new_order(
            OrderRequest(ClientOrderId("c1"), "BTC/USDT", Side.BUY, OrderType.MARKET, Decimal("1")), ts=T0, sent=True
        )
        seen = other.get_order(ClientOrderId("c1"))
        assert seen is not None and seen.status is OrderStatus.SENT

        # A SQLAlchemy whose compiled statements lack the internals read: every statement takes SQLAlchemy's path.
        def no_internals(*args: object) -> None:
            raise AttributeError("_bind_processors")

        monkeypatch.setattr(type(writer._direct), "_compile", no_internals)
        writer._direct._plans.clear()
        writer.transition_order(ClientOrderId("c1"), OrderStatus.OPEN, ts=T0, expected_from=OrderStatus.SENT)
        seen = other.get_order(ClientOrderId("c1"))
        assert seen is not None and seen.status is OrderStatus.OPEN
    finally:
        writer.close()
        other.close()


def test_one_transaction_commits_at_the_end_and_rolls_back_on_error(db_url: str) -> None:
    ledger = Ledger(db_url)
    other = Ledger(db_url)  # a second reader, as a report or the dashboard would be
    try:
        with ledger.one_transaction():
            ledger.record_new_order(
                OrderRequest(ClientOrderId("b-1"), "BTC/USDT", Side.BUY, OrderType.MARKET, Decimal("1")), ts=T0
            )
            ledger.record_fill(fill("t1", Side.BUY, "1", "100", cid="b-1"))
            assert ledger.position("BTC/USDT").amount == 1  # read inside: sees its own writes
            assert other.get_order(ClientOrderId("b-1")) is None  # nothing committed yet
            with pytest.raises(LedgerError, match="already inside"), ledger.one_transaction():
                pass
        assert other.position("BTC/USDT").amount == 1  # committed when the block ended
        with pytest.raises(RuntimeError, match="boom"), ledger.one_transaction():
            ledger.record_fill(fill("t2", Side.SELL, "1", "110", cid="b-1"))
            raise RuntimeError("boom")
        assert [f.trade_id for f in other.fills()] == ["t1"]  # the failed block wrote nothing
        ledger.record_fill(fill("t3", Side.SELL, "1", "110", cid="b-1"))  # and the ledger commits per call again
        assert other.position("BTC/USDT").amount == 0
    finally:
        ledger.close()
        other.close()


def test_inside_one_transaction_the_orders_it_hands_out_are_the_stored_rows(db_url: str) -> None:
    """Inside `one_transaction` the ledger keeps the orders it read or wrote and applies its updates to them in
    Python instead of reading the row back: each one it returns must equal the row as the database has it."""
    ledger = Ledger(db_url)
    cid = ClientOrderId("k-1")

    def stored() -> object:
        [row] = ledger.orders()  # a query: never the kept copy
        return row

    try:
        with ledger.one_transaction():
            request = OrderRequest(cid, "BTC/USDT", Side.BUY, OrderType.LIMIT, Decimal("0.50"), price=Decimal("100.10"))
            ledger.record_new_order(request, ts=T0, sent=True)
            assert ledger.get_order(cid) == stored()  # read, and kept from here
            steps = [
                (OrderStatus.OPEN, OrderStatus.SENT, {"venue_order_id": "v-9"}),
                (
                    OrderStatus.PARTIALLY_FILLED,
                    OrderStatus.OPEN,
                    {"filled": Decimal("0.20"), "average_price": Decimal("100.1"), "fee": Decimal("0.0200")},
                ),
                (OrderStatus.PARTIALLY_FILLED, None, {"fee_currency": "USDT", "reason": "more fees"}),
                (OrderStatus.FILLED, OrderStatus.PARTIALLY_FILLED, {"filled": Decimal("0.50"), "fee": Decimal("-0")}),
            ]
            for k, (status, expected, figures) in enumerate(steps, start=1):
                returned = ledger.transition_order(
                    cid, status, ts=T0 + timedelta(seconds=k, microseconds=1500), expected_from=expected, **figures
                )
                assert returned == stored() == ledger.get_order(cid), status
                assert str(returned.fee) == str(stored().fee)  # the same Decimal, exponent and sign included
            # A stale expectation is refused as outside, and changes nothing.
            with pytest.raises(StaleOrderState, match="expected state open"):
                ledger.transition_order(cid, OrderStatus.CANCELLED, ts=T0, expected_from=OrderStatus.OPEN)
            assert ledger.get_order(cid) == stored()
            assert ledger.get_order(cid).status is OrderStatus.FILLED  # type: ignore[union-attr]
        assert ledger.get_order(cid) == stored()  # after the block: read from the database again
    finally:
        ledger.close()


def test_floats_are_refused(ledger: Ledger) -> None:
    from bot.ledger.schema import positions

    with pytest.raises(sa.exc.StatementError, match="must be Decimal"), ledger.engine.begin() as conn:
        conn.execute(
            sa.insert(positions).values(
                symbol="X/Y",
                amount=0.1,
                average_entry_price=Decimal(0),
                realized_pnl=Decimal(0),
                fees=Decimal(0),
                updated_at_ms=0,
                trip_fees=Decimal(0),
                trip_closed_qty=Decimal(0),
                trip_exit_notional=Decimal(0),
                trip_gross_pnl=Decimal(0),
            )
        )


def own_order(ledger: Ledger, cid: str = "o1") -> None:
    """Record the bot's order the test's fills belong to (fills of other orders change no position)."""
    request = OrderRequest(ClientOrderId(cid), "BTC/USDT", Side.BUY, OrderType.MARKET, Decimal(1))
    ledger.record_new_order(request, ts=T0, sent=True)


def test_fills_are_idempotent_and_build_positions_and_closed_trades(ledger: Ledger) -> None:
    own_order(ledger)
    first = ledger.record_fill(fill("t1", Side.BUY, "1", "100", fee="0.1"))
    assert first.inserted and first.position.amount == 1 and first.position.average_entry_price == 100
    assert not ledger.record_fill(fill("t1", Side.BUY, "1", "100", fee="0.1")).inserted
    second = ledger.record_fill(fill("t2", Side.BUY, "1", "110", fee="0.11", minutes=5))
    assert second.position.amount == 2 and second.position.average_entry_price == 105
    partial = ledger.record_fill(fill("t3", Side.SELL, "0.5", "120", fee="0.06", minutes=10))
    assert partial.closed_trade is None and partial.position.amount == Decimal("1.5")
    last = ledger.record_fill(fill("t4", Side.SELL, "1.5", "130", fee="0.195", minutes=70))
    trade = last.closed_trade
    assert trade is not None and last.position.is_flat
    assert trade.side is Side.BUY and trade.qty == 2 and trade.entry_price == 105
    assert trade.exit_price == Decimal("127.5")  # (0.5*120 + 1.5*130) / 2
    fees = Decimal("0.1") + Decimal("0.11") + Decimal("0.06") + Decimal("0.195")
    assert trade.fees == fees
    assert trade.realized_pnl == Decimal("0.5") * 15 + Decimal("1.5") * 25 - fees
    assert trade.duration_seconds == 70 * 60
    assert ledger.position("BTC/USDT").realized_pnl == trade.realized_pnl
    assert ledger.closed_trades() == [trade]
    assert len(ledger.fills("BTC/USDT")) == 4
    flows = ledger.currency_flows()
    assert flows["BTC"] == 0
    assert flows["USDT"] == Decimal(-100 - 110 + 60 + 195) - fees


def test_flip_closes_the_trade_and_opens_the_other_side(ledger: Ledger) -> None:
    own_order(ledger)
    ledger.record_fill(fill("f1", Side.BUY, "1", "100"))
    result = ledger.record_fill(fill("f2", Side.SELL, "3", "90", fee="0.3", minutes=1))
    assert result.closed_trade is not None and result.closed_trade.realized_pnl == Decimal(-10) - Decimal("0.1")
    assert result.position.amount == -2 and result.position.average_entry_price == 90
    back = ledger.record_fill(fill("f3", Side.BUY, "2", "80", minutes=2))
    assert back.closed_trade is not None and back.closed_trade.side is Side.SELL
    assert back.closed_trade.realized_pnl == Decimal(20) - Decimal("0.2")  # short 2 from 90 to 80, rest of the fee


def test_fee_in_the_base_currency_reduces_the_holding(ledger: Ledger) -> None:
    own_order(ledger)
    bought = ledger.record_fill(fill("b1", Side.BUY, "1", "100", fee="0.001", fee_currency="BTC"))
    assert bought.position.amount == Decimal("0.999")
    sold = ledger.record_fill(fill("b2", Side.SELL, "0.999", "110", minutes=1))
    assert sold.position.is_flat and sold.closed_trade is not None
    assert sold.closed_trade.fees == Decimal("0.1")
    assert ledger.currency_flows()["BTC"] == 0


def test_a_fill_of_an_order_that_is_not_the_bots_is_kept_but_changes_no_position(ledger: Ledger) -> None:
    own_order(ledger)
    ledger.record_fill(fill("own", Side.BUY, "0.5", "100"))
    foreign = ledger.record_fill(fill("user", Side.SELL, "2", "110", fee="0.22", cid="web_123"))
    assert foreign.inserted and not foreign.own and foreign.closed_trade is None
    assert ledger.position("BTC/USDT").amount == Decimal("0.5")  # the user's sale is not the bot's
    assert [f.trade_id for f in ledger.own_fills()] == ["own"]
    assert ledger.foreign_flows() == {"BTC": Decimal(-2), "USDT": Decimal(220) - Decimal("0.22")}
    assert not ledger.record_fill(fill("user", Side.SELL, "2", "110", cid="web_123")).inserted


def test_state_equity_and_events_survive_reopening(db_url: str) -> None:
    url = db_url
    ledger = Ledger(url)
    ledger.set_state("risk.state", "halted", ts=T0)
    ledger.set_states({"risk.state": "active", "x.y": "1"}, ts=T0)
    snapshot = EquityEvent(
        ts=T0,
        bot_id="b",
        equity=Decimal("10010.5"),
        cash=Decimal("9000"),
        positions_value=Decimal("1010.5"),
        realized_pnl=Decimal(0),
        unrealized_pnl=Decimal("10.5"),
        drawdown=0.01,
    )
    ledger.record_equity(snapshot)
    alert = AlertEvent(ts=T0, bot_id="b", level="warning", code="c", message="m")
    ledger.record_event(alert)
    ledger.close()
    again = Ledger(url)
    assert again.get_state("risk.state") == "active"
    assert again.state("x.") == {"x.y": "1"}
    assert again.equity_snapshots() == [snapshot]
    assert again.equity_snapshots(since=T0 + timedelta(seconds=1)) == []
    assert [from_json(p) for p in again.event_payloads("alert")] == [alert]


def test_schema_compiles_for_postgresql() -> None:
    """The PostgreSQL DDL keeps money out of floats (the suite above also runs every test on a real server)."""
    from sqlalchemy.dialects import postgresql

    for table in metadata.tables.values():
        ddl = str(sa.schema.CreateTable(table).compile(dialect=postgresql.dialect()))
        # Money is never a float: the floats are a drawdown fraction and a policy's target position.
        assert "FLOAT" not in ddl or table.name in ("equity_snapshots", "model_marks"), table.name
        assert "CREATE TABLE " + table.name in ddl
    orders_ddl = str(sa.schema.CreateTable(metadata.tables["orders"]).compile(dialect=postgresql.dialect()))
    assert "amount VARCHAR(64) NOT NULL" in orders_ddl  # Decimal stored exactly as text on PostgreSQL too


if __name__ == "__main__":  # python -m tests.test_ledger N: pin the schema of a newly appended migration N
    import tempfile

    with tempfile.TemporaryDirectory() as scratch:
        try:
            print(write_schema_snapshot(int(sys.argv[1]), Path(scratch)))
        except (FileExistsError, ValueError) as e:
            sys.exit(str(e))
