"""Black-box harness for the reliability suite: the daemon as a process against the local exchange server.

The daemon runs as ``python -m bot`` (its own process, its own event loop) and reaches the exchange server in the
test process over loopback, so everything the suite asserts is what an operator would see: exit codes, log
lines, notifications, the ledger file and the venue's orders, trades and balances. The server serves the
bundled BTC/USDT candles re-stamped as 1-second bars on the real clock, so a candle closes every second.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import IO, Any

import numpy as np
import pytest

from adapters.data.ohlcv import load_ohlcv
from adapters.data.sample import sample_path
from adapters.types import OrderStatus
from bot.ledger.store import Ledger
from tests.support.binance_server import API_KEY, SECRET, SYMBOLS, BinanceServer, LoggedRequest
from tests.support.policy_model import MlpWeights, export_policy, fitted_spec

REPO = Path(__file__).resolve().parents[2]
SYMBOL = "BTC/USDT"
ORDER = "/api/v3/order"
EXIT_TIMEOUT_S = 60.0
"""Failure guard: a daemon that has not exited by then is stuck."""
TOLERANCE = Decimal("1e-8")
VENUE_STATUS = {
    "NEW": OrderStatus.OPEN,
    "PARTIALLY_FILLED": OrderStatus.PARTIALLY_FILLED,
    "FILLED": OrderStatus.FILLED,
    "CANCELED": OrderStatus.CANCELLED,
    "EXPIRED": OrderStatus.CANCELLED,
}
WINDOW = 4


def flipping_model(out_dir: Path) -> Path:
    """A policy that holds half the equity in BTC after an up candle and nothing after a down candle.

    It trades on most candles, so a short run makes many orders (buys and sells alternate)."""
    spec = fitted_spec(load_ohlcv(sample_path("BTC/USDT-1h")), train_rows=40_000, window=WINDOW)
    weights = np.zeros((spec.observation_size, 2), dtype=np.float32)
    last_return = (WINDOW - 1) * spec.n_features + spec.names.index("log_return")
    weights[last_return, 1] = 10.0
    bias = np.zeros(2, dtype=np.float32)
    return export_policy(out_dir, spec, MlpWeights(((weights, bias),)), (0.0, 0.5))


def holding_model(out_dir: Path) -> Path:
    """A policy that always asks for half the equity in BTC: one buy after warm-up, then small rebalances."""
    spec = fitted_spec(load_ohlcv(sample_path("BTC/USDT-1h")), train_rows=40_000, window=WINDOW)
    weights = np.zeros((spec.observation_size, 2), dtype=np.float32)
    bias = np.array([0.0, 1.0], dtype=np.float32)
    return export_policy(out_dir, spec, MlpWeights(((weights, bias),)), (0.0, 0.5))


@contextlib.asynccontextmanager
async def one_second_exchange(**overrides: Any) -> AsyncIterator[BinanceServer]:
    """The local exchange serving BTCUSDT as 1 s candles up to the real clock, 10,000 USDT and no BTC."""
    now_ms = int(time.time()) * 1000
    spec = dataclasses.replace(SYMBOLS[0], timeframe="1s", first_open_ms=now_ms - 55_740 * 1000)
    settings: dict[str, Any] = {
        "symbols": (spec,),
        "market_clock_ms": lambda: int(time.time() * 1000),
        "balances": {"USDT": [Decimal(10_000), Decimal(0)], "BTC": [Decimal(0), Decimal(0)]},
    }
    exchange = BinanceServer(**(settings | overrides))
    await exchange.start()
    try:
        yield exchange
    finally:
        await exchange.stop()


@dataclass
class Daemon:
    """One `python -m bot` process and the file its output goes to."""

    process: asyncio.subprocess.Process
    log_path: Path
    log_file: IO[bytes]
    started_at: float = field(default_factory=time.monotonic)

    @property
    def pid(self) -> int:
        """The process id."""
        return self.process.pid

    def rows(self) -> list[dict[str, Any]]:
        """Every structured log line (JSON on a non-TTY)."""
        found = []
        for line in self.log_path.read_text(errors="replace").splitlines():
            with contextlib.suppress(ValueError):
                row = json.loads(line)
                if isinstance(row, dict):
                    found.append(row)
        return found

    def events(self, name: str) -> list[dict[str, Any]]:
        """The structured log lines with `event == name`."""
        return [row for row in self.rows() if row.get("event") == name]

    def text(self) -> str:
        """The whole output."""
        return self.log_path.read_text(errors="replace")

    async def exit_code(self, timeout_s: float = EXIT_TIMEOUT_S) -> int:
        """Wait for the process to end; fail with its log if it does not."""
        try:
            async with asyncio.timeout(timeout_s):
                code = await self.process.wait()
        except TimeoutError:
            self.process.kill()
            await self.process.wait()
            pytest.fail(f"daemon did not exit within {timeout_s} s; log:\n{self.log_tail()}")
        finally:
            self.log_file.close()
        return code

    async def stop(self) -> int:
        """SIGTERM, as systemd stops the unit; return the exit code (failing with the log if it does not exit)."""
        self.process.send_signal(signal.SIGTERM)
        return await self.exit_code()

    def log_tail(self, lines: int = 40) -> str:
        """The last lines of the daemon's output."""
        return "\n".join(self.text().splitlines()[-lines:])

    def kill(self) -> None:
        """SIGKILL the process if it still runs."""
        if self.process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.process.kill()


