"""A local exchange server that speaks Binance's spot REST wire format, with fault injection, for tests.

ccxt's own `binance` class talks to it (see /work/shared/reference/test-services.md), so request signing,
precision rounding and response/error parsing in tests are ccxt's real code. What it serves:

- `GET /api/v3/exchangeInfo`, `/time`, `/klines` (real candles from the bundled parquet), `/ticker/24hr`;
- signed `GET /api/v3/account`, `POST/GET/DELETE /api/v3/order`, `GET /api/v3/openOrders`, `/myTrades`,
  checking `X-MBX-APIKEY`, the HMAC-SHA256 `signature` and `timestamp` against `recvWindow` of a server clock
  that can be skewed (`clock_offset_ms`);
- the spot websocket kline stream (`/ws/<id>`, as ccxt.pro's `watch_ohlcv` uses it): SUBSCRIBE/UNSUBSCRIBE
  answered like Binance, kline events pushed by the test (`push_kline`), connections cut with `drop_websockets`;
- Binance error bodies `{"code": N, "msg": "..."}` with the HTTP statuses Binance uses;
- faults injected per endpoint with `inject(method, path, Fault(...))`: latency, HTTP 5xx, 429 with
  Retry-After, a hang longer than the client's timeout, a reject with a given code, a partial fill, and an
  order that is applied although its response is lost (connection dropped or 5xx after applying), and a
  SIGKILL of the client process (a daemon under test) before or after a request is applied; and an order
  lookup that lags (`order_lookup_lag`: a new order is "not found" for its first lookups).

Orders keep state (NEW → PARTIALLY_FILLED → FILLED, CANCELED, EXPIRED) and can be looked up by
`origClientOrderId`. Market orders fill at the close of the latest served candle.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import itertools
import json
import os
import signal
import socket
import time
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from functools import cache
from typing import Any

import numpy as np
import pandas as pd
import pytest
from aiohttp import WSMsgType, web

from adapters.ccxt.binance import BINANCE_SPOT_OPTIONS
from adapters.ccxt.config import CcxtConfig, RetryConfig
from adapters.data.sample import sample_path

API_KEY = "test-api-key-0123456789"
SECRET = "test-secret-abcdefghijklmnopqrstuvwxyz"
FEE_RATE = Decimal("0.001")
DEFAULT_RECV_WINDOW_MS = 5000
MAX_KLINES = 1000

Ohlcv = tuple[float, float, float, float, float]
"""Open, high, low, close, volume of one candle."""

TIMEFRAME_MS = {
    "1s": 1_000,
    "1m": 60_000,
    "5m": 300_000,
    "15m": 900_000,
    "1h": 3_600_000,
    "4h": 14_400_000,
    "1d": 86_400_000,
}


@dataclass(frozen=True)
class SymbolSpec:
    """One spot symbol the server lists, with Binance's filters."""

    symbol: str
    base: str
    quote: str
    step_size: str
    min_qty: str
    tick_size: str
    min_notional: str
    candles: str
    """Bundled sample name (adapters.data.sample) whose candles the server serves."""
    timeframe: str
    """The one kline interval served for this symbol."""
    notional_filter: str = "NOTIONAL"
    first_open_ms: int | None = None
    """Re-stamp the bundled candles as consecutive `timeframe` bars opening from here (None keeps their times).

    With a short timeframe (`1s`) and the market clock on real time, a daemon in another process sees candles
    close every second (tests/test_recovery.py)."""
    passes: int = 1
    """With `first_open_ms`: serve the bundled candles this many times in a row, each pass's prices scaled to go
    on from the previous pass's last close (a soak longer than the bundled file)."""


SYMBOLS = (
    SymbolSpec("BTCUSDT", "BTC", "USDT", "0.00001000", "0.00001000", "0.01000000", "5.00000000", "BTC/USDT-1h", "1h"),
    SymbolSpec(
        "ETHBTC",
        "ETH",
        "BTC",
        "0.00010000",
        "0.00010000",
        "0.00000100",
        "0.00010000",
        "ETH/BTC-5m",
        "5m",
        notional_filter="MIN_NOTIONAL",
    ),
    SymbolSpec(
        "LTCBTC",
        "LTC",
        "BTC",
        "0.01000000",
        "0.01000000",
        "0.00000100",
        "0.00010000",
        "LTC/BTC-5m",
        "5m",
        notional_filter="MIN_NOTIONAL",
    ),
)


@dataclass(frozen=True)
class CandleArrays:
    """Candles of one symbol as arrays: open time (epoch ms) and OHLCV."""

    open_ms: np.ndarray[Any, np.dtype[np.int64]]
    ohlcv: np.ndarray[Any, np.dtype[np.float64]]


@cache
def load_candles(sample: str) -> CandleArrays:
    """Read a bundled candle file once per process."""
    path = sample_path(sample)
    frame = pd.read_parquet(path) if path.suffix == ".parquet" else pd.read_feather(path)
    dates = pd.to_datetime(frame["date"], utc=True)
    open_ms = np.asarray(dates.dt.as_unit("ms").astype("int64"), dtype=np.int64)
    ohlcv = frame[["open", "high", "low", "close", "volume"]].to_numpy(dtype=np.float64)
    return CandleArrays(open_ms=open_ms, ohlcv=ohlcv)


