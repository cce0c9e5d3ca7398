"""The bot's own book: position and cash from its own fills only, reservations, and the rebuild from the ledger."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pytest

from adapters.paper.config import BTC_USDT
from adapters.types import Balance, ClientOrderId, Fill, OrderRequest, OrderType, Side
from bot.engine.valuation import mark_equity
from bot.ledger.store import Ledger
from bot.orders.book import Book, CapitalConfig

T0 = datetime(2024, 3, 1, 12, 0, tzinfo=UTC)
SYMBOL = "BTC/USDT"


def fill(
    trade_id: str, cid: str, side: Side, amount: str, price: str, fee: str, fee_ccy: str, minutes: int = 0
) -> Fill:
    return Fill(
        trade_id,
        ClientOrderId(cid),
        SYMBOL,
        side,
        Decimal(amount),
        Decimal(price),
        Decimal(fee),
        fee_ccy,
        T0 + timedelta(minutes=minutes),
    )


def test_position_and_cash_follow_the_bots_fills_with_fees() -> None:
    book = Book(CapitalConfig(quote=Decimal(1000), base={SYMBOL: Decimal("0.002")}), "USDT")
    assert book.position(SYMBOL) == Decimal("0.002") and book.free_quote("USDT") == 1000
    book.apply_fill(fill("t1", "b1", Side.BUY, "0.01", "40000", "0.00001", "BTC"))  # Binance: fee in the coin bought
    assert book.position(SYMBOL) == Decimal("0.01199") and book.cash("USDT") == Decimal(600)
    assert book.entry_price(SYMBOL) == Decimal("0.00999") * 40000 / Decimal("0.01199")  # assigned base: entry 0
    book.apply_fill(fill("t2", "s1", Side.SELL, "0.01199", "41000", "0.49159", "USDT", minutes=5))
    assert book.position(SYMBOL) == 0 and book.entry_price(SYMBOL) == 0
    assert book.cash("USDT") == Decimal(600) + Decimal("0.01199") * 41000 - Decimal("0.49159")
    equity, notional = mark_equity(book.balances(), "USDT", {"USDT": Decimal(1), "BTC": Decimal(41000)})
    assert equity == book.cash("USDT") and notional == 0


def test_open_orders_reserve_quote_until_filled_or_final() -> None:
    book = Book(CapitalConfig(quote=Decimal(1000)), "USDT")
    book.reserve(ClientOrderId("l1"), "USDT", Decimal(400), for_amount=Decimal("0.01"))
    assert book.free_quote("USDT") == 600 and book.balances()["USDT"].used == 400
    book.apply_fill(fill("t1", "l1", Side.BUY, "0.004", "40000", "0", "USDT"))  # 40 % filled at the limit
    assert book.reserved("USDT") == 240 and book.cash("USDT") == 840 and book.free_quote("USDT") == 600
    assert book.balances()["USDT"] == Balance("USDT", Decimal(600), Decimal(240))
    assert book.balances()["BTC"].total == Decimal("0.004")
    book.release(ClientOrderId("l1"))  # cancelled: the rest is free again
    assert book.reserved("USDT") == 0 and book.free_quote("USDT") == 840
    balances = book.balances()
    assert balances["USDT"] == Balance("USDT", Decimal(840), Decimal(0))
    balances.clear()  # the caller's copy: the book's own figures are untouched
    assert book.balances()["USDT"].free == 840


def test_flatten_closes_only_the_bots_position_rounded_down() -> None:
    book = Book(CapitalConfig(quote=Decimal(1000)), "USDT")
    assert book.flatten_request(SYMBOL, BTC_USDT, ClientOrderId("f0")) is None
    book.apply_fill(fill("t1", "b1", Side.BUY, "0.001237", "40000", "0", "USDT"))
    request = book.flatten_request(SYMBOL, BTC_USDT, ClientOrderId("f1"), price=Decimal(40000))
    assert request == OrderRequest(ClientOrderId("f1"), SYMBOL, Side.SELL, OrderType.MARKET, Decimal("0.00123"))


def test_from_ledger_replays_only_the_bots_fills_and_reserves_pending_limits(tmp_path: Path) -> None:
    ledger = Ledger(f"sqlite:///{tmp_path / 'live.db'}")
    ledger.record_new_order(
        OrderRequest(ClientOrderId("b1"), SYMBOL, Side.BUY, OrderType.MARKET, Decimal("0.01")), ts=T0
    )
    ledger.record_fill(fill("t1", "b1", Side.BUY, "0.01", "40000", "0", "USDT"))
    ledger.record_fill(fill("t2", "web_1", Side.SELL, "0.5", "40000", "0", "USDT"))  # the user's own trade
    limit = OrderRequest(ClientOrderId("l1"), SYMBOL, Side.BUY, OrderType.LIMIT, Decimal("0.005"), Decimal(39000))
    ledger.record_new_order(limit, ts=T0, sent=True)
    book = Book.from_ledger(ledger, CapitalConfig(quote=Decimal(1000)), "USDT")
    assert book.position(SYMBOL) == Decimal("0.01") and book.cash("USDT") == 600
    assert book.reserved("USDT") == Decimal("195") and book.free_quote("USDT") == Decimal("405")
    ledger.close()


@pytest.mark.parametrize(
    ("capital", "message"),
    [
        (dict(quote=Decimal(-1)), "capital.quote must be a finite Decimal >= 0"),
        (dict(base={"BTCUSDT": Decimal(1)}), "symbol must look like BASE/QUOTE"),
        (dict(base={SYMBOL: Decimal(-1)}), r"capital.base.BTC/USDT must be a finite Decimal >= 0"),
    ],
)
def test_capital_config_rejects_bad_values(capital: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        CapitalConfig(**capital)  # type: ignore[arg-type]
