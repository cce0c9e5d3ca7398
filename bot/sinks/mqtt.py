"""MQTT event sink and control plane: publish events, retained status and heartbeats; answer commands.

Topics (DESIGN.md, "MQTT"), under ``<namespace>/<bot_id>/``:

- ``events``: every event except status and heartbeat, as :mod:`bot.events` JSON, QoS ``qos_events``.
- ``status``: the latest :class:`~bot.events.StatusEvent`, retained, QoS 1. On connect the bot publishes its last
  known status (``state="online"`` before the engine sent one); the connection's last will sets
  ``state="offline"`` (message ``connection lost``, ``ts`` = when that connection was made) when the bot dies
  without disconnecting; a clean shutdown publishes ``state="offline"`` (message ``stopped``).
- ``heartbeat``: a :class:`~bot.events.HeartbeatEvent` every ``heartbeat_interval_s`` (QoS 0, not retained).
- ``cmd``: commands in (QoS 1), see :mod:`bot.commands`; ``reply`` (and below it): replies out (QoS 1).

**Never in the way of trading.** :meth:`MqttBridge.submit` is synchronous and returns at once: events wait in a
bounded in-memory queue (``queue_size``) that a background task drains. When the broker is slow or down and the
queue is full, the *oldest* waiting event is dropped to make room (a live monitor cares most about the latest
state; the ledger keeps the full history) and counted in ``stats.dropped`` and ``aitrading_sink_dropped_total``.
Status and heartbeat are never queued behind events: each has a one-slot mailbox where the newest replaces the
older one, so the retained status is always the latest. The connection is re-established with exponential
backoff (``reconnect_min_s`` .. ``reconnect_max_s``, with jitter); an event whose publish failed is retried after
reconnecting (at-least-once).

**Secrets.** The broker password comes from ``$AI_TRADING_MQTT_PASSWORD`` or ``password_file``, the command HMAC
secret from ``$AI_TRADING_MQTT_COMMAND_SECRET`` or ``command_secret_file``; neither is a config value, and neither
is ever logged. TLS is configured with ``tls`` (CA, optional client certificate).
"""

from __future__ import annotations

import asyncio
import os
import random
import re
import socket
import ssl
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from types import TracebackType
from typing import Literal, Protocol, Self

import aiomqtt
import structlog

from bot.clock import utc_now
from bot.commands import COMMANDS, CommandHandler, CommandProcessor
from bot.events import Event, HeartbeatEvent, StatusEvent
from monitoring.metrics import SinkStats

log = structlog.get_logger()

PASSWORD_ENV = "AI_TRADING_MQTT_PASSWORD"
"""Environment variable holding the broker password (wins over password_file)."""
COMMAND_SECRET_ENV = "AI_TRADING_MQTT_COMMAND_SECRET"
"""Environment variable holding the command HMAC secret (wins over command_secret_file)."""
SINK_NAME = "mqtt"
"""Label of this sink in the sink metrics."""

_SEGMENT_RE = re.compile(r"[A-Za-z0-9_.\-]+")


class MqttConfigError(ValueError):
    """The MQTT configuration is invalid; the message names the key."""


@dataclass(frozen=True)
class MqttTlsConfig:
    """TLS towards the broker (off unless enabled)."""

    enabled: bool = False
    """Connect over TLS."""
    ca_file: str | None = None
    """CA bundle that signed the broker's certificate; None means the system CAs."""
    cert_file: str | None = None
    """Client certificate (PEM) for brokers that require one."""
    key_file: str | None = None
    """Private key of the client certificate (PEM)."""
    insecure: bool = False
    """Skip certificate and hostname verification (testing only; never in production)."""


