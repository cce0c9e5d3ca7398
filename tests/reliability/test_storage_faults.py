"""Storage faults on the ledger: full disk, a lock held by another process, read-only, truncated.

The ledger lives on a small tmpfs the test mounts (root only; the suite says so and skips otherwise). Each
fault is made for real: the filesystem filled to the last block, remounted read-only, the SQLite file locked by
another process (``BEGIN EXCLUSIVE``) or cut in half. The daemon must refuse to start with exit 3 and one line
naming the ledger (never a traceback, never an order sent), or, when the disk fills while it trades, stop
trading with an alert before it sends an order it could not record. Once the fault is gone it starts cleanly
and the ledger equals the venue.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sqlite3
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
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
from tests.support.binance_server import BinanceServer

pytestmark = [pytest.mark.integration, pytest.mark.reliability]

REFUSED = 3
"""Exit code: the bot refuses to trade until a human looks (CONTRACTS.md)."""


def _mount(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["mount", *args], capture_output=True, text=True, timeout=30, check=False)


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    """A 4 MB tmpfs mounted for this test (needs root, as in CI's container)."""
    mountpoint = tmp_path / "fs"
    mountpoint.mkdir()
    proc = _mount("-t", "tmpfs", "-o", "size=4m,mode=0755", "tmpfs", str(mountpoint))
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs for the full-disk test (needs root): {proc.stderr.strip()}")
    try:
        yield mountpoint
    finally:
        subprocess.run(["umount", "-l", str(mountpoint)], capture_output=True, timeout=30, check=False)


def fill(fs: Path) -> Path:
    """Fill `fs` to the last byte; return the filler file (delete it to free the space)."""
    filler = fs / "filler"
    with filler.open("wb", buffering=0) as out:
        for chunk in (65536, 4096, 1):
            with contextlib.suppress(OSError):
                while True:
                    out.write(b"\0" * chunk)
    return filler


@contextlib.asynccontextmanager
async def exchange() -> AsyncIterator[BinanceServer]:
    async with one_second_exchange() as server:
        yield server


def logs_of(ledger_dir: Path) -> Path:
    """Where the daemon's output goes: beside the ledger's filesystem, never on it (it may be full or read-only)."""
    logs = ledger_dir.parent / "logs"
    logs.mkdir(exist_ok=True)
    return logs


async def clean_run(server: BinanceServer, model: Path, ledger_dir: Path, name: str, candles: int = 3) -> Daemon:
    """A daemon that reconciles, trades `candles` candles and stops by itself (exit 0)."""
    daemon = await start_daemon(
        server, model, ledger_dir, name=name, args=[f"bot.max_candles={candles}"], log_dir=logs_of(ledger_dir)
    )
    code = await daemon.exit_code()
    assert code == 0, daemon.log_tail()
    return daemon


async def refused_start(server: BinanceServer, model: Path, ledger_dir: Path, name: str) -> Daemon:
    """A daemon start that must be refused with exit 3, one line naming the ledger, and no order sent."""
    posts = len(server.calls("POST", ORDER))
    daemon = await start_daemon(
        server, model, ledger_dir, name=name, args=["bot.max_candles=3"], log_dir=logs_of(ledger_dir)
    )
    code = await daemon.exit_code()
    text = daemon.text()
    assert code == REFUSED, f"exit {code}, expected {REFUSED}; log:\n{daemon.log_tail()}"
    assert "Traceback" not in text, text
    (line,) = [row for row in text.splitlines() if row.startswith("ai-trading bot:")]
    assert "ledger" in line.lower(), line
    assert len(server.calls("POST", ORDER)) == posts, "an order was sent although the ledger could not record it"
    return daemon


async def recovered(server: BinanceServer, model: Path, ledger_dir: Path, name: str) -> None:
    """Once the fault is gone: a clean start, and the ledger equals the venue."""
    await clean_run(server, model, ledger_dir, name)
    assert ledger_venue_differences(ledger_dir / "live.db", server, settled=True) == []
    assert ids_sent_twice(server) == []


async def test_full_disk_at_start_refuses_then_recovers(small_fs: Path, tmp_path: Path) -> None:
    model = flipping_model(tmp_path / "model")
    failed = True
    try:
        async with exchange() as server:
            await clean_run(server, model, small_fs, "before")
            filler = fill(small_fs)
            await refused_start(server, model, small_fs, "full")
            filler.unlink()
            await recovered(server, model, small_fs, "after")
        failed = False
    finally:
        record("storage: disk full at start", failed=failed)


async def test_disk_filling_while_trading_halts_before_an_unrecorded_send(small_fs: Path, tmp_path: Path) -> None:
    model = flipping_model(tmp_path / "model")
    failed = True
    try:
        async with exchange() as server:
            await clean_run(server, model, small_fs, "before")
            daemon = await start_daemon(
                server, model, small_fs, name="filling", args=["bot.max_candles=100000"], log_dir=logs_of(small_fs)
            )
            try:
                posts = len(server.calls("POST", ORDER))
                await asyncio.wait_for(server.wait_for_calls("POST", ORDER, posts + 1), timeout=40)
                filler = fill(small_fs)
                code = await daemon.exit_code(timeout_s=60)
            finally:
                daemon.kill()
            assert code == REFUSED, daemon.log_tail()
            (line,) = [row for row in daemon.text().splitlines() if row.startswith("ai-trading bot:")]
            assert "ledger unusable" in line, line
            # Whatever reached the venue is in the ledger: nothing was sent that could not be recorded.
            assert ledger_venue_differences(small_fs / "live.db", server, settled=False) == []
            alerts = [r for r in daemon.rows() if r.get("event_type") == "alert" and r.get("code") == "ledger_unusable"]
            assert alerts, daemon.log_tail()
            filler.unlink()
            await recovered(server, model, small_fs, "after")
        failed = False
    finally:
        record("storage: disk fills while trading", failed=failed)


async def test_read_only_ledger_refuses_then_recovers(small_fs: Path, tmp_path: Path) -> None:
    model = flipping_model(tmp_path / "model")
    failed = True
    try:
        async with exchange() as server:
            await clean_run(server, model, small_fs, "before")
            proc = _mount("-o", "remount,ro", str(small_fs))
            assert proc.returncode == 0, proc.stderr
            try:
                await refused_start(server, model, small_fs, "read-only")
            finally:
                assert _mount("-o", "remount,rw", str(small_fs)).returncode == 0
            await recovered(server, model, small_fs, "after")
        failed = False
    finally:
        record("storage: read-only ledger", failed=failed)


LOCKER = """
import sqlite3, sys
db = sqlite3.connect(sys.argv[1], isolation_level=None)
db.execute("BEGIN EXCLUSIVE")
print("locked", flush=True)
sys.stdin.read()
"""


async def test_ledger_locked_by_another_process_refuses_then_recovers(tmp_path: Path) -> None:
    model = flipping_model(tmp_path / "model")
    failed = True
    try:
        async with exchange() as server:
            await clean_run(server, model, tmp_path, "before")
            locker = await asyncio.create_subprocess_exec(
                sys.executable,
                "-c",
                LOCKER,
                str(tmp_path / "live.db"),
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
            )
            try:
                assert locker.stdout is not None
                assert (await asyncio.wait_for(locker.stdout.readline(), timeout=30)).strip() == b"locked"
                await refused_start(server, model, tmp_path, "locked")
            finally:
                assert locker.stdin is not None
                locker.stdin.close()
                await asyncio.wait_for(locker.wait(), timeout=30)
            await recovered(server, model, tmp_path, "after")
        failed = False
    finally:
        record("storage: ledger locked by another process", failed=failed)


async def test_truncated_ledger_refuses_and_says_so(tmp_path: Path) -> None:
    model = flipping_model(tmp_path / "model")
    failed = True
    try:
        async with exchange() as server:
            await clean_run(server, model, tmp_path, "before")
            ledger = tmp_path / "live.db"
            # Fold the WAL into the main file first, so the cut hits the data.
            with contextlib.closing(sqlite3.connect(ledger)) as db:
                db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            size = ledger.stat().st_size
            backup = ledger.read_bytes()
            os.truncate(ledger, size // 2)
            await refused_start(server, model, tmp_path, "truncated")
            ledger.write_bytes(backup)  # the operator restores the ledger from a backup
            await recovered(server, model, tmp_path, "after")
        failed = False
    finally:
        record("storage: truncated ledger", failed=failed)
