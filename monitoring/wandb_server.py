"""Whether a W&B server can be used from here, decided quickly and said in words.

Everything that needs a W&B server (sweeps through W&B's controller, reading runs through `wandb.Api()`, fetching
a model artifact, the dashboard's W&B backend) asks here first, so that with no server it says so at once rather
than waiting on the W&B client's own retries (about 20 s with a bad key, longer with an unreachable host; see
shared/reference/wandb-facts.md). Only the mode, the credentials and one TCP connection are checked: no W&B
client is started.
"""

from __future__ import annotations

import netrc
import os
import socket
from collections.abc import Mapping
from pathlib import Path
from urllib.parse import urlsplit

DEFAULT_WANDB_HOST = "https://api.wandb.ai"
"""The W&B server when WANDB_BASE_URL is unset."""

OFFLINE_MODES = ("offline", "disabled", "dryrun")
"""WANDB_MODE values in which nothing talks to a server."""


def base_url(env: Mapping[str, str]) -> str:
    """The W&B server's URL: WANDB_BASE_URL or the public one."""
    return env.get("WANDB_BASE_URL") or DEFAULT_WANDB_HOST


def offline_reason(env: Mapping[str, str]) -> str | None:
    """Why W&B is switched off by the environment (WANDB_MODE / WANDB_DISABLED), or None when it is not."""
    mode = (env.get("WANDB_MODE") or "").strip().lower()
    if mode in OFFLINE_MODES:
        return f"WANDB_MODE={mode}"
    if (env.get("WANDB_DISABLED") or "").strip().lower() in ("true", "1", "yes"):
        return "WANDB_DISABLED is set"
    return None


def credentials_source(env: Mapping[str, str]) -> str | None:
    """Where the API key for the configured server comes from (WANDB_API_KEY or a netrc file), or None."""
    if env.get("WANDB_API_KEY"):
        return "WANDB_API_KEY"
    host = urlsplit(base_url(env)).hostname
    if not host:
        return None
    path = Path(env.get("NETRC") or Path(env.get("HOME") or Path.home()) / ".netrc")
    if not path.is_file():
        return None
    try:
        entry = netrc.netrc(str(path)).authenticators(host)
    except (netrc.NetrcParseError, OSError):
        return None
    return str(path) if entry and entry[2] else None


def server_status(env: Mapping[str, str] | None = None, timeout_s: float = 2.0) -> tuple[bool, str]:
    """Return (usable, one line a user can act on): a mode that talks to a server, credentials, a TCP answer."""
    env = os.environ if env is None else env
    off = offline_reason(env)
    if off is not None:
        return False, f"{off}: no W&B server is used"
    url = base_url(env)
    parts = urlsplit(url)
    host = parts.hostname
    if not host:
        return False, f"WANDB_BASE_URL={url!r} names no host"
    source = credentials_source(env)
    if source is None:
        return False, f"no W&B credentials for {host} (WANDB_API_KEY unset, no netrc entry; `wandb login` adds one)"
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            pass
    except OSError as e:
        return False, f"W&B server {host}:{port} did not answer within {timeout_s:g} s ({e})"
    return True, f"W&B server {host}:{port} answers and credentials come from {source}"
