"""A real PostgreSQL server for tests: Debian's `postgresql`, initialised in a temp dir, on a free loopback port.

Use the fixtures from a test module (or conftest)::

    from tests.support.postgres import postgres_server, postgres_url  # noqa: F401

    def test_x(postgres_url: str) -> None:        # a fresh, empty database per test
        ledger = Ledger(postgres_url)              # postgresql+psycopg://postgres@127.0.0.1:PORT/test_3

One server per test session (``initdb`` + start take ~2 s); every test gets its own database
(``CREATE DATABASE``), dropped at teardown. The server listens on 127.0.0.1 only (no Unix socket), trusts local
connections (a throwaway cluster), and runs with ``fsync=off``. ``initdb`` refuses to run as root, so as root the
cluster is made and run as the Debian package's ``postgres`` user (``subprocess.Popen(user=...)``, no sudo). The
server is ready when a connection succeeds (polled, never slept on) and is stopped by its PID (SIGINT: fast
shutdown).

Binaries: ``$POSTGRES_BIN_DIR``, else the newest ``/usr/lib/postgresql/*/bin``, else ``initdb`` on PATH. Where they
are missing the fixtures skip, except under CI (``CI=true``), where they fail so that nothing skips silently.
"""

from __future__ import annotations

import itertools
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.support.services import free_port

READY_TIMEOUT_S = 30.0
POLL_INTERVAL_S = 0.05
SERVICE_USER = "postgres"
"""The Debian package's system user; the cluster runs as it when the tests run as root."""

_database_numbers = itertools.count()


def postgres_bin_dir() -> Path | None:
    """Return the directory holding initdb and postgres, or None when PostgreSQL is not installed."""
    configured = os.environ.get("POSTGRES_BIN_DIR")
    candidates = [Path(configured)] if configured else []
    candidates += sorted(Path("/usr/lib/postgresql").glob("*/bin"), key=lambda p: _version(p.parent.name), reverse=True)
    on_path = shutil.which("initdb")
    if on_path:
        candidates.append(Path(on_path).parent)
    for candidate in candidates:
        if (candidate / "initdb").is_file() and (candidate / "postgres").is_file():
            return candidate
    return None


def _version(name: str) -> tuple[int, ...]:
    return tuple(int(part) for part in name.split(".") if part.isdigit())


def _run_as() -> dict[str, Any]:
    """Popen keyword arguments that drop root to the `postgres` user (initdb and postgres refuse root)."""
    if os.geteuid() != 0:
        return {}
    try:
        user = pwd.getpwnam(SERVICE_USER)
    except KeyError as e:
        raise RuntimeError(f"running as root and there is no {SERVICE_USER!r} user to run PostgreSQL as") from e
    return {"user": user.pw_uid, "group": user.pw_gid, "extra_groups": []}


