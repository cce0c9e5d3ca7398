"""Exchange profiles: what the generic ccxt venue must know about one exchange, chosen by `exchange.exchange_id`.

ccxt unifies most of an exchange's API, not all of it: the request parameter that carries our client order id,
the one that looks an order up by it, the options that keep a spot bot off the futures and margin endpoints, and
the websocket message that says a candle closed. A profile holds exactly those; everything else is ccxt's.

Adding an exchange is one small module beside `adapters.ccxt.binance` (an `ExchangeProfile` constant), one line in
`adapters.ccxt.config.PROFILES`, and a YAML under `config/exchange/`. An exchange without a profile runs on
`GENERIC`: ccxt's unified `clientOrderId` parameter and no closed-candle hook (a candle counts as closed once a
newer one appears).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

ClosedFlags = dict[tuple[str, str], set[int]]
"""Open times of candles the exchange flagged closed, by (market id, interval)."""


@dataclass(frozen=True)
class ExchangeProfile:
    """The exchange specifics the generic ccxt adapter needs."""

    exchange_id: str
    """The ccxt exchange id this profile describes (`*` for the generic fallback)."""
    spot_options: Mapping[str, Any] = field(default_factory=dict)
    """ccxt `options` for a spot-only bot (`exchange.spot_only`)."""
    client_order_id_param: str = "clientOrderId"
    """Parameter of `create_order` that sets our client order id."""
    lookup_param: str = "clientOrderId"
    """Parameter of `fetch_order` / `cancel_order` that finds an order by our client order id."""
    hook_closed_flag: Callable[[Any, ClosedFlags], None] | None = None
    """Patch a ccxt.pro instance so the exchange's own "candle closed" flag is recorded (ccxt drops it)."""

    def create_params(self, client_order_id: str) -> dict[str, str]:
        """Return the `create_order` params that send our client order id."""
        return {self.client_order_id_param: client_order_id}

    def lookup_params(self, client_order_id: str) -> dict[str, str]:
        """Return the `fetch_order` / `cancel_order` params that find an order by our client order id."""
        return {self.lookup_param: client_order_id}

    def options(self, *, spot_only: bool) -> dict[str, Any]:
        """Return the ccxt options the exchange is built with."""
        return dict(self.spot_options) if spot_only else {}


GENERIC = ExchangeProfile(exchange_id="*")
"""Any exchange without a profile of its own: ccxt's unified parameters only."""
