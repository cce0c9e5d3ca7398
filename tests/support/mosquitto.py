"""A real Mosquitto broker for tests, started on a free loopback port.

Import the fixtures into a test module::

    from tests.support.mosquitto import mosquitto, mosquitto_factory  # noqa: F401

    async def test_x(mosquitto: MosquittoBroker) -> None:
        async with aiomqtt.Client(mosquitto.host, mosquitto.port) as client: ...

`mosquitto` is an anonymous broker (one per test, ~20 ms to start). `mosquitto_factory(...)` starts variants:
with users (a password file written by ``mosquitto_passwd -b``, or in Mosquitto's ``$6$`` format when the tool is
missing), an ACL file, persistence (so a restart keeps persistent sessions), or a TLS listener. A broker is ready
when its TCP port accepts a connection (polled, never slept on) and is stopped by its PID at teardown;
`stop()`/`start()` restart it on the same port.

The binary is ``/usr/sbin/mosquitto`` (Debian package ``mosquitto``) or ``$MOSQUITTO_BIN``. Where it is missing
the fixtures skip, except under CI (``CI=true``), where they fail so that nothing skips silently.
"""

from __future__ import annotations

import base64
import hashlib
import os
import pwd
import secrets
import shutil
import socket
import subprocess
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.support.services import free_port, service_binary

DEFAULT_BINARY = "/usr/sbin/mosquitto"
READY_TIMEOUT_S = 10.0
POLL_INTERVAL_S = 0.005


def mosquitto_binary() -> str | None:
    """Return the Mosquitto binary to run, or None when it is not installed."""
    return service_binary("MOSQUITTO_BIN", DEFAULT_BINARY, "mosquitto")


def password_line(user: str, password: str) -> str:
    """Return a Mosquitto password-file line in the salted SHA-512 (`$6$`) format every 1.6+/2.x broker reads."""
    salt = secrets.token_bytes(12)
    digest = hashlib.sha512(password.encode() + salt).digest()
    return f"{user}:$6${base64.b64encode(salt).decode()}${base64.b64encode(digest).decode()}"


def write_password_file(path: Path, users: Mapping[str, str], *, use_tool: bool = True) -> None:
    """Write a password file for `users` with `mosquitto_passwd -b` (or by hand when the tool is missing)."""
    tool = shutil.which("mosquitto_passwd") if use_tool else None
    path.unlink(missing_ok=True)
    if tool is None:
        path.write_text("".join(password_line(u, p) + "\n" for u, p in users.items()))
    else:
        for index, (user, password) in enumerate(users.items()):
            create = ["-c"] if index == 0 else []
            subprocess.run(
                [tool, *create, "-b", str(path), user, password], check=True, capture_output=True, timeout=30
            )
    path.chmod(0o600)


@dataclass(frozen=True)
class TlsFiles:
    """A CA and a server certificate for 127.0.0.1/localhost, made with openssl."""

    ca_file: Path
    """CA certificate (PEM) clients trust."""
    cert_file: Path
    """Server certificate (PEM)."""
    key_file: Path
    """Server private key (PEM)."""


def make_tls_files(workdir: Path) -> TlsFiles:
    """Create a throwaway CA and a server certificate for localhost with the openssl CLI."""
    openssl = shutil.which("openssl")
    if openssl is None:
        raise FileNotFoundError("openssl not found")
    workdir.mkdir(parents=True, exist_ok=True)
    ca_key, ca_crt = workdir / "ca.key", workdir / "ca.crt"
    key, csr, crt, ext = workdir / "server.key", workdir / "server.csr", workdir / "server.crt", workdir / "ext.cnf"
    ext.write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")

    def run(*args: str) -> None:
        subprocess.run([openssl, *args], check=True, capture_output=True, timeout=60)

    run(
        "req",
        "-x509",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
        "-days",
        "2",
        "-subj",
        "/CN=ai-trading test CA",
        "-keyout",
        str(ca_key),
        "-out",
        str(ca_crt),
    )
    run(
        "req",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
        "-subj",
        "/CN=localhost",
        "-keyout",
        str(key),
        "-out",
        str(csr),
    )
    run(
        "x509",
        "-req",
        "-in",
        str(csr),
        "-CA",
        str(ca_crt),
        "-CAkey",
        str(ca_key),
        "-CAcreateserial",
        "-days",
        "2",
        "-extfile",
        str(ext),
        "-out",
        str(crt),
    )
    return TlsFiles(ca_file=ca_crt, cert_file=crt, key_file=key)