@cache
def retimed_candles(sample: str, first_open_ms: int, step_ms: int, passes: int = 1) -> CandleArrays:
    """The bundled candles of `sample` as consecutive bars of `step_ms`, the first opening at `first_open_ms`.

    With `passes` > 1 the candles repeat, each pass's prices (not volumes) scaled so that it opens at the previous
    pass's last close: no jump at the seam for the candle guard to refuse."""
    arrays = load_candles(sample)
    parts = [arrays.ohlcv]
    for _ in range(passes - 1):
        scale = parts[-1][-1, 3] / arrays.ohlcv[0, 0]
        part = arrays.ohlcv.copy()
        part[:, :4] *= scale
        parts.append(part)
    ohlcv = np.concatenate(parts)
    open_ms = first_open_ms + step_ms * np.arange(len(ohlcv), dtype=np.int64)
    return CandleArrays(open_ms=open_ms, ohlcv=ohlcv)


def resample(candles: CandleArrays, interval_ms: int) -> CandleArrays:
    """Aggregate candles into longer ones (as Binance serves every interval); the last one may be in progress."""
    if len(candles.open_ms) == 0:
        return candles
    buckets = candles.open_ms // interval_ms * interval_ms
    starts = np.flatnonzero(np.r_[True, buckets[1:] != buckets[:-1]])
    ends = np.r_[starts[1:], len(buckets)] - 1
    ohlcv = candles.ohlcv
    rows = np.column_stack(
        [
            ohlcv[starts, 0],
            np.maximum.reduceat(ohlcv[:, 1], starts),
            np.minimum.reduceat(ohlcv[:, 2], starts),
            ohlcv[ends, 3],
            np.add.reduceat(ohlcv[:, 4], starts),
        ]
    )
    return CandleArrays(open_ms=buckets[starts], ohlcv=rows)


def number(value: float | Decimal) -> str:
    """Format a number the way Binance does: a plain decimal string (no exponent)."""
    if isinstance(value, Decimal):
        return format(value.normalize(), "f") if value != 0 else "0.00000000"
    return np.format_float_positional(value, trim="-")


@dataclass
class Fault:
    """A fault applied to the next `times` requests of one endpoint."""

    latency_s: float = 0.0
    """Delay before the request is handled."""
    status: int | None = None
    """Answer with this HTTP status (e.g. 503) and a Binance error body, without handling the request."""
    retry_after_s: int | None = None
    """With status 429/418: the Retry-After header."""
    hang_s: float | None = None
    """Wait this long (or until the server stops) before answering: longer than the client's timeout."""
    reject: tuple[int, str] | None = None
    """Refuse with this Binance error code and message (HTTP 400)."""
    partial_fill: Decimal | None = None
    """For POST /api/v3/order: fill only this fraction of the quantity at once."""
    drop_response: bool = False
    """Handle the request (an order is applied), then close the connection without answering."""
    status_after_apply: int | None = None
    """Handle the request (an order is applied), then answer with this HTTP status (e.g. 502)."""
    kill_pid: int | None = None
    """SIGKILL this process (a daemon under test) and drop the connection: a crash at a chosen point."""
    kill_after_apply: bool = False
    """With `kill_pid`: handle the request first (an order is applied or refused), then kill before answering."""
    times: int | None = 1
    """How many requests this fault hits; None for every one."""
    skip: int = 0
    """Let this many matching requests through untouched before the fault hits (a crash after N orders)."""

    @classmethod
    def server_error(cls, status: int = 503, times: int | None = 1) -> Fault:
        """Answer with an HTTP 5xx."""
        return cls(status=status, times=times)

    @classmethod
    def rate_limited(cls, retry_after_s: int = 1, times: int | None = 1) -> Fault:
        """Answer 429 with Retry-After."""
        return cls(status=429, retry_after_s=retry_after_s, times=times)

    @classmethod
    def timeout(cls, hang_s: float = 30.0, times: int | None = 1) -> Fault:
        """Hang longer than the client waits."""
        return cls(hang_s=hang_s, times=times)

    @classmethod
    def rejected(cls, code: int, msg: str, times: int | None = 1) -> Fault:
        """Refuse with a Binance error code."""
        return cls(reject=(code, msg), times=times)

    @classmethod
    def lost_response(cls, times: int | None = 1) -> Fault:
        """Apply the request, then drop the connection."""
        return cls(drop_response=True, times=times)

    @classmethod
    def kill(cls, pid: int, *, after_apply: bool = False, times: int | None = 1, skip: int = 0) -> Fault:
        """SIGKILL the client process `pid` when the request arrives (or once it is applied), never answering."""
        return cls(kill_pid=pid, kill_after_apply=after_apply, times=times, skip=skip)


