"""What the helpers that start real services (Mosquitto, Prometheus, the local exchange) share."""

from __future__ import annotations

import os
import shutil
import socket


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def service_binary(env_var: str, default: str, name: str) -> str | None:
    """Return the service binary to run ($env_var, else `default`, else `name` on PATH), or None if not installed."""
    candidate = os.environ.get(env_var) or default
    if os.path.isfile(candidate) and os.access(candidate, os.X_OK):
        return candidate
    return shutil.which(name)
