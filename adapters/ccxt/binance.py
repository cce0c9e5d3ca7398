"""Binance spot: the parts of its API ccxt does not unify (see `adapters.ccxt.profile`)."""

from __future__ import annotations

from typing import Any

from adapters.ccxt.profile import ClosedFlags, ExchangeProfile

# Binance spot without the calls a spot bot does not need: with the defaults and a key, load_markets also
# calls signed /sapi/v1/capital/config/getall and the futures exchangeInfo endpoints.
BINANCE_SPOT_OPTIONS: dict[str, Any] = {
    "defaultType": "spot",
    "fetchMarkets": {"types": ["spot"]},
    "fetchCurrencies": False,
    "fetchMargins": False,
    "warnOnFetchOpenOrdersWithoutSymbol": False,
}


def hook_binance_closed_flag(ws: Any, closed: ClosedFlags) -> None:
    """Record Binance's own "candle closed" flag, which ccxt's watch_ohlcv drops.

    Binance marks the last update of a kline with `k.x = true`; ccxt keeps only OHLCV. Without the flag a candle
    counts as closed once a newer one appears, which for a quiet market can be a while after the close.
    """
    handle_ohlcv = getattr(ws, "handle_ohlcv", None)
    if handle_ohlcv is None:
        return

    def handle_ohlcv_with_flag(client: Any, message: Any) -> Any:
        kline = message.get("k") if isinstance(message, dict) else None
        if isinstance(kline, dict) and kline.get("x") is True and kline.get("t") is not None:
            key = (str(kline.get("s")), str(kline.get("i")))
            closed.setdefault(key, set()).add(int(kline["t"]))
        return handle_ohlcv(client, message)

    ws.handle_ohlcv = handle_ohlcv_with_flag


BINANCE = ExchangeProfile(
    exchange_id="binance",
    spot_options=BINANCE_SPOT_OPTIONS,
    client_order_id_param="newClientOrderId",
    lookup_param="origClientOrderId",
    hook_closed_flag=hook_binance_closed_flag,
)