@dataclass(frozen=True)
class MqttConfig:
    """Where the broker is, who the bot is, and how the bridge behaves (config/mqtt/default.yaml)."""

    bot_id: str
    """This bot's id; the middle segment of every topic (letters, digits, `_ . -`)."""
    host: str = "127.0.0.1"
    """Broker host name or address."""
    port: int = 1883
    """Broker port (8883 is the usual TLS port)."""
    namespace: str = "ai-trading"
    """Topic prefix; may contain `/` between segments."""
    username: str | None = None
    """Broker user name; the shipped ACL expects it to equal bot_id."""
    password_file: str | None = None
    """File holding the broker password ($AI_TRADING_MQTT_PASSWORD wins); never put the password in config."""
    tls: MqttTlsConfig = field(default_factory=MqttTlsConfig)
    """TLS settings."""
    keepalive_s: int = 30
    """MQTT keepalive; the broker fires the last will after 1.5x this without traffic from a hung bot."""
    connect_timeout_s: float = 10.0
    """Deadline for connecting, subscribing and each publish acknowledgement."""
    reconnect_min_s: float = 0.5
    """First reconnect delay; doubles on each failure."""
    reconnect_max_s: float = 30.0
    """Longest reconnect delay."""
    queue_size: int = 1000
    """Events held while the broker is slow or away; beyond it the oldest are dropped and counted."""
    qos_events: Literal[0, 1] = 1
    """QoS of event messages (0: at most once, 1: at least once)."""
    heartbeat_interval_s: float = 30.0
    """Seconds between heartbeats; 0 turns the bridge's own heartbeat off."""
    allowed_commands: tuple[str, ...] = COMMANDS
    """Commands this bot accepts; others get a `forbidden` error reply."""
    command_auth: Literal["none", "hmac"] = "none"
    """`none`: the broker ACL alone decides who may command; `hmac`: commands must also be signed."""
    command_secret_file: str | None = None
    """File holding the HMAC secret for command_auth=hmac ($AI_TRADING_MQTT_COMMAND_SECRET wins)."""
    auth_max_skew_s: float = 60.0
    """Largest accepted difference between a signed command's ts and the bot's clock."""
    dedup_window_s: float = 600.0
    """How long an executed command id is remembered; a repeat inside it returns the stored reply."""
    command_timeout_s: float = 60.0
    """Deadline for one command's handler call."""
    close_timeout_s: float = 2.0
    """On shutdown, how long to spend publishing waiting events and the offline status."""

    def __post_init__(self) -> None:
        if not _SEGMENT_RE.fullmatch(self.bot_id):
            raise MqttConfigError(f"mqtt.bot_id: {self.bot_id!r} must be letters, digits, '_', '.' or '-'")
        segments = self.namespace.split("/")
        if not all(_SEGMENT_RE.fullmatch(s) for s in segments):
            raise MqttConfigError(
                f"mqtt.namespace: {self.namespace!r} must be '/'-separated segments of letters, "
                "digits, '_', '.' or '-' (no wildcards, no empty segments)"
            )
        if not 0 < self.port < 65536:
            raise MqttConfigError(f"mqtt.port: must be in 1..65535, was {self.port}")
        if self.queue_size < 1:
            raise MqttConfigError(f"mqtt.queue_size: must be >= 1, was {self.queue_size}")
        if self.qos_events not in (0, 1):
            raise MqttConfigError(f"mqtt.qos_events: must be 0 or 1, was {self.qos_events!r}")
        if self.keepalive_s < 1:
            raise MqttConfigError(f"mqtt.keepalive_s: must be >= 1, was {self.keepalive_s}")
        if not 0 < self.reconnect_min_s <= self.reconnect_max_s:
            raise MqttConfigError(
                f"mqtt.reconnect_min_s/reconnect_max_s: need 0 < min <= max, were "
                f"{self.reconnect_min_s}/{self.reconnect_max_s}"
            )
        if self.heartbeat_interval_s < 0:
            raise MqttConfigError(f"mqtt.heartbeat_interval_s: must be >= 0, was {self.heartbeat_interval_s}")
        unknown = sorted(set(self.allowed_commands) - set(COMMANDS))
        if unknown:
            raise MqttConfigError(f"mqtt.allowed_commands: unknown {', '.join(unknown)}; known: {', '.join(COMMANDS)}")
        if self.command_auth not in ("none", "hmac"):
            raise MqttConfigError(f"mqtt.command_auth: must be 'none' or 'hmac', was {self.command_auth!r}")
        if self.dedup_window_s < 2 * self.auth_max_skew_s:
            raise MqttConfigError(
                f"mqtt.dedup_window_s: must be >= 2 x auth_max_skew_s ({2 * self.auth_max_skew_s}) "
                f"so replayed signed commands are caught, was {self.dedup_window_s}"
            )
        tls = self.tls
        if tls.key_file and not tls.cert_file:
            raise MqttConfigError("mqtt.tls.key_file: set cert_file too")

    def topic(self, name: Literal["events", "status", "heartbeat", "cmd", "reply"]) -> str:
        """Return the full topic `<namespace>/<bot_id>/<name>`."""
        return f"{self.namespace}/{self.bot_id}/{name}"


