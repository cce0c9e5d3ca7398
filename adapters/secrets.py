"""Exchange API credentials from the environment or a secrets file, never from config in the repo.

Sources, first match wins:

1. Environment: `AI_TRADING_<EXCHANGE>_API_KEY`, `AI_TRADING_<EXCHANGE>_SECRET` and optionally
   `AI_TRADING_<EXCHANGE>_PASSWORD`; each also as a `..._FILE` variable naming a file that holds the value
   (systemd `LoadCredential=` puts files under `$CREDENTIALS_DIRECTORY`, docker/k8s secrets mount files).
2. A TOML secrets file with one table per exchange id::

       [binance]
       api_key = "..."
       secret = "..."
       # password = "..."   # exchanges that need a passphrase

   A file that its group or others can read is used, with a warning.

The values never reach a log line or a repr. This module cannot import `monitoring` (adapters is the ground
floor), so the entry point registers `Credentials.secret_values()` with its log redaction.
"""

from __future__ import annotations

import os
import re
import stat
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import structlog

from adapters.errors import FatalError

log = structlog.get_logger()

ENV_PREFIX = "AI_TRADING_"


@dataclass(frozen=True, slots=True)
class Credentials:
    """API credentials of one exchange account; the repr never shows the values."""

    api_key: str = field(repr=False)
    secret: str = field(repr=False)
    password: str | None = field(default=None, repr=False)
    source: str = "unknown"
    """Where the values came from (env variable names or the secrets file), safe to log."""

    def __post_init__(self) -> None:
        if not self.api_key.strip() or not self.secret.strip():
            raise FatalError(f"credentials from {self.source}: api_key and secret must be non-empty")

    def __repr__(self) -> str:
        return (
            f"Credentials(api_key='***', secret='***', password={'***' if self.password else None}, "
            f"source={self.source!r})"
        )

    __str__ = __repr__

    def secret_values(self) -> tuple[str, ...]:
        """Return the values a log redactor must mask."""
        return tuple(v for v in (self.api_key, self.secret, self.password) if v)


def env_names(exchange_id: str) -> dict[str, str]:
    """Return the environment variable names for an exchange: field → variable."""
    if not exchange_id or not re.fullmatch(r"[A-Za-z0-9_.\-]+", exchange_id):
        raise FatalError(f"invalid exchange id {exchange_id!r} for credentials: use a ccxt id such as 'binance'")
    stem = ENV_PREFIX + re.sub(r"[^A-Z0-9]", "_", exchange_id.upper()) + "_"
    return {"api_key": stem + "API_KEY", "secret": stem + "SECRET", "password": stem + "PASSWORD"}


def _from_env(exchange_id: str, env: Mapping[str, str]) -> dict[str, tuple[str, str]]:
    """Return field → (value, source name) for the variables that are set."""
    found: dict[str, tuple[str, str]] = {}
    for name, var in env_names(exchange_id).items():
        if env.get(var):
            found[name] = (env[var].strip(), var)
        elif env.get(var + "_FILE"):
            path = Path(env[var + "_FILE"])
            try:
                found[name] = (path.read_text(encoding="utf-8").strip(), f"{var}_FILE")
            except OSError as e:
                raise FatalError(f"{var}_FILE={path}: cannot read the credential file: {e.strerror}") from e
    return found


def _from_file(exchange_id: str, secrets_file: Path) -> dict[str, tuple[str, str]]:
    """Return field → (value, source) from the exchange's table of a TOML secrets file."""
    try:
        mode = secrets_file.stat().st_mode
        raw = secrets_file.read_bytes()
    except OSError as e:
        raise FatalError(f"secrets file {secrets_file}: cannot read it: {e.strerror}") from e
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        log.warning(
            "secrets_file_permissions_too_open",
            path=str(secrets_file),
            mode=oct(stat.S_IMODE(mode)),
            fix=f"chmod 600 {secrets_file}",
        )
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise FatalError(f"secrets file {secrets_file}: not valid TOML: {e}") from e
    table = data.get(exchange_id)
    if table is None:
        return {}
    if not isinstance(table, dict):
        raise FatalError(f"secrets file {secrets_file}: [{exchange_id}] must be a table with api_key and secret")
    found: dict[str, tuple[str, str]] = {}
    for name in ("api_key", "secret", "password"):
        value = table.get(name)
        if value is None:
            continue
        if not isinstance(value, str):
            raise FatalError(f"secrets file {secrets_file}: [{exchange_id}].{name} must be a string")
        found[name] = (value.strip(), f"{secrets_file}[{exchange_id}]")
    unknown = sorted(set(table) - {"api_key", "secret", "password"})
    if unknown:
        raise FatalError(f"secrets file {secrets_file}: [{exchange_id}] has unknown keys {unknown}")
    return found


def load_credentials(
    exchange_id: str,
    *,
    env: Mapping[str, str] | None = None,
    secrets_file: Path | None = None,
    required: bool = True,
) -> Credentials | None:
    """Load an exchange's credentials from the environment, else from a TOML secrets file.

    Raises:
        FatalError: `required` and none found, only part of a key pair found, or an unreadable source.
    """
    environ = os.environ if env is None else env
    names = env_names(exchange_id)
    found = _from_env(exchange_id, environ)
    if not found and secrets_file is not None:
        found = _from_file(exchange_id, secrets_file)
    if not found:
        if not required:
            return None
        where = (
            f" or a [{exchange_id}] table in {secrets_file}"
            if secrets_file is not None
            else " (or pass a TOML secrets file)"
        )
        raise FatalError(
            f"no API credentials for {exchange_id}: set {names['api_key']} and {names['secret']} "
            f"(or {names['api_key']}_FILE and {names['secret']}_FILE){where}"
        )
    missing = [name for name in ("api_key", "secret") if name not in found or not found[name][0]]
    if missing:
        sources = ", ".join(sorted({source for _, source in found.values()}))
        raise FatalError(
            f"incomplete API credentials for {exchange_id} from {sources}: missing "
            + " and ".join(names[m] if "[" not in sources else m for m in missing)
        )
    source = ", ".join(dict.fromkeys(source for _, source in found.values()))
    creds = Credentials(
        api_key=found["api_key"][0],
        secret=found["secret"][0],
        password=found["password"][0] if "password" in found else None,
        source=source,
    )
    log.info("credentials_loaded", exchange=exchange_id, source=source)
    return creds