LIVE_ARGS = (
    "mode=live",
    "bot.confirm_live=true",
    "bot.timeframe=1s",
    "bot.schedule.equity_snapshot=",
    "bot.schedule.reconciliation=",
    "bot.risk.max_position_notional=1e12",
    "bot.risk.max_total_notional=1e12",
    "bot.risk.max_order_notional=1e12",
    "bot.risk.max_orders_per_minute=100000",
    "bot.risk.max_daily_loss=1",
    "bot.risk.max_drawdown=1",
    "bot.risk.reduce_at=1",
    # One-second candles on a loaded CI machine: do not call a candle a few seconds old stale.
    "bot.risk.stale_after_timeframes=60",
    # An order whose outcome a kill left unknown is looked up over this window before it counts as never placed;
    # the shipped 60 s suits hour candles, a few seconds suit these one-second ones.
    "bot.order_lookup.window_s=3",
    "bot.order_lookup.attempts=3",
    "exchange.stream=poll",  # the local server pushes klines only when a test drives it
    "exchange.enable_rate_limit=false",
    "exchange.timeout_ms=5000",
    "exchange.poll_delay_s=0.05",
    "log_level=INFO",
)
"""A live daemon on 1 s candles against the local server, limits out of the way."""


async def start_daemon(
    server: BinanceServer,
    model: Path,
    ledger_dir: Path,
    *,
    name: str,
    args: Sequence[str] = (),
    env: Mapping[str, str] | None = None,
    base: Sequence[str] = LIVE_ARGS,
    log_dir: Path | None = None,
) -> Daemon:
    """Start the daemon on the ledger in `ledger_dir` against `server`; `args` override the defaults.

    Its output goes to `<log_dir or ledger_dir>/<name>.log`."""
    argv = [
        *base,
        f"bot.model_path={model}",
        f"bot.ledger_dir={ledger_dir}",
        f"exchange.api_url_override={server.url}",
        *args,
    ]
    environ = {
        **os.environ,
        "PYTHONPATH": str(REPO),
        "AI_TRADING_BINANCE_API_KEY": API_KEY,
        "AI_TRADING_BINANCE_SECRET": SECRET,
        **(env or {}),
    }
    log_path = (log_dir or ledger_dir) / f"{name}.log"
    log_file = log_path.open("wb")
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bot", *argv, cwd=REPO, env=environ, stdout=log_file, stderr=subprocess.STDOUT
    )
    return Daemon(process, log_path, log_file)