def _read_secret_file(path: str, key: str) -> str:
    try:
        value = Path(path).read_text(encoding="utf-8").strip()
    except OSError as e:
        raise MqttConfigError(f"{key}: cannot read {path}: {e.strerror}") from None
    if not value:
        raise MqttConfigError(f"{key}: {path} is empty")
    return value


def resolve_password(config: MqttConfig, env: Mapping[str, str] | None = None) -> str | None:
    """Return the broker password from $AI_TRADING_MQTT_PASSWORD or password_file, or None."""
    env = os.environ if env is None else env
    if env.get(PASSWORD_ENV):
        return env[PASSWORD_ENV]
    if config.password_file:
        return _read_secret_file(config.password_file, "mqtt.password_file")
    return None


def resolve_command_secret(config: MqttConfig, env: Mapping[str, str] | None = None) -> bytes | None:
    """Return the command HMAC secret for command_auth=hmac (env var, then file); None when auth is off."""
    if config.command_auth == "none":
        return None
    env = os.environ if env is None else env
    if env.get(COMMAND_SECRET_ENV):
        return env[COMMAND_SECRET_ENV].encode()
    if config.command_secret_file:
        return _read_secret_file(config.command_secret_file, "mqtt.command_secret_file").encode()
    raise MqttConfigError(f"mqtt.command_auth=hmac needs ${COMMAND_SECRET_ENV} or mqtt.command_secret_file")


def tls_context(tls: MqttTlsConfig) -> ssl.SSLContext | None:
    """Build the SSL context for `tls`, or None when TLS is off; raise MqttConfigError on unreadable files."""
    if not tls.enabled:
        return None
    try:
        context = ssl.create_default_context(cafile=tls.ca_file)
        if tls.cert_file:
            context.load_cert_chain(tls.cert_file, tls.key_file)
    except (OSError, ssl.SSLError) as e:
        raise MqttConfigError(f"mqtt.tls: cannot load certificates ({tls.ca_file}, {tls.cert_file}): {e}") from None
    if tls.insecure:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


class SinkMetrics(Protocol):
    """The part of monitoring.metrics.BotMetrics the bridge reports to."""

    def sink_queue_depth(self, sink: str, depth: int) -> None:
        """Record how many events wait in `sink`'s queue."""
        ...

    def sink_dropped(self, sink: str, count: int = 1) -> None:
        """Count events `sink` dropped."""
        ...

    def sink_connected(self, sink: str, connected: bool) -> None:
        """Record whether `sink` holds its connection."""
        ...

    def sink_connect_failed(self, sink: str) -> None:
        """Count one failed connection attempt or lost connection."""
        ...


_NODELAY = [(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)]
# Without TCP_NODELAY a publisher mixing QoS 0 and 1 waited ~22 ms per message on Nagle + delayed ACK
# (shared/reference/test-services.md); with it ~0.5 ms.


