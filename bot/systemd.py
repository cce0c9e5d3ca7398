"""systemd service notifications (sd_notify) over the unix datagram socket named by $NOTIFY_SOCKET.

No dependency: a message is one ``sendto`` of ``KEY=value`` lines to the socket (an ``@`` prefix names an
abstract socket). Outside systemd (no $NOTIFY_SOCKET) every call is a no-op. The watchdog interval comes
from $WATCHDOG_USEC (set by ``WatchdogSec=``), honoured only when $WATCHDOG_PID is unset or this process.
A failed send is logged and counted, never raised: notifications must not stop trading.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping

import structlog

log = structlog.get_logger()


class SystemdNotifier:
    """Send READY=1, WATCHDOG=1, STATUS=..., STOPPING=1 to systemd."""

    def __init__(self, socket_path: str | None = None, *, watchdog_usec: int | None = None) -> None:
        """Notify `socket_path` (None: nothing is sent); `watchdog_usec` is systemd's watchdog period."""
        self.socket_path = socket_path
        self.watchdog_usec = watchdog_usec
        self.sent = 0
        """Messages sent."""
        self.failures = 0
        """Messages that could not be sent."""
        self._socket: socket.socket | None = None

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> SystemdNotifier:
        """Build from $NOTIFY_SOCKET, $WATCHDOG_USEC and $WATCHDOG_PID."""
        environ = os.environ if env is None else env
        path = environ.get("NOTIFY_SOCKET") or None
        usec: int | None = None
        raw = environ.get("WATCHDOG_USEC")
        pid = environ.get("WATCHDOG_PID")
        if raw and (not pid or pid == str(os.getpid())):
            try:
                usec = int(raw)
            except ValueError:
                log.warning("systemd_watchdog_usec_invalid", value=raw)
        return cls(path, watchdog_usec=usec if usec and usec > 0 else None)

    @property
    def enabled(self) -> bool:
        """Whether a notify socket is configured."""
        return self.socket_path is not None

    @property
    def watchdog_interval_s(self) -> float | None:
        """How often to send WATCHDOG=1: half the watchdog period, or None without a watchdog."""
        return None if self.watchdog_usec is None else self.watchdog_usec / 2_000_000

    def notify(self, *lines: str) -> bool:
        """Send one notification of `KEY=value` lines; return whether it was sent."""
        if self.socket_path is None:
            return False
        address = self.socket_path
        if address.startswith("@"):
            address = "\0" + address[1:]
        try:
            if self._socket is None:
                self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            self._socket.sendto("\n".join(lines).encode(), address)
        except OSError as e:
            self.failures += 1
            log.warning("systemd_notify_failed", socket=self.socket_path, error=str(e))
            return False
        self.sent += 1
        return True

    def ready(self, status: str) -> None:
        """Say the service is up (reconciled, ready to trade)."""
        self.notify("READY=1", _status(status))

    def watchdog(self) -> None:
        """Say the trading loop is alive."""
        self.notify("WATCHDOG=1")

    def status(self, text: str) -> None:
        """Set the one-line status `systemctl status` shows."""
        self.notify(_status(text))

    def stopping(self) -> None:
        """Say the service is shutting down."""
        self.notify("STOPPING=1")

    def close(self) -> None:
        """Close the socket."""
        if self._socket is not None:
            self._socket.close()
            self._socket = None


def _status(text: str) -> str:
    return "STATUS=" + " ".join(text.split())