@dataclass
class PostgresServer:
    """A PostgreSQL cluster in a temp dir, listening on 127.0.0.1:`port`."""

    bin_dir: Path
    """Where initdb/postgres live."""
    data_dir: Path
    """The cluster (owned by the user it runs as)."""
    port: int
    """TCP port on 127.0.0.1."""
    log_path: Path
    """The server's stderr."""
    host: str = "127.0.0.1"
    """Listen address."""
    user: str = "postgres"
    """Superuser name of the cluster."""
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)
    """The postmaster (None while stopped)."""

    def url(self, database: str = "postgres", driver: str = "postgresql+psycopg") -> str:
        """Return the SQLAlchemy URL of `database` (``postgresql://...`` with driver="postgresql")."""
        return f"{driver}://{self.user}@{self.host}:{self.port}/{database}"

    def start(self) -> None:
        """Start the postmaster and return once it accepts connections."""
        if self.process is not None and self.process.poll() is None:
            raise RuntimeError(f"postgres already running (pid {self.process.pid})")
        args = [
            str(self.bin_dir / "postgres"),
            "-D",
            str(self.data_dir),
            "-p",
            str(self.port),
            "-c",
            f"listen_addresses={self.host}",
            "-c",
            "unix_socket_directories=",
            "-c",
            "fsync=off",
            "-c",
            "full_page_writes=off",
            "-c",
            "max_connections=100",
        ]
        with self.log_path.open("ab") as log_file:
            self.process = subprocess.Popen(
                args, stdout=log_file, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, **_run_as()
            )
        deadline = time.monotonic() + READY_TIMEOUT_S
        while not self._accepts():
            code = self.process.poll()
            if code is not None:
                self.process = None
                raise RuntimeError(f"postgres exited with code {code}: {self.log_tail()}")
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"postgres not ready on {self.port} after {READY_TIMEOUT_S} s: {self.log_tail()}")
            time.sleep(POLL_INTERVAL_S)  # polling interval, not synchronisation

    def _accepts(self) -> bool:
        import psycopg

        try:
            with psycopg.connect(host=self.host, port=self.port, user=self.user, dbname="postgres", connect_timeout=2):
                return True
        except psycopg.OperationalError:
            return False

    def stop(self) -> None:
        """Stop the server by its PID (SIGINT = fast shutdown; SIGKILL after 20 s)."""
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)

    def execute(self, sql: str, database: str = "postgres") -> None:
        """Run one statement in autocommit (CREATE/DROP DATABASE cannot run in a transaction)."""
        import psycopg

        with psycopg.connect(host=self.host, port=self.port, user=self.user, dbname=database, autocommit=True) as conn:
            conn.execute(sql)  # type: ignore[arg-type]  # test-owned literal SQL

    def create_database(self, name: str | None = None) -> str:
        """Create an empty database and return its name."""
        name = name or f"test_{os.getpid()}_{next(_database_numbers)}"
        self.execute(f'CREATE DATABASE "{name}"')
        return name

    def drop_database(self, name: str) -> None:
        """Drop a database, disconnecting whoever is still connected."""
        self.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    def log_tail(self, chars: int = 2000) -> str:
        """Return the end of the server's log."""
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return "(no log)"


def start_postgres(bin_dir: Path | None = None) -> PostgresServer:
    """initdb a cluster in a new temp dir and start it on a free loopback port (retried if the port was taken)."""
    bin_dir = bin_dir or postgres_bin_dir()
    if bin_dir is None:
        raise FileNotFoundError("PostgreSQL binaries (initdb, postgres) not found under /usr/lib/postgresql/*/bin")
    # Not pytest's tmp_path: its parents are root-only (0700), and the cluster may run as `postgres`.
    root = Path(tempfile.mkdtemp(prefix="ai-trading-pg-"))
    data_dir = root / "data"
    run_as = _run_as()
    if run_as:
        os.chown(root, run_as["user"], run_as["group"])
    subprocess.run(
        [str(bin_dir / "initdb"), "-D", str(data_dir), "-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-sync"],
        check=True,
        capture_output=True,
        timeout=120,
        cwd=root,
        **run_as,
    )
    last_error: Exception | None = None
    for _attempt in range(3):
        server = PostgresServer(bin_dir=bin_dir, data_dir=data_dir, port=free_port(), log_path=root / "postgres.log")
        try:
            server.start()
            return server
        except RuntimeError as e:  # most likely the free port was taken in between; try another
            last_error = e
    raise RuntimeError(f"postgres did not start after 3 attempts: {last_error}")


def _in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in ("1", "true", "yes")


def require_postgres() -> None:
    """Skip the test when PostgreSQL or its driver is missing; fail instead under CI."""
    reason = None
    if postgres_bin_dir() is None:
        reason = "PostgreSQL not found (/usr/lib/postgresql/*/bin); install the Debian package 'postgresql'"
    else:
        try:
            import psycopg  # noqa: F401
        except ImportError:
            reason = "the PostgreSQL driver is missing: pip install 'ai-trading[postgres]' (psycopg[binary])"
    if reason is None:
        return
    if _in_ci():
        pytest.fail(f"{reason} (CI=true: integration services must not be skipped)")
    pytest.skip(reason)


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """Yield one PostgreSQL server for the session; removed with its temp dir at the end."""
    require_postgres()
    server = start_postgres()
    try:
        yield server
    finally:
        server.stop()
        shutil.rmtree(server.data_dir.parent, ignore_errors=True)


@pytest.fixture
def postgres_url(postgres_server: PostgresServer) -> Iterator[str]:
    """Yield the SQLAlchemy URL of a fresh database (dropped after the test)."""
    name = postgres_server.create_database()
    try:
        yield postgres_server.url(name)
    finally:
        postgres_server.drop_database(name)