@dataclass
class ServerOrder:
    """An order as the server keeps it."""

    order_id: int
    client_order_id: str
    symbol: str
    side: str
    type: str
    time_in_force: str | None
    orig_qty: Decimal
    price: Decimal
    time_ms: int
    executed_qty: Decimal = Decimal(0)
    cumulative_quote_qty: Decimal = Decimal(0)
    status: str = "NEW"
    update_time_ms: int = 0

    @property
    def is_open(self) -> bool:
        """Whether the order can still fill or be cancelled."""
        return self.status in ("NEW", "PARTIALLY_FILLED")

    def to_json(self) -> dict[str, Any]:
        """Render as GET /api/v3/order does."""
        return {
            "symbol": self.symbol,
            "orderId": self.order_id,
            "orderListId": -1,
            "clientOrderId": self.client_order_id,
            "price": number(self.price),
            "origQty": number(self.orig_qty),
            "executedQty": number(self.executed_qty),
            "cummulativeQuoteQty": number(self.cumulative_quote_qty),
            "status": self.status,
            "timeInForce": self.time_in_force or "GTC",
            "type": self.type,
            "side": self.side,
            "stopPrice": "0.00000000",
            "icebergQty": "0.00000000",
            "time": self.time_ms,
            "updateTime": self.update_time_ms or self.time_ms,
            "isWorking": True,
            "workingTime": self.time_ms,
            "origQuoteOrderQty": "0.00000000",
            "selfTradePreventionMode": "EXPIRE_MAKER",
        }


class BinanceError(Exception):
    """A Binance error answer."""

    def __init__(self, code: int, msg: str, status: int = 400) -> None:
        super().__init__(msg)
        self.code = code
        self.msg = msg
        self.status = status


@dataclass(frozen=True)
class LoggedRequest:
    """One request the server received."""

    method: str
    path: str
    params: Mapping[str, str]


