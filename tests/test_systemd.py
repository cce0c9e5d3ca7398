"""sd_notify over a real unix datagram socket, as systemd provides it."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from bot.systemd import SystemdNotifier


@pytest.fixture
def listener(tmp_path: Path) -> Iterator[tuple[str, socket.socket]]:
    path = str(tmp_path / "notify.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.settimeout(2.0)
    yield path, sock
    sock.close()


def test_ready_status_watchdog_reach_the_socket(listener: tuple[str, socket.socket]) -> None:
    path, sock = listener
    notifier = SystemdNotifier.from_env(
        {"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "20000000", "WATCHDOG_PID": str(os.getpid())}
    )
    assert notifier.enabled and notifier.watchdog_interval_s == 10.0
    notifier.ready("running paper risk=active\ncandles=0")
    assert sock.recv(4096).decode() == "READY=1\nSTATUS=running paper risk=active candles=0"
    notifier.watchdog()
    assert sock.recv(4096) == b"WATCHDOG=1"
    notifier.status("stopping")
    assert sock.recv(4096) == b"STATUS=stopping"
    notifier.stopping()
    assert sock.recv(4096) == b"STOPPING=1"
    assert notifier.sent == 4 and notifier.failures == 0
    notifier.close()


def test_abstract_socket_names_are_supported() -> None:
    name = f"ai-trading-test-{os.getpid()}"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind("\0" + name)
    sock.settimeout(2.0)
    try:
        SystemdNotifier("@" + name).watchdog()
        assert sock.recv(100) == b"WATCHDOG=1"
    finally:
        sock.close()


def test_without_systemd_nothing_is_sent_and_failures_do_not_raise(tmp_path: Path) -> None:
    quiet = SystemdNotifier.from_env({})
    assert not quiet.enabled and quiet.watchdog_interval_s is None
    assert quiet.notify("READY=1") is False
    # Another process's watchdog: not ours to feed.
    assert (
        SystemdNotifier.from_env(
            {"NOTIFY_SOCKET": "/x", "WATCHDOG_USEC": "1000000", "WATCHDOG_PID": "1"}
        ).watchdog_interval_s
        is None
    )
    gone = SystemdNotifier(str(tmp_path / "missing.sock"))
    assert gone.notify("READY=1") is False
    assert gone.failures == 1