class MqttBridge:
    """Connect a bot to its MQTT broker: publish its events, status and heartbeats, and serve its commands.

    Use as an async context manager; entering starts the background task and returns at once (the broker may be
    down: the bridge keeps retrying), leaving publishes the offline status and stops. Call `submit` (or
    `publish`, the engine's EventSink method) from the event loop's thread only. Run one bridge per bot_id: the
    MQTT client id is derived from it, and two clients with one id keep disconnecting each other.
    """

    def __init__(
        self,
        config: MqttConfig,
        handler: CommandHandler,
        *,
        metrics: SinkMetrics | None = None,
        clock: Callable[[], datetime] = utc_now,
        monotonic: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
        env: Mapping[str, str] | None = None,
    ) -> None:
        """Read secrets and certificates now, so a bad configuration fails before anything starts."""
        self.config = config
        self._password = resolve_password(config, env)
        self._tls_context = tls_context(config.tls)
        self.processor = CommandProcessor(
            handler,
            reply_topic=config.topic("reply"),
            allowed_commands=config.allowed_commands,
            secret=resolve_command_secret(config, env),
            auth_max_skew_s=config.auth_max_skew_s,
            dedup_window_s=config.dedup_window_s,
            command_timeout_s=config.command_timeout_s,
            wall_clock=wall_clock,
            monotonic=monotonic,
        )
        self._metrics = metrics
        self._clock = clock
        self._monotonic = monotonic
        self._started = monotonic()
        self.stats = SinkStats()
        self._queue: deque[Event] = deque()
        self._inflight: Event | None = None
        self._last_status: StatusEvent | None = None
        self._status_dirty = False
        self._heartbeat: HeartbeatEvent | None = None
        self._heartbeat_seq = 0
        self._wake = asyncio.Event()
        self._connected = asyncio.Event()
        self._disconnected = asyncio.Event()
        self._disconnected.set()
        self._flushed = asyncio.Event()
        self._closing = False
        self._closed = False
        self._drops_since_publish = 0
        self._outage_failures = 0
        """Failed attempts since the last connection (or the start)."""
        self._outage_error: str | None = None
        """The error last logged in this outage: a repeat of it is counted, not logged."""
        self._outage_started: float | None = None
        self._task: asyncio.Task[None] | None = None
        self._log = log.bind(bot_id=config.bot_id, broker=f"{config.host}:{config.port}")

    # ------------------------------------------------------------------------------------ producer side

    @property
    def queue_depth(self) -> int:
        """Return how many events wait to be published."""
        return len(self._queue)

    @property
    def is_connected(self) -> bool:
        """Return whether the bridge holds a live broker connection."""
        return self._connected.is_set()

    def submit(self, event: Event) -> bool:
        """Queue `event` for publishing without waiting; return False when it cost a drop (queue full or closed).

        A StatusEvent or HeartbeatEvent replaces the one waiting in its mailbox and never causes a drop.
        """
        self.stats.accepted += 1
        if self._closed:
            self._count_drop()
            return False
        if isinstance(event, StatusEvent):
            self._last_status = event
            self._status_dirty = True
            self._wake.set()
            return True
        if isinstance(event, HeartbeatEvent):
            self._heartbeat = event
            self._wake.set()
            return True
        dropped = len(self._queue) >= self.config.queue_size
        if dropped:
            self._queue.popleft()  # drop the oldest: the newest events matter most to a live monitor
            self._count_drop()
        self._queue.append(event)
        if self._metrics is not None:
            self._metrics.sink_queue_depth(SINK_NAME, len(self._queue))
        self._wake.set()
        return not dropped

    def publish(self, event: Event) -> None:
        """Take one event without blocking (the engine's EventSink protocol)."""
        self.submit(event)

    def beat(self) -> HeartbeatEvent:
        """Emit the next heartbeat now (the heartbeat task calls this every heartbeat_interval_s)."""
        self._heartbeat_seq += 1
        event = HeartbeatEvent(
            ts=self._clock(),
            bot_id=self.config.bot_id,
            seq=self._heartbeat_seq,
            uptime_s=max(0.0, self._monotonic() - self._started),
        )
        self.submit(event)
        return event

    def _count_drop(self) -> None:
        self.stats.dropped += 1
        self._drops_since_publish += 1
        if self._drops_since_publish == 1:
            self._log.warning(
                "mqtt_events_dropping",
                queue_size=self.config.queue_size,
                connected=self.is_connected,
                dropped_total=self.stats.dropped,
            )
        if self._metrics is not None:
            self._metrics.sink_dropped(SINK_NAME, 1)

    # ------------------------------------------------------------------------------------ lifecycle

    async def __aenter__(self) -> Self:
        """Start connecting in the background and return at once."""
        if self._task is not None:
            raise RuntimeError("MqttBridge is not reentrant")
        self._task = asyncio.create_task(self._run(), name=f"mqtt:{self.config.bot_id}")
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        """Publish what is waiting and the offline status (within close_timeout_s), then disconnect."""
        await self.close()

    async def close(self) -> None:
        """Stop the bridge: flush briefly, mark the bot offline, disconnect."""
        if self._closed:
            return
        self._closing = True
        self._wake.set()
        if self._connected.is_set():
            try:
                async with asyncio.timeout(self.config.close_timeout_s):
                    await self._flushed.wait()
            except TimeoutError:
                self._log.warning("mqtt_close_flush_timed_out", waiting=len(self._queue))
        self._closed = True
        task, self._task = self._task, None
        while task is not None and not task.done():
            task.cancel()
            # Bounded wait, then cancel again: one cancellation can be lost inside aiomqtt (see _stop_if_closed).
            await asyncio.wait({task}, timeout=self.config.close_timeout_s)
        if task is not None and not task.cancelled() and task.exception() is not None:
            self._log.error("mqtt_bridge_failed", error=repr(task.exception()))
        self._log.info("mqtt_bridge_closed", delivered=self.stats.delivered, dropped=self.stats.dropped)

    def _stop_if_closed(self) -> None:
        """Raise CancelledError once close() has begun cancelling, even if an await swallowed that cancellation.

        aiomqtt waits with asyncio.wait_for, which on Python < 3.12 can drop a cancellation that arrives just as the
        awaited operation completes (https://github.com/python/cpython/issues/86296); a loop that went on would
        never stop. Task.cancelling() cannot tell instead: 3.11's TaskGroup can leave it non-zero after a child
        failed (https://github.com/python/cpython/issues/116720). Called after each broker operation.
        """
        if self._closed:
            raise asyncio.CancelledError

    async def wait_connected(self, timeout_s: float | None = None) -> None:
        """Wait until the bridge is connected and subscribed (TimeoutError after `timeout_s`)."""
        async with asyncio.timeout(timeout_s):
            await self._connected.wait()

    async def wait_disconnected(self, timeout_s: float | None = None) -> None:
        """Wait until the bridge has no broker connection (TimeoutError after `timeout_s`)."""
        async with asyncio.timeout(timeout_s):
            await self._disconnected.wait()

    async def _run(self) -> None:
        async with asyncio.TaskGroup() as group:
            group.create_task(self._supervise(), name=f"mqtt:{self.config.bot_id}:connection")
            if self.config.heartbeat_interval_s > 0:
                group.create_task(self._heartbeats(), name=f"mqtt:{self.config.bot_id}:heartbeat")

    async def _heartbeats(self) -> None:
        while True:
            await asyncio.sleep(self.config.heartbeat_interval_s)
            self.beat()

    async def _supervise(self) -> None:
        delay = self.config.reconnect_min_s
        while True:
            self._stop_if_closed()
            connects_before = self.stats.connects
            try:
                await self._session()
            except* aiomqtt.MqttError as group:
                self._connection_failed(str(group.exceptions[0]), delay)
            except* Exception as group:  # a bug in a session must not end the sink; log it and reconnect
                crash = group.exceptions[0]
                self._connection_failed(f"session crashed: {crash!r}", delay, crash)
            finally:
                self._connected.clear()
                self._disconnected.set()
                if self._metrics is not None:
                    self._metrics.sink_connected(SINK_NAME, False)
            if self.stats.connects > connects_before:  # that session had connected: back off afresh
                delay = self.config.reconnect_min_s
            await asyncio.sleep(delay * random.uniform(0.75, 1.0))
            delay = min(delay * 2, self.config.reconnect_max_s)

    def _connection_failed(self, error: str, retry_in_s: float, crash: BaseException | None = None) -> None:
        # A broker away for an hour is hundreds of attempts: each is counted (stats, metric), and a line is
        # logged when the outage begins and when its error changes; `mqtt_connected` says how it ended.
        self.stats.failures += 1
        self._outage_failures += 1
        if self._outage_started is None:
            self._outage_started = self._monotonic()
        if self._metrics is not None:
            self._metrics.sink_connect_failed(SINK_NAME)
        if error != self._outage_error:
            self._outage_error = error
            self._log.warning(
                "mqtt_session_crashed" if crash is not None else "mqtt_connection_failed",
                error=error,
                retry_in_s=retry_in_s,
                failures_in_outage=self._outage_failures,
                note="retrying quietly until the error changes or the broker is back",
                exc_info=crash,
            )

    def _client(self) -> aiomqtt.Client:
        config = self.config
        will = aiomqtt.Will(
            self.config.topic("status"),
            self._connection_status("offline", "connection lost").to_json(),
            qos=1,
            retain=True,
        )
        return aiomqtt.Client(
            config.host,
            config.port,
            username=config.username,
            password=self._password,
            identifier=f"ai-trading-{config.bot_id}",
            will=will,
            clean_session=True,
            keepalive=config.keepalive_s,
            timeout=config.connect_timeout_s,
            tls_context=self._tls_context,
            tls_insecure=config.tls.insecure if config.tls.enabled else None,
            socket_options=_NODELAY,
        )

    def _connection_status(self, state: str, message: str) -> StatusEvent:
        last = self._last_status
        return StatusEvent(
            ts=self._clock(),
            bot_id=self.config.bot_id,
            state=state,
            risk_state=last.risk_state if last else "unknown",
            mode=last.mode if last else "unknown",
            uptime_s=max(0.0, self._monotonic() - self._started),
            message=message,
        )

    async def _session(self) -> None:
        async with self._client() as client:
            self._stop_if_closed()
            await client.subscribe(self.config.topic("cmd"), qos=1, timeout=self.config.connect_timeout_s)
            # The retained status must show the engine's latest state, not just "online", after a reconnect.
            status = self._last_status or self._connection_status("online", "mqtt connected")
            await client.publish(
                self.config.topic("status"), status.to_json(), qos=1, retain=True, timeout=self.config.connect_timeout_s
            )
            self._stop_if_closed()
            if self._last_status is status:
                self._status_dirty = False
            self.stats.connects += 1
            if self._drops_since_publish:
                self._log.warning("mqtt_events_dropped_while_away", dropped=self._drops_since_publish)
            self._drops_since_publish = 0
            outage_s = None if self._outage_started is None else round(self._monotonic() - self._outage_started, 1)
            self._log.info(
                "mqtt_connected", waiting=len(self._queue), failures_in_outage=self._outage_failures, outage_s=outage_s
            )
            self._outage_failures, self._outage_error, self._outage_started = 0, None, None
            if self._metrics is not None:
                self._metrics.sink_connected(SINK_NAME, True)
            self._disconnected.clear()
            self._connected.set()
            async with asyncio.TaskGroup() as group:
                group.create_task(self._drain(client), name=f"mqtt:{self.config.bot_id}:publish")
                group.create_task(self._serve_commands(client), name=f"mqtt:{self.config.bot_id}:commands")

    async def _send(self, client: aiomqtt.Client, topic: str, event: Event, qos: int, retain: bool) -> None:
        await client.publish(topic, event.to_json(), qos=qos, retain=retain, timeout=self.config.connect_timeout_s)
        self._stop_if_closed()
        self.stats.delivered += 1

    async def _drain(self, client: aiomqtt.Client) -> None:
        config = self.config
        while True:
            if self._status_dirty and self._last_status is not None:
                status = self._last_status
                await self._send(client, config.topic("status"), status, 1, True)
                if self._last_status is status:
                    self._status_dirty = False
                continue
            if self._heartbeat is not None:
                beat = self._heartbeat
                await self._send(client, config.topic("heartbeat"), beat, 0, False)
                if self._heartbeat is beat:
                    self._heartbeat = None
                continue
            if self._inflight is None and self._queue:
                self._inflight = self._queue.popleft()
            if self._inflight is not None:
                # Kept in _inflight until the broker has it, so a lost connection retries it after reconnecting.
                await self._send(client, config.topic("events"), self._inflight, config.qos_events, False)
                self._inflight = None
                self._drops_since_publish = 0
                if self._metrics is not None:
                    self._metrics.sink_queue_depth(SINK_NAME, len(self._queue))
                continue
            if self._closing:
                offline = self._connection_status("offline", "stopped")
                await self._send(client, config.topic("status"), offline, 1, True)
                self._flushed.set()
                return
            self._wake.clear()
            await self._wake.wait()

    async def _serve_commands(self, client: aiomqtt.Client) -> None:
        cmd_topic = self.config.topic("cmd")
        async for message in client.messages:
            if not message.topic.matches(cmd_topic):
                continue
            self.stats.commands += 1
            payload = message.payload
            if isinstance(payload, bytes | bytearray):
                raw = bytes(payload)
            else:
                raw = b"" if payload is None else str(payload).encode()
            reply = await self.processor.process(raw)
            await client.publish(reply.topic, reply.to_json(), qos=1, timeout=self.config.connect_timeout_s)
            self._stop_if_closed()