@dataclass
class BinanceServer:
    """The server; `await start()`, point ccxt at `url`, `await stop()`."""

    api_key: str = API_KEY
    secret: str = SECRET
    clock_offset_ms: int = 0
    """Server clock minus real clock: a skew that signed requests must cope with."""
    market_clock_ms: Callable[[], int] | None = None
    """Market time: klines opening after it are not served yet; None serves every bundled candle."""
    balances: dict[str, list[Decimal]] = field(
        default_factory=lambda: {
            "USDT": [Decimal(10_000), Decimal(0)],
            "BTC": [Decimal(1), Decimal(0)],
            "ETH": [Decimal(10), Decimal(0)],
        }
    )
    """Asset → [free, locked]."""
    symbols: tuple[SymbolSpec, ...] = SYMBOLS
    requests: list[LoggedRequest] = field(default_factory=list)
    orders: dict[int, ServerOrder] = field(default_factory=dict)
    trades: list[dict[str, Any]] = field(default_factory=list)
    port: int = 0
    order_lookup_lag: int = 0
    """GET /api/v3/order answers "Order does not exist" (-2013) for the first N lookups of each order, as
    Binance may while a new order propagates (by client order id or by order id alike)."""
    _lookups: dict[int, int] = field(default_factory=dict)
    _faults: dict[tuple[str, str], list[Fault]] = field(default_factory=dict)
    _order_ids: itertools.count[int] = field(default_factory=lambda: itertools.count(1000))
    _trade_ids: itertools.count[int] = field(default_factory=lambda: itertools.count(50_000))
    _runner: web.AppRunner | None = None
    _stopping: asyncio.Event = field(default_factory=asyncio.Event)
    _received: asyncio.Event = field(default_factory=asyncio.Event)
    ws_sockets: list[KlineSocket] = field(default_factory=list)
    """Open connections of the websocket stream endpoint."""
    ws_subscriptions: list[str] = field(default_factory=list)
    """Every stream name subscribed (e.g. btcusdt@kline_1h), over all connections, in order."""
    _ws_changed: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def url(self) -> str:
        """Base URL, e.g. http://127.0.0.1:PORT."""
        return f"http://127.0.0.1:{self.port}"

    def spec(self, symbol_id: str) -> SymbolSpec:
        """Return a listed symbol or raise Binance's -1121."""
        for spec in self.symbols:
            if spec.symbol == symbol_id:
                return spec
        raise BinanceError(-1121, "Invalid symbol.")

    def now_ms(self) -> int:
        """Server clock (real clock plus the configured skew)."""
        return int(time.time() * 1000) + self.clock_offset_ms

    # --- test controls -------------------------------------------------------------------------------------

    def inject(self, method: str, path: str, fault: Fault) -> None:
        """Queue a fault for an endpoint, e.g. inject("POST", "/api/v3/order", Fault.lost_response())."""
        self._faults.setdefault((method.upper(), path), []).append(fault)

    def clear_faults(self) -> None:
        """Remove every queued fault."""
        self._faults.clear()

    def calls(self, method: str, path: str) -> list[LoggedRequest]:
        """Requests received for one endpoint."""
        return [r for r in self.requests if r.method == method.upper() and r.path == path]

    async def wait_for_calls(self, method: str, path: str, count: int) -> None:
        """Wait until the server has received `count` requests for an endpoint."""
        while len(self.calls(method, path)) < count:
            self._received.clear()
            await self._received.wait()

    def served_candles(self, symbol_id: str) -> CandleArrays:
        """The candles klines serves for a symbol (up to the market clock)."""
        spec = self.spec(symbol_id)
        if spec.first_open_ms is None:
            arrays = load_candles(spec.candles)
        else:
            arrays = retimed_candles(spec.candles, spec.first_open_ms, TIMEFRAME_MS[spec.timeframe], spec.passes)
        if self.market_clock_ms is None:
            return arrays
        end = int(np.searchsorted(arrays.open_ms, self.market_clock_ms(), side="right"))
        return CandleArrays(open_ms=arrays.open_ms[:end], ohlcv=arrays.ohlcv[:end])

    def last_price(self, symbol_id: str) -> Decimal:
        """The close of the latest served candle: the price market orders fill at."""
        candles = self.served_candles(symbol_id)
        return Decimal(number(float(candles.ohlcv[-1, 3])))

    def balance(self, asset: str) -> tuple[Decimal, Decimal]:
        """(free, locked) of one asset."""
        free, locked = self.balances.get(asset, [Decimal(0), Decimal(0)])
        return free, locked

    def fill_order(self, order_id: int, qty: Decimal | None = None, price: Decimal | None = None) -> ServerOrder:
        """Fill (part of) a resting order, as if the market traded through it."""
        order = self.orders[order_id]
        if not order.is_open:
            raise ValueError(f"order {order_id} is {order.status}")
        remaining = order.orig_qty - order.executed_qty
        self._execute(order, remaining if qty is None else min(qty, remaining), price or order.price, locked=True)
        return order

    # --- lifecycle -----------------------------------------------------------------------------------------

    async def start(self) -> None:
        """Listen on a free loopback port."""
        app = web.Application()
        app.router.add_get("/ws", self._ws_stream)
        app.router.add_get("/ws/{stream_id}", self._ws_stream)
        app.on_shutdown.append(self._close_websockets)
        app.router.add_route("*", "/{tail:.*}", self._dispatch)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
        await self._runner.setup()
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.bind(("127.0.0.1", 0))
        self.port = sock.getsockname()[1]
        await web.SockSite(self._runner, sock).start()

    async def stop(self) -> None:
        """Release hanging requests and close the server."""
        self._stopping.set()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    # --- request handling ----------------------------------------------------------------------------------

    def _next_fault(self, method: str, path: str) -> Fault | None:
        queue = self._faults.get((method, path))
        if not queue:
            return None
        fault = queue[0]
        if fault.skip > 0:
            fault.skip -= 1
            return None
        if fault.times is not None:
            fault.times -= 1
            if fault.times <= 0:
                queue.pop(0)
        return fault

    async def _dispatch(self, request: web.Request) -> web.StreamResponse:
        method, path = request.method, request.path
        params: dict[str, str] = dict(request.query)
        if method == "POST":
            params.update({k: str(v) for k, v in (await request.post()).items()})
        self.requests.append(LoggedRequest(method, path, params))
        self._received.set()
        fault = self._next_fault(method, path)
        if fault is not None and fault.kill_pid is not None and not fault.kill_after_apply:
            return self._kill(request, fault.kill_pid)
        try:
            if fault is not None:
                early = await self._apply_fault_before(fault)
                if early is not None:
                    return early
            route = ROUTES.get((method, path))
            if route is None:
                raise BinanceError(-1000, f"unknown endpoint {method} {path}", status=404)
            handler, signed = route
            if signed:
                await self._check_signature(request, params)
            body = handler(self, params, fault)
        except BinanceError as e:
            if fault is not None and fault.kill_pid is not None:
                return self._kill(request, fault.kill_pid)
            return web.json_response({"code": e.code, "msg": e.msg}, status=e.status)
        if fault is not None and fault.kill_pid is not None:
            return self._kill(request, fault.kill_pid)
        if fault is not None and fault.drop_response:
            assert request.transport is not None
            request.transport.close()
            return web.Response(status=500)
        if fault is not None and fault.status_after_apply is not None:
            return web.json_response(
                {"code": -1000, "msg": "An unknown error occurred while processing the request."},
                status=fault.status_after_apply,
            )
        return web.json_response(body)

    def _kill(self, request: web.Request, pid: int) -> web.Response:
        # The client dies before any answer leaves: it never learns what became of this request.
        os.kill(pid, signal.SIGKILL)
        assert request.transport is not None
        request.transport.close()
        return web.Response(status=500)

    async def _apply_fault_before(self, fault: Fault) -> web.Response | None:
        if fault.latency_s:
            await asyncio.sleep(fault.latency_s)
        if fault.hang_s is not None:
            try:
                async with asyncio.timeout(fault.hang_s):
                    await self._stopping.wait()
            except TimeoutError:
                pass
            return web.json_response(
                {"code": -1007, "msg": "Timeout waiting for response from backend server."}, status=408
            )
        if fault.status is not None:
            headers = {"Retry-After": str(fault.retry_after_s)} if fault.retry_after_s is not None else {}
            if fault.status in (418, 429):
                body = {"code": -1003, "msg": "Too many requests; current limit is 6000 request weight per 1 MINUTE."}
            else:
                body = {"code": -1000, "msg": "An unknown error occurred while processing the request."}
            return web.json_response(body, status=fault.status, headers=headers)
        if fault.reject is not None:
            code, msg = fault.reject
            return web.json_response({"code": code, "msg": msg}, status=400)
        return None

    async def _check_signature(self, request: web.Request, params: Mapping[str, str]) -> None:
        if request.headers.get("X-MBX-APIKEY") != self.api_key:
            raise BinanceError(-2015, "Invalid API-key, IP, or permissions for action.", status=401)
        payload = request.query_string if request.method in ("GET", "DELETE") else await request.text()
        payload, sep, signature = payload.rpartition("&signature=")
        if not sep:
            raise BinanceError(-1102, "Mandatory parameter 'signature' was not sent, was empty/null, or malformed.")
        expected = hmac.new(self.secret.encode(), payload.encode(), hashlib.sha256).hexdigest()
        if not hmac.compare_digest(expected, signature):
            raise BinanceError(-1022, "Signature for this request is not valid.")
        timestamp = int(params.get("timestamp", "0"))
        recv_window = int(params.get("recvWindow", DEFAULT_RECV_WINDOW_MS))
        now = self.now_ms()
        if timestamp > now + 1000:
            raise BinanceError(-1021, "Timestamp for this request was 1000ms ahead of the server's time.")
        if now - timestamp > recv_window:
            raise BinanceError(-1021, "Timestamp for this request is outside of the recvWindow.")

    # --- public endpoints ----------------------------------------------------------------------------------

    def _time(self, params: Mapping[str, str], fault: Fault | None) -> Any:
        return {"serverTime": self.now_ms()}

    def _exchange_info(self, params: Mapping[str, str], fault: Fault | None) -> Any:
        symbols = []
        for spec in self.symbols:
            notional: dict[str, Any] = {"filterType": spec.notional_filter}
            if spec.notional_filter == "NOTIONAL":
                notional |= {
                    "minNotional": spec.min_notional,
                    "applyMinToMarket": True,
                    "maxNotional": "9000000.00000000",
                    "applyMaxToMarket": False,
                    "avgPriceMins": 5,
                }
            else:
                notional |= {"minNotional": spec.min_notional, "applyToMarket": True, "avgPriceMins": 5}
            symbols.append(
                {
                    "symbol": spec.symbol,
                    "status": "TRADING",
                    "baseAsset": spec.base,
                    "baseAssetPrecision": 8,
                    "quoteAsset": spec.quote,
                    "quotePrecision": 8,
                    "quoteAssetPrecision": 8,
                    "baseCommissionPrecision": 8,
                    "quoteCommissionPrecision": 8,
                    "orderTypes": ["LIMIT", "LIMIT_MAKER", "MARKET", "STOP_LOSS_LIMIT", "TAKE_PROFIT_LIMIT"],
                    "icebergAllowed": True,
                    "ocoAllowed": True,
                    "quoteOrderQtyMarketAllowed": True,
                    "allowTrailingStop": True,
                    "cancelReplaceAllowed": True,
                    "isSpotTradingAllowed": True,
                    "isMarginTradingAllowed": False,
                    "filters": [
                        {
                            "filterType": "PRICE_FILTER",
                            "minPrice": spec.tick_size,
                            "maxPrice": "1000000.00000000",
                            "tickSize": spec.tick_size,
                        },
                        {
                            "filterType": "LOT_SIZE",
                            "minQty": spec.min_qty,
                            "maxQty": "9000.00000000",
                            "stepSize": spec.step_size,
                        },
                        notional,
                        {
                            "filterType": "MARKET_LOT_SIZE",
                            "minQty": "0.00000000",
                            "maxQty": "100.00000000",
                            "stepSize": "0.00000000",
                        },
                    ],
                    "permissions": [],
                    "permissionSets": [["SPOT"]],
                    "defaultSelfTradePreventionMode": "EXPIRE_MAKER",
                    "allowedSelfTradePreventionModes": ["EXPIRE_TAKER", "EXPIRE_MAKER", "EXPIRE_BOTH"],
                }
            )
        return {
            "timezone": "UTC",
            "serverTime": self.now_ms(),
            "rateLimits": [],
            "exchangeFilters": [],
            "symbols": symbols,
        }

    def _klines(self, params: Mapping[str, str], fault: Fault | None) -> Any:
        spec = self.spec(params.get("symbol", ""))
        interval = params.get("interval", "")
        base_ms = TIMEFRAME_MS[spec.timeframe]
        if interval not in TIMEFRAME_MS or TIMEFRAME_MS[interval] % base_ms:
            raise BinanceError(-1120, "Invalid interval.")
        limit = min(int(params.get("limit", 500)), MAX_KLINES)
        candles = self.served_candles(spec.symbol)
        if interval != spec.timeframe:
            candles = resample(candles, TIMEFRAME_MS[interval])
        open_ms = candles.open_ms
        lo, hi = 0, len(open_ms)
        if "startTime" in params:
            lo = int(np.searchsorted(open_ms, int(params["startTime"]), side="left"))
        if "endTime" in params:
            hi = int(np.searchsorted(open_ms, int(params["endTime"]), side="right"))
        if "startTime" in params:
            hi = min(hi, lo + limit)
        else:
            lo = max(lo, hi - limit)
        duration = TIMEFRAME_MS[interval]
        rows = []
        for i in range(lo, hi):
            o, h, low, c, v = (number(float(x)) for x in candles.ohlcv[i])
            start = int(open_ms[i])
            rows.append([start, o, h, low, c, v, start + duration - 1, "0", 1, "0", "0", "0"])
        return rows

    def _ticker_24hr(self, params: Mapping[str, str], fault: Fault | None) -> Any:
        spec = self.spec(params.get("symbol", ""))
        candles = self.served_candles(spec.symbol)
        last = candles.ohlcv[-1]
        window = candles.ohlcv[-24:]
        now = self.now_ms()
        return {
            "symbol": spec.symbol,
            "priceChange": "0",
            "priceChangePercent": "0",
            "weightedAvgPrice": number(float(last[3])),
            "prevClosePrice": number(float(window[0][3])),
            "lastPrice": number(float(last[3])),
            "lastQty": "0",
            "bidPrice": number(float(last[3])),
            "bidQty": "1",
            "askPrice": number(float(last[3])),
            "askQty": "1",
            "openPrice": number(float(window[0][0])),
            "highPrice": number(float(window[:, 1].max())),
            "lowPrice": number(float(window[:, 2].min())),
            "volume": number(float(window[:, 4].sum())),
            "quoteVolume": "0",
            "openTime": now - 86_400_000,
            "closeTime": now,
            "firstId": 0,
            "lastId": 0,
            "count": 0,
        }

    # --- signed endpoints ----------------------------------------------------------------------------------

    def _account(self, params: Mapping[str, str], fault: Fault | None) -> Any:
        return {
            "makerCommission": 10,
            "takerCommission": 10,
            "buyerCommission": 0,
            "sellerCommission": 0,
            "canTrade": True,
            "canWithdraw": True,
            "canDeposit": True,
            "brokered": False,
            "requireSelfTradePrevention": False,
            "preventSor": False,
            "updateTime": self.now_ms(),
            "accountType": "SPOT",
            "balances": [
                {"asset": asset, "free": number(free), "locked": number(locked)}
                for asset, (free, locked) in sorted(self.balances.items())
            ],
            "permissions": ["SPOT"],
            "uid": 1,
        }

    def _find_order(self, params: Mapping[str, str], code: int, msg: str) -> ServerOrder:
        spec = self.spec(params.get("symbol", ""))
        if "orderId" in params:
            order = self.orders.get(int(params["orderId"]))
            if order is not None and order.symbol == spec.symbol:
                return order
        elif "origClientOrderId" in params:
            matches = [
                o
                for o in self.orders.values()
                if o.client_order_id == params["origClientOrderId"] and o.symbol == spec.symbol
            ]
            if matches:
                return max(matches, key=lambda o: o.order_id)
        else:
            raise BinanceError(-1102, "Param 'origClientOrderId' or 'orderId' must be sent, but both were empty/null!")
        raise BinanceError(code, msg)

    def _get_order(self, params: Mapping[str, str], fault: Fault | None) -> Any:
        order = self._find_order(params, -2013, "Order does not exist.")
        seen = self._lookups.get(order.order_id, 0)
        self._lookups[order.order_id] = seen + 1
        if seen < self.order_lookup_lag:
            raise BinanceError(-2013, "Order does not exist.")
        return order.to_json()

    def _delete_order(self, params: Mapping[str, str], fault: Fault | None) -> Any:
        order = self._find_order(params, -2011, "Unknown order sent.")
        if not order.is_open:
            raise BinanceError(-2011, "Unknown order sent.")
        spec = self.spec(order.symbol)
        remaining = order.orig_qty - order.executed_qty
        if order.side == "BUY":
            self._move(spec.quote, remaining * order.price, from_locked=True)
        else:
            self._move(spec.base, remaining, from_locked=True)
        order.status = "CANCELED"
        order.update_time_ms = self.now_ms()
        return order.to_json() | {"origClientOrderId": order.client_order_id}

    def _open_orders(self, params: Mapping[str, str], fault: Fault | None) -> Any:
        symbol = params.get("symbol")
        if symbol is not None:
            self.spec(symbol)
        return [o.to_json() for o in self.orders.values() if o.is_open and symbol in (None, o.symbol)]

    def _my_trades(self, params: Mapping[str, str], fault: Fault | None) -> Any:
        spec = self.spec(params.get("symbol", ""))
        start = int(params.get("startTime", 0))
        limit = min(int(params.get("limit", 500)), 1000)
        rows = [t for t in self.trades if t["symbol"] == spec.symbol and t["time"] >= start]
        return rows[:limit]

    def _move(self, asset: str, amount: Decimal, *, from_locked: bool) -> None:
        """Move an amount between free and locked (locked → free when from_locked)."""
        free, locked = self.balance(asset)
        self.balances[asset] = [free + amount, locked - amount] if from_locked else [free - amount, locked + amount]

    def _post_order(self, params: Mapping[str, str], fault: Fault | None) -> Any:
        spec = self.spec(params.get("symbol", ""))
        side, order_type = params.get("side", ""), params.get("type", "")
        if side not in ("BUY", "SELL"):
            raise BinanceError(-1117, "Invalid side.")
        if order_type not in ("MARKET", "LIMIT"):
            raise BinanceError(-1116, "Invalid orderType.")
        try:
            qty = Decimal(params["quantity"])
        except (KeyError, ArithmeticError):
            raise BinanceError(
                -1102, "Mandatory parameter 'quantity' was not sent, was empty/null, or malformed."
            ) from None
        if qty <= 0 or qty < Decimal(spec.min_qty) or qty % Decimal(spec.step_size) != 0:
            raise BinanceError(-1013, "Filter failure: LOT_SIZE")
        last = self.last_price(spec.symbol)
        if order_type == "LIMIT":
            try:
                price = Decimal(params["price"])
            except (KeyError, ArithmeticError):
                raise BinanceError(
                    -1102, "Mandatory parameter 'price' was not sent, was empty/null, or malformed."
                ) from None
            if price <= 0 or price % Decimal(spec.tick_size) != 0:
                raise BinanceError(-1013, "Filter failure: PRICE_FILTER")
        else:
            price = Decimal(0)
        if qty * (price or last) < Decimal(spec.min_notional):
            raise BinanceError(-1013, f"Filter failure: {spec.notional_filter}")
        client_order_id = params.get("newClientOrderId") or f"srv-{next(self._order_ids)}"
        if any(o.client_order_id == client_order_id and o.is_open for o in self.orders.values()):
            raise BinanceError(-2010, "Duplicate order sent.")
        crosses = order_type == "MARKET" or (price >= last if side == "BUY" else price <= last)
        fill_price = last if order_type == "MARKET" else price
        if side == "BUY":
            free_quote, _ = self.balance(spec.quote)
            if free_quote < qty * (price or last):
                raise BinanceError(-2010, "Account has insufficient balance for requested action.")
        else:
            free_base, _ = self.balance(spec.base)
            if free_base < qty:
                raise BinanceError(-2010, "Account has insufficient balance for requested action.")
        now = self.now_ms()
        order = ServerOrder(
            order_id=next(self._order_ids),
            client_order_id=client_order_id,
            symbol=spec.symbol,
            side=side,
            type=order_type,
            time_in_force=params.get("timeInForce"),
            orig_qty=qty,
            price=price,
            time_ms=now,
            update_time_ms=now,
        )
        self.orders[order.order_id] = order
        fills: list[dict[str, Any]] = []
        if order_type == "LIMIT":
            # A resting limit order locks what it could spend.
            if side == "BUY":
                self._move(spec.quote, qty * price, from_locked=False)
            else:
                self._move(spec.base, qty, from_locked=False)
        if crosses:
            fill_qty = qty
            if fault is not None and fault.partial_fill is not None:
                fill_qty = (qty * fault.partial_fill / Decimal(spec.step_size)).to_integral_value() * Decimal(
                    spec.step_size
                )
            if fill_qty > 0:
                fills.append(self._execute(order, fill_qty, fill_price, locked=order_type == "LIMIT"))
            if order_type == "MARKET" and order.executed_qty < qty:
                order.status = "EXPIRED"
        return order.to_json() | {
            "transactTime": now,
            "workingTime": now,
            "fills": [
                {
                    "price": t["price"],
                    "qty": t["qty"],
                    "commission": t["commission"],
                    "commissionAsset": t["commissionAsset"],
                    "tradeId": t["id"],
                }
                for t in fills
            ],
        }

    def _execute(self, order: ServerOrder, qty: Decimal, price: Decimal, *, locked: bool) -> dict[str, Any]:
        """Trade `qty` of an order at `price`: move balances, charge the fee in the asset received."""
        spec = self.spec(order.symbol)
        quote_qty = qty * price
        base_free, base_locked = self.balance(spec.base)
        quote_free, quote_locked = self.balance(spec.quote)
        if order.side == "BUY":
            commission, commission_asset = qty * FEE_RATE, spec.base
            if locked:
                # Locked at the limit price; refund the difference if it traded better.
                quote_locked -= qty * order.price
                quote_free += qty * order.price - quote_qty
            else:
                quote_free -= quote_qty
            base_free += qty - commission
        else:
            commission, commission_asset = quote_qty * FEE_RATE, spec.quote
            if locked:
                base_locked -= qty
            else:
                base_free -= qty
            quote_free += quote_qty - commission
        self.balances[spec.base] = [base_free, base_locked]
        self.balances[spec.quote] = [quote_free, quote_locked]
        order.executed_qty += qty
        order.cumulative_quote_qty += quote_qty
        order.status = "FILLED" if order.executed_qty >= order.orig_qty else "PARTIALLY_FILLED"
        now = self.now_ms()
        order.update_time_ms = now
        trade = {
            "symbol": spec.symbol,
            "id": next(self._trade_ids),
            "orderId": order.order_id,
            "orderListId": -1,
            "price": number(price),
            "qty": number(qty),
            "quoteQty": number(quote_qty),
            "commission": number(commission),
            "commissionAsset": commission_asset,
            "time": now,
            "isBuyer": order.side == "BUY",
            "isMaker": False,
            "isBestMatch": True,
        }
        self.trades.append(trade)
        return trade

    # --- websocket streams (wss://stream.binance.com:9443/ws/<id>) ------------------------------------------

    def kline_message(
        self, symbol_id: str, open_ms: int, *, closed: bool, ohlcv: Ohlcv | None = None
    ) -> dict[str, Any]:
        """A kline event as Binance pushes it; values of the bundled candle at `open_ms` unless `ohlcv` is given."""
        spec = self.spec(symbol_id)
        duration = TIMEFRAME_MS[spec.timeframe]
        if ohlcv is None:
            arrays = load_candles(spec.candles)
            index = int(np.searchsorted(arrays.open_ms, open_ms))
            if index >= len(arrays.open_ms) or int(arrays.open_ms[index]) != open_ms:
                raise ValueError(f"no bundled {spec.symbol} candle opens at {open_ms}")
            values = [float(x) for x in arrays.ohlcv[index]]
        else:
            values = list(ohlcv)
        o, h, low, c, v = (number(x) for x in values)
        return {
            "e": "kline",
            "E": self.now_ms(),
            "s": spec.symbol,
            "k": {
                "t": open_ms,
                "T": open_ms + duration - 1,
                "s": spec.symbol,
                "i": spec.timeframe,
                "f": 100,
                "L": 200,
                "o": o,
                "c": c,
                "h": h,
                "l": low,
                "v": v,
                "n": 101,
                "x": closed,
                "q": "0",
                "V": "0",
                "Q": "0",
                "B": "0",
            },
        }

    async def push_kline(
        self,
        symbol_id: str,
        open_ms: int,
        *,
        closed: bool,
        ohlcv: Ohlcv | None = None,
    ) -> int:
        """Push one kline update to every connection subscribed to its stream; return how many got it."""
        message = self.kline_message(symbol_id, open_ms, closed=closed, ohlcv=ohlcv)
        stream = f"{symbol_id.lower()}@kline_{self.spec(symbol_id).timeframe}"
        targets = [sock for sock in self.ws_sockets if stream in sock.streams]
        for sock in targets:
            await sock.response.send_str(json.dumps(message))
        return len(targets)

    async def wait_for_subscriptions(self, stream: str, count: int) -> None:
        """Wait until `stream` has been subscribed `count` times (over all connections, reconnects included)."""
        while self.ws_subscriptions.count(stream) < count:
            self._ws_changed.clear()
            await self._ws_changed.wait()

    def drop_websockets(self) -> int:
        """Cut every websocket connection without a closing handshake, as a network failure does; return how many."""
        dropped = 0
        for sock in list(self.ws_sockets):
            transport = sock.request.transport
            if transport is not None:
                transport.abort()
                dropped += 1
            sock.streams.clear()
        return dropped

    async def _close_websockets(self, app: web.Application) -> None:
        for sock in list(self.ws_sockets):
            await sock.response.close()

    def _ws_notify(self) -> None:
        self._ws_changed.set()

    async def _ws_stream(self, request: web.Request) -> web.WebSocketResponse:
        response = web.WebSocketResponse()
        await response.prepare(request)
        sock = KlineSocket(response=response, request=request)
        self.ws_sockets.append(sock)
        self._ws_notify()
        try:
            async for msg in response:
                if msg.type is not WSMsgType.TEXT:
                    continue
                await self._ws_command(sock, msg.data)
                self._ws_notify()
        finally:
            self.ws_sockets.remove(sock)
            self._ws_notify()
        return response

    async def _ws_command(self, sock: KlineSocket, text: str) -> None:
        try:
            payload = json.loads(text)
        except ValueError:
            await sock.response.send_json({"error": {"code": 3, "msg": "Invalid JSON"}, "id": None})
            return
        if not isinstance(payload, dict):
            await sock.response.send_json({"error": {"code": 2, "msg": "Invalid request"}, "id": None})
            return
        method, request_id = payload.get("method"), payload.get("id")
        params = [str(p) for p in payload.get("params") or []]
        if method == "SUBSCRIBE":
            sock.streams.update(params)
            self.ws_subscriptions.extend(params)
            await sock.response.send_json({"result": None, "id": request_id})
        elif method == "UNSUBSCRIBE":
            sock.streams.difference_update(params)
            await sock.response.send_json({"result": None, "id": request_id})
        elif method == "LIST_SUBSCRIPTIONS":
            await sock.response.send_json({"result": sorted(sock.streams), "id": request_id})
        else:
            await sock.response.send_json(
                {"error": {"code": 2, "msg": f"Invalid request: unknown method {method!r}"}, "id": request_id}
            )


