"""systemd for real: the unit files pass `systemd-analyze verify` and `security`, and a running daemon speaks sd_notify.

The daemon runs as a process with $NOTIFY_SOCKET naming a datagram socket this test owns, as systemd would
give it: READY=1 once reconciled with the venue, STATUS= lines, WATCHDOG=1 every half watchdog period from the
trading loop, nothing more once a candle is wedged longer than bot.stuck_after_s (the exchange server hangs the
order request), and STOPPING=1 on SIGTERM.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.reliability.harness import REPO, flipping_model, one_second_exchange, start_daemon
from tests.support.binance_server import Fault

DEPLOY = REPO / "deploy"
UNITS = sorted([*DEPLOY.glob("*.service"), *DEPLOY.glob("*.timer")])
BOT_UNIT = DEPLOY / "ai-trading-bot.service"
ORDER = "/api/v3/order"
MAX_EXPOSURE = 4.0
"""`systemd-analyze security` rates ≤ 4.0 "OK" (≤ 2.0 "SAFE")."""

systemd_analyze = shutil.which("systemd-analyze")
needs_systemd = pytest.mark.skipif(systemd_analyze is None, reason="systemd-analyze not installed (Debian: systemd)")


def unit_with_stub_command(unit: Path, tmp_path: Path) -> Path:
    """A copy of `unit` whose ExecStart= program exists (a stub): verify checks the command is executable."""
    stub = tmp_path / "bin" / "ai-trading"
    stub.parent.mkdir(exist_ok=True)
    stub.write_text("#!/bin/sh\nexit 0\n")
    stub.chmod(0o755)
    text = unit.read_text().replace("/opt/ai-trading/venv/bin/ai-trading", str(stub))
    copy = tmp_path / unit.name
    copy.write_text(text)
    return copy


@needs_systemd
@pytest.mark.parametrize("unit", UNITS, ids=[u.name for u in UNITS])
def test_every_unit_passes_systemd_analyze_verify(unit: Path, tmp_path: Path) -> None:
    copy = unit_with_stub_command(unit, tmp_path)
    for timer_target in (DEPLOY / unit.name.replace(".timer", ".service"),) if unit.suffix == ".timer" else ():
        unit_with_stub_command(timer_target, tmp_path)
    proc = subprocess.run(
        [str(systemd_analyze), "verify", str(copy)], capture_output=True, text=True, timeout=60, check=False
    )
    assert proc.returncode == 0 and not proc.stderr.strip(), proc.stderr


@needs_systemd
def test_bot_service_is_sandboxed_ok_or_better() -> None:
    proc = subprocess.run(
        [str(systemd_analyze), "security", "--offline=true", "--no-pager", str(BOT_UNIT)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    out = proc.stdout + proc.stderr
    match = re.search(r"Overall exposure level for \S+: ([\d.]+) (\w+)", out)
    assert match, out
    assert float(match.group(1)) <= MAX_EXPOSURE and match.group(2) in ("OK", "SAFE"), match.group(0)
    # The threshold itself: `security --threshold` fails the command above it.
    strict = subprocess.run(
        [str(systemd_analyze), "security", "--offline=true", f"--threshold={int(MAX_EXPOSURE * 10)}", str(BOT_UNIT)],
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert strict.returncode == 0


def test_unit_stops_restarting_on_the_exit_codes_a_restart_cannot_fix() -> None:
    settings = {}
    for line in BOT_UNIT.read_text().splitlines():
        key, sep, value = line.partition("=")
        if sep and not line.startswith("#"):
            settings.setdefault(key.strip(), value.strip())
    assert settings["Type"] == "notify" and settings["NotifyAccess"] == "main"
    assert settings["Restart"] == "on-failure"
    assert set(settings["RestartPreventExitStatus"].split()) == {"2", "3"}
    assert int(settings["WatchdogSec"]) > 0


@pytest.fixture
def notify_socket(tmp_path: Path) -> Iterator[tuple[str, socket.socket]]:
    """A unix datagram socket like the one systemd passes in $NOTIFY_SOCKET."""
    path = str(tmp_path / "notify.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.setblocking(False)
    yield path, sock
    sock.close()


class Notifications:
    """Messages received on the notify socket, each with its arrival time."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.messages: list[tuple[float, str]] = []

    async def next(self, timeout_s: float) -> str:
        """The next message; fail after `timeout_s`."""
        loop = asyncio.get_running_loop()
        async with asyncio.timeout(timeout_s):
            data = await loop.sock_recv(self.sock, 4096)
        text = data.decode()
        self.messages.append((time.monotonic(), text))
        return text

    async def until(self, predicate: str, timeout_s: float) -> str:
        """Read until a message with the line `predicate` (e.g. READY=1) arrives."""
        async with asyncio.timeout(timeout_s):
            while True:
                text = await self.next(timeout_s)
                if predicate in text.splitlines():
                    return text

    def count(self, line: str, since: float = 0.0) -> int:
        """How many messages since `since` (monotonic) carried `line`."""
        return sum(1 for at, text in self.messages if at >= since and line in text.splitlines())


@pytest.mark.integration
async def test_daemon_notifies_ready_watchdog_status_and_stopping_and_a_wedged_loop_stops_the_watchdog(
    notify_socket: tuple[str, socket.socket], tmp_path: Path
) -> None:
    path, sock = notify_socket
    stuck_after_s = 2.0
    model = flipping_model(tmp_path / "model")
    async with one_second_exchange() as server:
        daemon = await start_daemon(
            server,
            model,
            tmp_path,
            name="notify",
            args=[
                f"bot.stuck_after_s={stuck_after_s}",
                "bot.submit_timeout_s=60",
                "exchange.timeout_ms=60000",
            ],
            env={"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "1000000"},  # WatchdogSec=1: ping every 0.5 s
        )
        try:
            notes = Notifications(sock)
            ready = await notes.until("READY=1", timeout_s=60)
            # Ready only once reconciled: the balances and open orders were read from the venue before.
            assert server.calls("GET", "/api/v3/account") and server.calls("GET", "/api/v3/openOrders")
            assert re.search(r"^STATUS=\S.*$", ready, re.M), ready
            # The trading loop pings and keeps the status line current while candles close.
            while notes.count("WATCHDOG=1") < 4 or sum("STATUS=" in t for _, t in notes.messages) < 3:
                await notes.next(timeout_s=10)

            # Wedge the loop: the next order (sent while a candle is handled; the flipping model trades on most
            # candles) hangs longer than the stuck threshold and shorter than the client's and the submit timeout,
            # so one candle stays in handling.
            server.inject("POST", ORDER, Fault.timeout(hang_s=30))
            sent = len(server.calls("POST", ORDER))
            await asyncio.wait_for(server.wait_for_calls("POST", ORDER, sent + 1), timeout=30)
            wedged_at = time.monotonic()
            # Pings stop within the stuck threshold (plus one interval); then none for twice the threshold.
            quiet_from = wedged_at + stuck_after_s + 0.6
            quiet_until = quiet_from + 2 * stuck_after_s
            with contextlib.suppress(TimeoutError):
                while True:
                    await notes.next(timeout_s=max(0.05, quiet_until - time.monotonic()))
            assert notes.count("WATCHDOG=1", since=quiet_from) == 0, notes.messages[-5:]
            assert daemon.events("engine_stuck"), daemon.log_tail()

            daemon.process.send_signal(signal.SIGTERM)
            await notes.until("STOPPING=1", timeout_s=30)
            code = await daemon.exit_code()
            assert code == 0, daemon.log_tail()
        finally:
            daemon.kill()
