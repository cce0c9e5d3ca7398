"""Random kills: a live daemon against the local exchange is SIGKILLed at 20+ seeded points and restarted.

One ledger and one venue live through the whole chain. Each cycle starts a daemon on the ledger the last one
left behind and kills it at a point drawn by a seeded generator: when an order request reaches the venue (the
order is in the ledger, not yet sent), once the venue has placed and filled it (sent, not acknowledged), when
the daemon asks for the trades of a filled order (filled, its fill not yet in the ledger), during the next
start's reconciliation, or at a random moment of trading (0.5 to 5 s after the engine is ready). The exchange
server delivers the SIGKILL itself at the chosen request (``Fault.kill``), so a kill lands exactly there.

After each kill: every order the venue holds is in the ledger, no ledger fill is one the venue lacks, and no
client order id reached the venue twice. Each restart's reconciliation finds no discrepancy. Every few cycles
(and at the end) a clean run stops by itself and the ledger must equal the venue: orders, fills, balances.
"""

from __future__ import annotations

import asyncio
import random
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.reliability.harness import (
    ORDER,
    Daemon,
    flipping_model,
    ids_sent_twice,
    ledger_venue_differences,
    one_second_exchange,
    start_daemon,
)
from tests.reliability.report import record
from tests.support.binance_server import BinanceServer, Fault

SEED = 20_251_202
KILLS = 20
SETTLE_EVERY = 10
REACH_TIMEOUT_S = 40.0
"""A kill point not reached by then (no order for that long) is a failure of the test's setup."""


@dataclass(frozen=True)
class Scenario:
    """A kind of kill point."""

    name: str
    method: str = ""
    path: str = ""
    after_apply: bool = False
    max_skip: int = 0
    """The kill hits one of the first `max_skip + 1` matching requests (drawn)."""


SCENARIOS = (
    Scenario("ledger write -> send", "POST", ORDER, max_skip=1),
    Scenario("send -> ack", "POST", ORDER, after_apply=True, max_skip=1),
    Scenario("fill -> ledger row", "GET", "/api/v3/myTrades", max_skip=1),
    Scenario("during reconciliation", "GET", "/api/v3/openOrders"),
    Scenario("random moment"),
)
LIVE_RUN = ("bot.max_candles=100000",)
SETTLE_RUN = ("bot.max_candles=3",)


async def kill_at(scenario: Scenario, rng: random.Random, server: BinanceServer, daemon: Daemon) -> None:
    """Arrange the kill of `daemon` at a point of `scenario`, drawn from `rng`."""
    if scenario.method:
        skip = rng.randint(0, scenario.max_skip)
        server.inject(
            scenario.method, scenario.path, Fault.kill(daemon.pid, after_apply=scenario.after_apply, skip=skip)
        )
        return
    # A random moment of trading: counted from the engine's readiness, not from the process start, so a slow
    # start on a loaded machine does not turn it into one more kill during start-up (which "during
    # reconciliation" covers) and the run still trades.
    delay_s = rng.uniform(0.5, 5.0)

    async def later() -> None:
        async with asyncio.timeout(REACH_TIMEOUT_S):
            while daemon.process.returncode is None and not daemon.events("engine_ready"):
                await asyncio.sleep(0.1)  # polling the log for a condition
        await asyncio.sleep(delay_s)  # the kill point itself, not a synchronisation
        daemon.kill()

    asyncio.get_running_loop().create_task(later())


def reconciliation_problems(daemon: Daemon) -> list[str]:
    """Discrepancies the daemon's start-up reconciliation reported (none expected)."""
    return [
        f"reconciliation discrepancy: {d}" for row in daemon.events("reconciliation_done") for d in row["discrepancies"]
    ]


@pytest.mark.integration
@pytest.mark.reliability
async def test_sigkill_at_random_points_then_restart_keeps_ledger_and_venue_equal(tmp_path: Path) -> None:
    rng = random.Random(SEED)
    model = flipping_model(tmp_path / "model")
    ledger_path = tmp_path / "live.db"
    failures: list[str] = []
    async with one_second_exchange() as server:
        previous: Daemon | None = None
        for cycle in range(KILLS):
            scenario = rng.choice(SCENARIOS)
            server.clear_faults()
            daemon = await start_daemon(server, model, tmp_path, name=f"cycle{cycle:02d}", args=LIVE_RUN)
            await kill_at(scenario, rng, server, daemon)
            code = await daemon.exit_code(REACH_TIMEOUT_S)
            problems = [] if code == -9 else [f"exit {code} instead of the kill; log:\n{daemon.log_tail()}"]
            problems += reconciliation_problems(daemon)
            problems += ledger_venue_differences(ledger_path, server, settled=False)
            problems += [f"client order id sent twice: {cid}" for cid in ids_sent_twice(server)]
            if (cycle + 1) % SETTLE_EVERY == 0:
                problems += await settle(server, model, tmp_path, ledger_path, name=f"settle{cycle:02d}")
            record(scenario.name, failed=bool(problems))
            failures += [f"cycle {cycle} ({scenario.name}): {p}" for p in problems]
            previous = daemon
        assert previous is not None
    orders = len(server.orders)
    assert orders >= KILLS // 2, f"only {orders} orders over {KILLS} kills: the run did not trade enough"
    assert not failures, "\n".join(failures)


async def settle(server: BinanceServer, model: Path, tmp_path: Path, ledger_path: Path, *, name: str) -> list[str]:
    """A clean run (reconcile, trade 3 candles, stop); then the ledger must equal the venue."""
    server.clear_faults()
    daemon = await start_daemon(server, model, tmp_path, name=name, args=SETTLE_RUN)
    code = await daemon.exit_code()
    problems = [] if code == 0 else [f"clean run exited {code}; log:\n{daemon.log_tail()}"]
    problems += reconciliation_problems(daemon)
    problems += ledger_venue_differences(ledger_path, server, settled=True)
    record("clean restart: ledger = venue", failed=bool(problems))
    return problems