def posted_ids(requests: Sequence[LoggedRequest]) -> list[str]:
    """Client order ids of the order submissions among `requests`."""
    return [r.params.get("newClientOrderId", "") for r in requests if r.method == "POST" and r.path == ORDER]


def ids_sent_twice(server: BinanceServer) -> list[str]:
    """Client order ids the venue received more than once."""
    return [cid for cid, n in Counter(posted_ids(server.requests)).items() if n > 1]


def assert_sent_once_and_recorded(server: BinanceServer, ledger_path: Path, daemon: Daemon) -> None:
    """No client order id reached the venue twice, and the ledger holds every venue order and fill."""
    assert ids_sent_twice(server) == [], daemon.log_tail()
    assert ledger_venue_differences(ledger_path, server, settled=False) == [], daemon.log_tail()


def ledger_venue_differences(ledger_path: Path, server: BinanceServer, *, settled: bool) -> list[str]:
    """What the ledger and the venue disagree on (empty when they agree).

    Always: every venue order is in the ledger (the ledger is written before the send), every ledger fill is a
    venue trade. With `settled` (after a reconciliation and a clean stop): every order has its venue status and
    filled amount, every venue trade is a ledger fill, and the balances the bot's fills explain are the venue's.
    """
    problems: list[str] = []
    with Ledger(f"sqlite:///{ledger_path}") as ledger:
        orders = {o.client_order_id: o for o in ledger.orders()}
        fills = ledger.fills()
        flows = ledger.currency_flows()
        # The bot's own book: the account = what it held outside the bot at the first start + the bot's
        # allocation (bot.capital) + the bot's fills.
        book_state = ledger.state("book.")
    venue_orders = {o.client_order_id: o for o in server.orders.values()}
    unknown = sorted(set(venue_orders) - set(orders))
    if unknown:
        problems.append(f"venue orders the ledger does not know: {unknown}")
    cid_of = {o.order_id: o.client_order_id for o in server.orders.values()}
    venue_fills = {
        str(t["id"]): (cid_of[t["orderId"]], Decimal(t["qty"]), Decimal(t["price"]), Decimal(t["commission"]))
        for t in server.trades
    }
    ledger_fills = {f.trade_id: (f.client_order_id, f.amount, f.price, f.fee) for f in fills}
    invented = {k: v for k, v in ledger_fills.items() if venue_fills.get(k) != v}
    if invented:
        problems.append(f"ledger fills the venue does not have: {invented}")
    if not settled:
        return problems
    missing = sorted(set(venue_fills) - set(ledger_fills))
    if missing:
        problems.append(f"venue trades missing from the ledger: {missing}")
    for cid, order in orders.items():
        venue = venue_orders.get(cid)
        if venue is None:
            if order.status not in (OrderStatus.REJECTED, OrderStatus.CANCELLED) or order.filled != 0:
                problems.append(f"{cid}: never placed but {order.status.value} with {order.filled} filled")
            continue
        if order.status is not VENUE_STATUS[venue.status] or order.filled != venue.executed_qty:
            problems.append(
                f"{cid}: ledger {order.status.value}/{order.filled}, venue {venue.status}/{venue.executed_qty}"
            )
    for currency in ("BTC", "USDT"):
        key = f"book.outside.{currency}"
        if key not in book_state:
            problems.append(f"no record of what the account held outside the bot in {currency}")
            continue
        free, locked = server.balance(currency)
        baseline = Decimal(book_state[key]) + Decimal(book_state.get(f"book.capital.{currency}", "0"))
        explained = baseline + flows.get(currency, Decimal(0))
        if abs(explained - (free + locked)) > TOLERANCE:
            problems.append(f"{currency}: the bot's fills explain {explained}, the venue holds {free + locked}")
    return problems