@dataclass
class MosquittoBroker:
    """A Mosquitto process on 127.0.0.1:`port` with its config and log; restartable on the same port."""

    binary: str
    """The mosquitto executable."""
    port: int
    """Listener port on 127.0.0.1."""
    conf_path: Path
    """Generated config file."""
    log_path: Path
    """File receiving the broker's stderr log."""
    host: str = "127.0.0.1"
    """Listener address."""
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)
    """The running process (None while stopped)."""

    def start(self) -> None:
        """Start the broker and return once its port accepts connections."""
        if self.process is not None and self.process.poll() is None:
            raise RuntimeError(f"mosquitto already running (pid {self.process.pid})")
        with self.log_path.open("ab") as log_file:
            self.process = subprocess.Popen(
                [self.binary, "-c", str(self.conf_path)],
                stdout=log_file,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        deadline = time.monotonic() + READY_TIMEOUT_S
        while not _accepts(self.host, self.port):
            code = self.process.poll()
            if code is not None:
                self.process = None
                raise RuntimeError(f"mosquitto exited with code {code}: {self.log_tail()}")
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(
                    f"mosquitto not accepting on {self.port} after {READY_TIMEOUT_S} s: {self.log_tail()}"
                )
            time.sleep(POLL_INTERVAL_S)  # polling interval, not synchronisation

    def stop(self) -> None:
        """Stop the broker by its PID (SIGTERM, which saves persistence; SIGKILL after 10 s)."""
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)

    def restart(self) -> None:
        """Stop and start again on the same port."""
        self.stop()
        self.start()

    @property
    def is_running(self) -> bool:
        """Return whether the broker process is alive."""
        return self.process is not None and self.process.poll() is None

    def log_tail(self, chars: int = 2000) -> str:
        """Return the end of the broker's log."""
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return "(no log)"


def _accepts(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.2):
            return True
    except OSError:
        return False


def _current_user() -> str:
    return pwd.getpwuid(os.getuid()).pw_name


def start_mosquitto(
    workdir: Path,
    *,
    users: Mapping[str, str] | None = None,
    acl_file: Path | None = None,
    persistence: bool = False,
    tls: TlsFiles | None = None,
    use_passwd_tool: bool = True,
) -> MosquittoBroker:
    """Write a config in `workdir` and start Mosquitto on a free loopback port (retried if the port was taken)."""
    binary = mosquitto_binary()
    if binary is None:
        raise FileNotFoundError(f"mosquitto binary not found at {DEFAULT_BINARY} or on PATH")
    workdir.mkdir(parents=True, exist_ok=True)
    lines_common = [
        # As root Mosquitto would switch to user `mosquitto`, which cannot read files in the test's tmp dir.
        f"user {_current_user()}",
        "log_dest stderr",
        "log_type error",
        "log_type warning",
        "log_type notice",
        "log_type information",
        "connection_messages true",
        # Without it the broker holds small packets for the delayed ACK (~40 ms per command round trip).
        "set_tcp_nodelay true",
    ]
    if persistence:
        lines_common += ["persistence true", f"persistence_location {workdir}/", "autosave_interval 0"]
    else:
        lines_common.append("persistence false")
    if users is not None:
        password_path = workdir / "passwd"
        write_password_file(password_path, users, use_tool=use_passwd_tool)
        lines_common += ["allow_anonymous false", f"password_file {password_path}"]
    else:
        lines_common.append("allow_anonymous true")
    if acl_file is not None:
        lines_common.append(f"acl_file {acl_file}")
    last_error: Exception | None = None
    for _attempt in range(3):
        port = free_port()
        listener = [f"listener {port} 127.0.0.1"]
        if tls is not None:
            listener += [f"cafile {tls.ca_file}", f"certfile {tls.cert_file}", f"keyfile {tls.key_file}"]
        conf_path = workdir / "mosquitto.conf"
        conf_path.write_text("\n".join(lines_common + listener) + "\n")
        broker = MosquittoBroker(binary=binary, port=port, conf_path=conf_path, log_path=workdir / "mosquitto.log")
        try:
            broker.start()
            return broker
        except RuntimeError as e:  # most likely the free port was taken in between; try another
            last_error = e
    raise RuntimeError(f"mosquitto did not start after 3 attempts: {last_error}")


def _in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in ("1", "true", "yes")


def require_mosquitto() -> None:
    """Skip the test when Mosquitto is missing; fail instead under CI."""
    if mosquitto_binary() is None:
        reason = f"mosquitto binary not found ({DEFAULT_BINARY}); install the Debian package 'mosquitto'"
        if _in_ci():
            pytest.fail(f"{reason} (CI=true: integration services must not be skipped)")
        pytest.skip(reason)


BrokerFactory = Callable[..., MosquittoBroker]
"""`factory(users=..., acl_file=..., persistence=..., tls=...)` → a started broker (see start_mosquitto)."""


@pytest.fixture
def mosquitto_factory(tmp_path: Path) -> Iterator[BrokerFactory]:
    """Yield a function that starts Mosquitto variants; every broker it started is stopped at teardown."""
    require_mosquitto()
    started: list[MosquittoBroker] = []

    def factory(**kwargs: object) -> MosquittoBroker:
        broker = start_mosquitto(tmp_path / f"mosquitto-{len(started)}", **kwargs)  # type: ignore[arg-type]
        started.append(broker)
        return broker

    try:
        yield factory
    finally:
        for broker in started:
            broker.stop()


@pytest.fixture
def mosquitto(mosquitto_factory: BrokerFactory) -> MosquittoBroker:
    """Return a running anonymous Mosquitto on a free loopback port."""
    return mosquitto_factory()