@dataclass
class KlineSocket:
    """One connection of the websocket stream endpoint and the streams it subscribed."""

    response: web.WebSocketResponse
    request: web.Request
    streams: set[str] = field(default_factory=set)


Handler = Callable[[BinanceServer, Mapping[str, str], Fault | None], Any]

ROUTES: dict[tuple[str, str], tuple[Handler, bool]] = {
    ("GET", "/api/v3/time"): (BinanceServer._time, False),
    ("GET", "/api/v3/exchangeInfo"): (BinanceServer._exchange_info, False),
    ("GET", "/api/v3/klines"): (BinanceServer._klines, False),
    ("GET", "/api/v3/ticker/24hr"): (BinanceServer._ticker_24hr, False),
    ("GET", "/api/v3/account"): (BinanceServer._account, True),
    ("POST", "/api/v3/order"): (BinanceServer._post_order, True),
    ("GET", "/api/v3/order"): (BinanceServer._get_order, True),
    ("DELETE", "/api/v3/order"): (BinanceServer._delete_order, True),
    ("GET", "/api/v3/openOrders"): (BinanceServer._open_orders, True),
    ("GET", "/api/v3/myTrades"): (BinanceServer._my_trades, True),
}


@pytest.fixture
async def binance_server() -> AsyncIterator[BinanceServer]:
    """Start a local Binance-format exchange server on a free loopback port."""
    server = BinanceServer()
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


def daemon_ccxt_config(server: BinanceServer, *, timeout_ms: int) -> CcxtConfig:
    """The ccxt settings an in-process daemon uses against this server: no throttling, fast retries, REST polling."""
    return CcxtConfig(
        exchange_id="binance",
        timeout_ms=timeout_ms,
        enable_rate_limit=False,
        options=dict(BINANCE_SPOT_OPTIONS),
        api_url_override=server.url,
        retry=RetryConfig(attempts=2, base_delay_s=0.0, max_delay_s=0.0),
        poll_delay_s=1.0,
    )
