"""The MQTT bridge (bot.sinks.mqtt) against a real Mosquitto broker: events, retained status, will, commands, ACL."""

# ruff: noqa: F811 - the Mosquitto fixtures are imported from tests.support and shadowed by test parameters

from __future__ import annotations

import asyncio
import inspect
import json
import re
import socket
import sys
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import aiomqtt
import pytest
from structlog.testing import capture_logs

from adapters.data.ohlcv import load_ohlcv
from adapters.data.sample import sample_path
from adapters.types import OrderStatus, OrderType, Side
from bot.commands import make_command
from bot.events import (
    AlertEvent,
    EquityEvent,
    Event,
    FillEvent,
    OrderEvent,
    RiskRefusalEvent,
    StatusEvent,
    TradeClosedEvent,
    from_json,
)
from bot.sinks.mqtt import (
    COMMAND_SECRET_ENV,
    PASSWORD_ENV,
    MqttBridge,
    MqttConfig,
    MqttConfigError,
    MqttTlsConfig,
    resolve_command_secret,
    resolve_password,
    tls_context,
)
from tests.support.mosquitto import (  # noqa: F401 - fixtures
    BrokerFactory,
    MosquittoBroker,
    make_tls_files,
    mosquitto,
    mosquitto_factory,
    write_password_file,
)
from tests.test_commands import RecordingHandler

REPO = Path(__file__).resolve().parents[1]
DEPLOY = REPO / "deploy" / "mosquitto"
NODELAY = [(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)]
WAIT_S = 10.0
"""Upper bound for event-based waits; they normally finish in milliseconds."""

integration = pytest.mark.integration


def bridge_config(broker: MosquittoBroker, bot_id: str, **changes: Any) -> MqttConfig:
    values: dict[str, Any] = {
        "bot_id": bot_id,
        "host": broker.host,
        "port": broker.port,
        "reconnect_min_s": 0.05,
        "reconnect_max_s": 0.2,
        "heartbeat_interval_s": 0.0,
        "keepalive_s": 5,
    }
    values.update(changes)
    return MqttConfig(**values)


@asynccontextmanager
async def watcher(broker: MosquittoBroker, *topics: str, **client_args: Any) -> AsyncIterator[aiomqtt.Client]:
    """Connect a test client (an operator's tool) and subscribe to `topics` before yielding it."""
    async with aiomqtt.Client(
        broker.host, broker.port, socket_options=NODELAY, timeout=WAIT_S, **client_args
    ) as client:
        for topic in topics:
            await client.subscribe(topic, qos=1)
        yield client


async def next_message(client: aiomqtt.Client, topic: str | None = None) -> aiomqtt.Message:
    """Return the next message (on `topic`), failing after WAIT_S."""
    async with asyncio.timeout(WAIT_S):
        async for message in client.messages:
            if topic is None or message.topic.matches(topic):
                return message
    raise AssertionError("message stream ended")  # pragma: no cover


async def next_json(client: aiomqtt.Client, topic: str | None = None) -> dict[str, Any]:
    message = await next_message(client, topic)
    assert isinstance(message.payload, bytes | bytearray)
    data: dict[str, Any] = json.loads(message.payload)
    return data


def status_of(message: aiomqtt.Message) -> StatusEvent:
    """Parse a status-topic message into its StatusEvent."""
    event = from_json(bytes(message.payload))
    assert isinstance(event, StatusEvent), event
    return event


async def wait_until(condition: Callable[[], bool]) -> None:
    """Poll `condition` every 10 ms until it holds, failing after WAIT_S."""
    async with asyncio.timeout(WAIT_S):
        while not condition():
            await asyncio.sleep(0.01)  # polling interval, not synchronisation


def sample_events(bot_id: str) -> list[Event]:
    """Return one event of each kind the events topic carries, priced from real BTC/USDT candles."""
    frame = load_ohlcv(sample_path("BTC/USDT-1h")).tail(3)
    closes = [Decimal(repr(float(c))) for c in frame["close"]]
    ts = frame.index[-1].to_pydatetime()
    amount = Decimal("0.0105")
    fee = (amount * closes[1] * Decimal("0.001")).quantize(Decimal("0.00000001"))
    pnl = amount * (closes[2] - closes[1]) - 2 * fee
    return [
        OrderEvent(
            ts=ts,
            bot_id=bot_id,
            client_order_id="ait-1",
            symbol="BTC/USDT",
            side=Side.BUY,
            order_type=OrderType.MARKET,
            amount=amount,
            status=OrderStatus.FILLED,
            filled=amount,
            average_price=closes[1],
            venue_order_id="v-1",
            model_sha="ab" * 32,
        ),
        FillEvent(
            ts=ts,
            bot_id=bot_id,
            trade_id="t-1",
            client_order_id="ait-1",
            symbol="BTC/USDT",
            side=Side.BUY,
            amount=amount,
            price=closes[1],
            fee=fee,
            fee_currency="USDT",
            requested_price=closes[0],
            slippage_bps=1.5,
        ),
        TradeClosedEvent(
            ts=ts + timedelta(hours=1),
            bot_id=bot_id,
            symbol="BTC/USDT",
            side=Side.BUY,
            qty=amount,
            entry_price=closes[1],
            exit_price=closes[2],
            realized_pnl=pnl,
            fees=2 * fee,
            duration_seconds=3600.0,
            model_sha="ab" * 32,
            run_id="run-1",
        ),
        EquityEvent(
            ts=ts,
            bot_id=bot_id,
            equity=Decimal("10000") + pnl,
            cash=Decimal("10000") + pnl,
            positions_value=Decimal(0),
            realized_pnl=pnl,
            unrealized_pnl=Decimal(0),
            drawdown=0.01,
        ),
        AlertEvent(ts=ts, bot_id=bot_id, level="warning", code="data_stale", message="no candle for 2 bars"),
        RiskRefusalEvent(
            ts=ts,
            bot_id=bot_id,
            symbol="BTC/USDT",
            reason="max_position",
            message="too big",
            risk_state="active",
            requested_amount=amount,
        ),
    ]


def many_events(bot_id: str, count: int) -> list[Event]:
    start = datetime(2024, 1, 1, tzinfo=UTC)
    return [
        AlertEvent(ts=start + timedelta(seconds=i), bot_id=bot_id, level="info", code=f"n{i}", message=str(i))
        for i in range(count)
    ]


class RecordingMetrics:
    """Collects what the bridge reports to the sink metrics (monitoring.metrics.BotMetrics has its own tests)."""

    def __init__(self) -> None:
        self.depth: dict[str, int] = {}
        self.dropped: dict[str, int] = {}
        self.connected: dict[str, bool] = {}
        self.connect_failures: dict[str, int] = {}

    def sink_queue_depth(self, sink: str, depth: int) -> None:
        self.depth[sink] = depth

    def sink_dropped(self, sink: str, count: int = 1) -> None:
        self.dropped[sink] = self.dropped.get(sink, 0) + count

    def sink_connected(self, sink: str, connected: bool) -> None:
        self.connected[sink] = connected

    def sink_connect_failed(self, sink: str) -> None:
        self.connect_failures[sink] = self.connect_failures.get(sink, 0) + 1


# ----------------------------------------------------------------------------------------- events and status


@integration
async def test_events_are_published_in_order_and_parse_back(mosquitto: MosquittoBroker) -> None:
    config = bridge_config(mosquitto, "bot-events")
    events = sample_events("bot-events") * 5
    async with watcher(mosquitto, config.topic("events")) as sub, MqttBridge(config, RecordingHandler()) as bridge:
        for event in events[:-1]:
            assert bridge.submit(event) is True
        bridge.publish(events[-1])  # the engine's EventSink method
        received = [from_json(bytes((await next_message(sub)).payload)) for _ in events]
    assert received == events
    assert bridge.stats.dropped == 0
    assert bridge.stats.delivered >= len(events)


@integration
async def test_status_is_retained_online_then_engine_state_then_offline_on_clean_close(
    mosquitto: MosquittoBroker,
) -> None:
    config = bridge_config(mosquitto, "bot-status")
    status_topic = config.topic("status")
    async with MqttBridge(config, RecordingHandler()) as bridge:
        await bridge.wait_connected(WAIT_S)
        async with watcher(mosquitto, status_topic) as sub:
            online = await next_message(sub)
            assert online.retain
            assert status_of(online).state == "online"
            paused = StatusEvent(
                ts=datetime.now(UTC),
                bot_id="bot-status",
                state="paused",
                risk_state="halted",
                mode="paper",
                message="paused by operator",
            )
            assert bridge.submit(paused)
            assert from_json(bytes((await next_message(sub)).payload)) == paused
    async with watcher(mosquitto, status_topic) as late:  # a late subscriber sees the retained final status
        final = from_json(bytes((await next_message(late)).payload))
    assert isinstance(final, StatusEvent)
    assert (final.state, final.message, final.risk_state, final.mode) == ("offline", "stopped", "halted", "paper")


@integration
async def test_heartbeats_are_published_on_their_interval(mosquitto: MosquittoBroker) -> None:
    config = bridge_config(mosquitto, "bot-beat", heartbeat_interval_s=0.02)
    async with watcher(mosquitto, config.topic("heartbeat")) as sub, MqttBridge(config, RecordingHandler()):
        beats = [from_json(bytes((await next_message(sub)).payload)) for _ in range(3)]
    seqs = [b.seq for b in beats]  # type: ignore[attr-defined]
    assert all(b.type == "heartbeat" and b.bot_id == "bot-beat" for b in beats)
    assert seqs == sorted(seqs) and len(set(seqs)) == 3


_BRIDGE_PROCESS = """
import asyncio, sys
from bot.sinks.mqtt import MqttBridge, MqttConfig

async def main():
    config = MqttConfig(bot_id=sys.argv[3], host=sys.argv[1], port=int(sys.argv[2]), heartbeat_interval_s=0)
    async with MqttBridge(config, object()) as bridge:
        await bridge.wait_connected(10)
        print("connected", flush=True)
        await asyncio.Event().wait()

asyncio.run(main())
"""


@integration
async def test_last_will_marks_the_bot_offline_when_its_process_dies(mosquitto: MosquittoBroker) -> None:
    status_topic = "ai-trading/bot-will/status"
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        _BRIDGE_PROCESS,
        mosquitto.host,
        str(mosquitto.port),
        "bot-will",
        cwd=REPO,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
    )
    try:
        async with asyncio.timeout(WAIT_S * 2):  # the child's unconfigured structlog also writes to stdout
            while (line := await process.stdout.readline()) and line.strip() != b"connected":  # type: ignore[union-attr]
                pass
        assert line.strip() == b"connected"
        async with watcher(mosquitto, status_topic) as sub:
            online = from_json(bytes((await next_message(sub)).payload))
            assert online.state == "online"  # type: ignore[attr-defined]
            process.kill()  # SIGKILL: no DISCONNECT is sent, the kernel just closes the socket
            will = await next_message(sub)
        offline = from_json(bytes(will.payload))
        assert isinstance(offline, StatusEvent)
        assert (offline.state, offline.message, offline.bot_id) == ("offline", "connection lost", "bot-will")
        async with watcher(mosquitto, status_topic) as late:
            retained = await next_message(late)
        assert retained.retain and from_json(bytes(retained.payload)) == offline
    finally:
        if process.returncode is None:
            process.kill()
        await process.wait()


# ----------------------------------------------------------------------------------------- commands


@integration
async def test_every_command_reaches_the_handler_and_gets_a_reply(mosquitto: MosquittoBroker) -> None:
    config = bridge_config(mosquitto, "bot-cmd")
    handler = RecordingHandler()
    commands = [
        make_command("c-pause", "pause"),
        make_command("c-resume", "resume"),
        make_command("c-flatten", "flatten", {"symbol": "BTC/USDT"}),
        make_command("c-status", "status", reply_to=config.topic("reply") + "/ops"),
        make_command("c-reload", "reload-model", {"path": "models/ppo.onnx"}),
    ]
    async with (
        MqttBridge(config, handler) as bridge,
        watcher(mosquitto, config.topic("reply"), config.topic("reply") + "/#") as ops,
    ):
        await bridge.wait_connected(WAIT_S)
        replies = []
        for command in commands:
            await ops.publish(config.topic("cmd"), json.dumps(command), qos=1)
            message = await next_message(ops)
            replies.append((str(message.topic), json.loads(message.payload)))
    assert handler.calls == [
        ("pause", None),
        ("resume", None),
        ("flatten", "BTC/USDT"),
        ("status", None),
        ("reload_model", "models/ppo.onnx"),
    ]
    assert [r[1]["id"] for r in replies] == [c["id"] for c in commands]
    assert all(r[1]["ok"] is True for r in replies)
    assert replies[3] == (
        config.topic("reply") + "/ops",
        {"id": "c-status", "ok": True, "result": {"state": "running", "equity": "1000.5"}},
    )
    assert replies[0][0] == config.topic("reply")


@integration
async def test_malformed_commands_get_error_replies_and_the_handler_is_not_called(mosquitto: MosquittoBroker) -> None:
    config = bridge_config(mosquitto, "bot-bad")
    handler = RecordingHandler()
    cases = [
        (b"{oops", "bad_json", None),
        (json.dumps({"cmd": "pause"}).encode(), "invalid_request", None),
        (json.dumps({"id": "u1", "cmd": "liquidate-everything"}).encode(), "unknown_command", "u1"),
        (json.dumps({"id": "a1", "cmd": "flatten", "args": {"symbol": 42}}).encode(), "bad_args", "a1"),
        (json.dumps({"id": "a2", "cmd": "pause", "args": {"now": True}}).encode(), "bad_args", "a2"),
        (
            json.dumps({"id": "r1", "cmd": "pause", "reply_to": "ai-trading/other/reply"}).encode(),
            "invalid_request",
            "r1",
        ),
    ]
    async with MqttBridge(config, handler) as bridge, watcher(mosquitto, config.topic("reply")) as ops:
        await bridge.wait_connected(WAIT_S)
        for payload, code, reply_id in cases:
            await ops.publish(config.topic("cmd"), payload, qos=1)
            reply = await next_json(ops)
            assert reply["ok"] is False
            assert (reply["id"], reply["error"]["code"]) == (reply_id, code), reply
        assert handler.calls == []
        assert bridge.processor.refused == len(cases)


@integration
async def test_signed_commands_run_and_bad_signatures_are_refused(mosquitto: MosquittoBroker) -> None:
    secret = "s3cret-for-commands"
    config = bridge_config(mosquitto, "bot-hmac", command_auth="hmac")
    handler = RecordingHandler()
    bridge = MqttBridge(config, handler, env={COMMAND_SECRET_ENV: secret})
    async with bridge, watcher(mosquitto, config.topic("reply")) as ops:
        await bridge.wait_connected(WAIT_S)
        for body in (
            make_command("h-1", "pause"),
            make_command("h-2", "pause", secret=b"guessed"),
            {
                **make_command("h-3", "flatten", {"symbol": "BTC/USDT"}, secret=secret.encode()),
                "args": {"symbol": "ETH/USDT"},
            },
        ):
            await ops.publish(config.topic("cmd"), json.dumps(body), qos=1)
            reply = await next_json(ops)
            assert (reply["id"], reply["error"]["code"]) == (body["id"], "unauthorized")
        assert handler.calls == []
        await ops.publish(config.topic("cmd"), json.dumps(make_command("h-4", "pause", secret=secret.encode())), qos=1)
        assert (await next_json(ops)) == {"id": "h-4", "ok": True, "result": {"state": "paused"}}
    assert handler.calls == [("pause", None)]


@integration
async def test_duplicate_command_id_executes_once(mosquitto: MosquittoBroker) -> None:
    config = bridge_config(mosquitto, "bot-dup")
    handler = RecordingHandler()
    body = json.dumps(make_command("dup-1", "flatten", {"symbol": "BTC/USDT"}))
    async with MqttBridge(config, handler) as bridge, watcher(mosquitto, config.topic("reply")) as ops:
        await bridge.wait_connected(WAIT_S)
        await ops.publish(config.topic("cmd"), body, qos=1)
        await ops.publish(config.topic("cmd"), body, qos=1)  # what a QoS 1 redelivery looks like to the bot
        first, second = await next_json(ops), await next_json(ops)
    assert first == second == {"id": "dup-1", "ok": True, "result": {"closed": ["BTC/USDT"]}}
    assert handler.calls == [("flatten", "BTC/USDT")]
    assert bridge.stats.commands == 2


@integration
async def test_close_finishes_even_when_a_command_swallows_its_cancellation(mosquitto: MosquittoBroker) -> None:
    """asyncio.wait_for inside aiomqtt can lose a cancellation (Python < 3.12); close() must still finish."""
    started = asyncio.Event()

    class Swallower(RecordingHandler):
        async def flatten(self, symbol: str | None) -> dict[str, Any] | None:
            started.set()
            try:
                await asyncio.Event().wait()
            except asyncio.CancelledError:  # deliberately swallowed, as wait_for may do
                return {"closed": []}
            return None  # pragma: no cover

    config = bridge_config(mosquitto, "bot-swallow", close_timeout_s=0.5)
    bridge = MqttBridge(config, Swallower())
    async with watcher(mosquitto, config.topic("reply")) as ops:
        await bridge.__aenter__()
        await bridge.wait_connected(WAIT_S)
        await ops.publish(config.topic("cmd"), json.dumps(make_command("slow-1", "flatten")), qos=1)
        async with asyncio.timeout(WAIT_S):
            await started.wait()
            await bridge.close()
    assert bridge._task is None
    assert not bridge.is_connected


# ----------------------------------------------------------------------------------------- outages


@integration
async def test_broker_outage_drops_oldest_without_blocking_then_recovers(mosquitto_factory: BrokerFactory) -> None:
    broker = mosquitto_factory(persistence=True)
    config = bridge_config(broker, "bot-outage", queue_size=5, qos_events=1)
    events_topic = config.topic("events")
    metrics = RecordingMetrics()
    # A persistent session (clean_session=False) with a QoS 1 subscription: the broker keeps it across its own
    # restart (persistence) and queues what the bot publishes while this watcher is offline.
    watch = {"identifier": "outage-watcher", "clean_session": False}
    async with watcher(broker, events_topic, **watch):
        pass
    assert not inspect.iscoroutinefunction(MqttBridge.submit)  # the trading loop cannot await the network
    events = many_events("bot-outage", 20)
    async with MqttBridge(config, RecordingHandler(), metrics=metrics) as bridge:
        await bridge.wait_connected(WAIT_S)
        broker.stop()
        await bridge.wait_disconnected(WAIT_S)
        accepted = [bridge.submit(event) for event in events]
        assert accepted == [True] * 5 + [False] * 15
        assert bridge.stats.dropped == 15 and metrics.dropped == {"mqtt": 15}
        assert bridge.queue_depth == 5 and metrics.depth == {"mqtt": 5}
        await asyncio.sleep(0)  # let the bridge run while the broker is still down: nothing may be lost
        assert bridge.queue_depth == 5
        broker.start()
        await bridge.wait_connected(WAIT_S)
        async with watcher(broker, **watch) as sub:  # session restored: no new subscription needed
            received = [from_json(bytes((await next_message(sub, events_topic)).payload)) for _ in range(5)]
        assert bridge.stats.connects == 2
    assert received == events[-5:]  # the oldest were dropped, the newest delivered in order
    assert metrics.depth == {"mqtt": 0}


@integration
async def test_bridge_starts_while_the_broker_is_down(mosquitto_factory: BrokerFactory) -> None:
    broker = mosquitto_factory(persistence=True)
    config = bridge_config(broker, "bot-late")
    watch = {"identifier": "late-watcher", "clean_session": False}
    async with watcher(broker, config.topic("events"), **watch):
        pass  # a persistent QoS 1 subscription, so the watcher cannot miss what the bot sends on reconnecting
    broker.stop()
    event = many_events("bot-late", 1)[0]
    metrics = RecordingMetrics()
    with capture_logs() as logs:
        async with MqttBridge(config, RecordingHandler(), metrics=metrics) as bridge:  # entering does not wait
            assert not bridge.is_connected
            assert bridge.submit(event)
            await wait_until(lambda: bridge.stats.failures >= 3)
            assert metrics.connected == {"mqtt": False}
            broker.start()
            await bridge.wait_connected(WAIT_S)
            failures = bridge.stats.failures
            assert metrics.connected == {"mqtt": True} and metrics.connect_failures == {"mqtt": failures}
            async with watcher(broker, **watch) as sub:
                received = from_json(bytes((await next_message(sub)).payload))
    assert received == event
    # Every attempt is counted; the same refusal is logged once, and the reconnection says how many there were.
    refused = [entry for entry in logs if entry["event"] == "mqtt_connection_failed"]
    assert len(refused) == 1 and refused[0]["failures_in_outage"] == 1, refused
    (connected,) = [entry for entry in logs if entry["event"] == "mqtt_connected"]
    assert connected["failures_in_outage"] == failures >= 3 and connected["outage_s"] >= 0, connected


# ----------------------------------------------------------------------------------------- security


def shipped_broker(workdir: Path, users: dict[str, str]) -> MosquittoBroker:
    """Run deploy/mosquitto/mosquitto.conf + acl, with paths and port moved into `workdir`."""
    from tests.support.mosquitto import _current_user, mosquitto_binary, require_mosquitto
    from tests.support.services import free_port

    require_mosquitto()
    binary = mosquitto_binary()
    assert binary is not None
    workdir.mkdir(parents=True, exist_ok=True)
    write_password_file(workdir / "passwd", users)
    port = free_port()
    text = (DEPLOY / "mosquitto.conf").read_text()
    replacements = {
        r"^password_file .*$": f"password_file {workdir / 'passwd'}",
        r"^acl_file .*$": f"acl_file {DEPLOY / 'acl'}",
        r"^persistence_location .*$": f"persistence_location {workdir}/",
        r"^log_dest .*$": "log_dest stderr",
        r"^listener 1883 127\.0\.0\.1$": f"listener {port} 127.0.0.1",
    }
    for pattern, replacement in replacements.items():
        text, count = re.subn(pattern, replacement, text, flags=re.MULTILINE)
        assert count == 1, f"deploy/mosquitto/mosquitto.conf: expected one line matching {pattern}"
    conf = workdir / "mosquitto.conf"
    conf.write_text(f"user {_current_user()}\n" + text)
    broker = MosquittoBroker(binary=binary, port=port, conf_path=conf, log_path=workdir / "mosquitto.log")
    broker.start()
    return broker


@integration
async def test_shipped_acl_lets_only_the_operator_command_a_bot(tmp_path: Path) -> None:
    users = {"bot1": "bot1-pw", "bot2": "bot2-pw", "operator": "op-pw", "viewer": "view-pw", "intruder": "in-pw"}
    broker = shipped_broker(tmp_path / "shipped", users)
    try:
        config = bridge_config(broker, "bot1", username="bot1")
        handler = RecordingHandler()
        bridge = MqttBridge(config, handler, env={PASSWORD_ENV: users["bot1"]})
        cmd_topic = config.topic("cmd")
        async with (
            bridge,
            watcher(
                broker, config.topic("reply"), config.topic("status"), username="operator", password=users["operator"]
            ) as ops,
        ):
            await bridge.wait_connected(WAIT_S)  # the ACL lets the bot publish status/will and read its cmd topic
            assert status_of(await next_message(ops, config.topic("status"))).state == "online"
            for user in ("intruder", "bot2", "viewer", "bot1"):
                async with watcher(broker, username=user, password=users[user]) as other:
                    # QoS 1: the broker has handled (and, by the ACL, discarded) it before it acknowledges.
                    await other.publish(cmd_topic, json.dumps(make_command(f"from-{user}", "flatten")), qos=1)
            await ops.publish(cmd_topic, json.dumps(make_command("from-operator", "status")), qos=1)
            reply = await next_json(ops, config.topic("reply"))
        # Messages reach the bot in the order the broker routed them, so the operator's reply arriving means the
        # earlier, unauthorised publishes were never delivered.
        assert reply["id"] == "from-operator" and reply["ok"] is True
        assert handler.calls == [("status", None)]
        assert bridge.stats.commands == 1
    finally:
        broker.stop()


@integration
async def test_wrong_password_is_refused_and_never_logged(mosquitto_factory: BrokerFactory) -> None:
    broker = mosquitto_factory(users={"bot-pw": "right-password"})
    config = bridge_config(broker, "bot-pw", username="bot-pw")
    with capture_logs() as logs:
        async with MqttBridge(config, RecordingHandler(), env={PASSWORD_ENV: "wrong-password-xyz"}) as bridge:
            assert bridge.submit(many_events("bot-pw", 1)[0])
            await wait_until(lambda: bridge.stats.failures >= 2)
            assert not bridge.is_connected
    assert any(entry["event"] == "mqtt_connection_failed" for entry in logs)
    assert "wrong-password-xyz" not in repr(logs)
    assert "wrong-password-xyz" not in repr(bridge.__dict__.get("config"))


@integration
async def test_tls_connection_verifies_the_broker_certificate(tmp_path: Path, mosquitto_factory: BrokerFactory) -> None:
    try:
        tls = make_tls_files(tmp_path / "tls")
    except FileNotFoundError:
        pytest.skip("openssl CLI not found; cannot make test certificates")
    broker = mosquitto_factory(tls=tls)
    trusted = bridge_config(broker, "bot-tls", tls=MqttTlsConfig(enabled=True, ca_file=str(tls.ca_file)))
    untrusted = bridge_config(broker, "bot-tls2", tls=MqttTlsConfig(enabled=True))  # system CAs only
    event = many_events("bot-tls", 1)[0]
    async with MqttBridge(untrusted, RecordingHandler()) as refused:
        await wait_until(lambda: refused.stats.failures >= 1)
        assert refused.stats.connects == 0
    ctx = tls_context(trusted.tls)
    async with (
        aiomqtt.Client(broker.host, broker.port, tls_context=ctx, timeout=WAIT_S) as sub,
        MqttBridge(trusted, RecordingHandler()) as bridge,
    ):
        await sub.subscribe(trusted.topic("events"), qos=1)
        bridge.submit(event)
        assert from_json(bytes((await next_message(sub)).payload)) == event


# ----------------------------------------------------------------------------------------- configuration


@pytest.mark.parametrize(
    ("changes", "key"),
    [
        ({"bot_id": "bot/1"}, "mqtt.bot_id"),
        ({"bot_id": "+"}, "mqtt.bot_id"),
        ({"namespace": "a//b"}, "mqtt.namespace"),
        ({"namespace": "a/#"}, "mqtt.namespace"),
        ({"port": 0}, "mqtt.port"),
        ({"queue_size": 0}, "mqtt.queue_size"),
        ({"qos_events": 2}, "mqtt.qos_events"),
        ({"reconnect_min_s": 5.0, "reconnect_max_s": 1.0}, "mqtt.reconnect_min_s"),
        ({"heartbeat_interval_s": -1.0}, "mqtt.heartbeat_interval_s"),
        ({"allowed_commands": ("pause", "format-disk")}, "mqtt.allowed_commands"),
        ({"command_auth": "token"}, "mqtt.command_auth"),
        ({"dedup_window_s": 10.0}, "mqtt.dedup_window_s"),
        ({"tls": MqttTlsConfig(enabled=True, key_file="k.pem")}, "mqtt.tls.key_file"),
    ],
)
def test_invalid_config_names_the_key(changes: dict[str, Any], key: str) -> None:
    with pytest.raises(MqttConfigError, match=re.escape(key)):
        MqttConfig(**{"bot_id": "bot1", **changes})


def test_topics_follow_the_contract() -> None:
    config = MqttConfig(bot_id="bot1", namespace="acme/ai-trading")
    assert [config.topic(n) for n in ("events", "status", "heartbeat", "cmd", "reply")] == [
        "acme/ai-trading/bot1/events",
        "acme/ai-trading/bot1/status",
        "acme/ai-trading/bot1/heartbeat",
        "acme/ai-trading/bot1/cmd",
        "acme/ai-trading/bot1/reply",
    ]


def test_password_comes_from_the_environment_or_a_file(tmp_path: Path) -> None:
    secret_file = tmp_path / "mqtt-password"
    secret_file.write_text("from-file\n")
    config = MqttConfig(bot_id="bot1", password_file=str(secret_file))
    assert resolve_password(config, env={}) == "from-file"
    assert resolve_password(config, env={PASSWORD_ENV: "from-env"}) == "from-env"
    assert resolve_password(MqttConfig(bot_id="bot1"), env={}) is None
    assert "from-file" not in repr(config)
    missing = MqttConfig(bot_id="bot1", password_file=str(tmp_path / "absent"))
    with pytest.raises(MqttConfigError, match=r"mqtt\.password_file: cannot read"):
        resolve_password(missing, env={})


def test_hmac_mode_requires_a_secret(tmp_path: Path) -> None:
    config = MqttConfig(bot_id="bot1", command_auth="hmac")
    with pytest.raises(MqttConfigError, match=COMMAND_SECRET_ENV):
        resolve_command_secret(config, env={})
    with pytest.raises(MqttConfigError, match="AI_TRADING_MQTT_COMMAND_SECRET"):
        MqttBridge(config, RecordingHandler(), env={})
    (tmp_path / "cmd-secret").write_text("k3y\n")
    from_file = MqttConfig(bot_id="bot1", command_auth="hmac", command_secret_file=str(tmp_path / "cmd-secret"))
    assert resolve_command_secret(from_file, env={}) == b"k3y"
    assert resolve_command_secret(MqttConfig(bot_id="bot1"), env={COMMAND_SECRET_ENV: "x"}) is None


def test_unreadable_tls_files_are_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(MqttConfigError, match=r"mqtt\.tls: cannot load"):
        tls_context(MqttTlsConfig(enabled=True, ca_file=str(tmp_path / "no-ca.pem")))
    assert tls_context(MqttTlsConfig()) is None


def test_missing_broker_skips_locally_but_fails_under_ci(monkeypatch: pytest.MonkeyPatch) -> None:
    import tests.support.mosquitto as support

    monkeypatch.setattr(support, "mosquitto_binary", lambda: None)
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match="install the Debian package 'mosquitto'"):
        support.require_mosquitto()
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="CI=true"):
        support.require_mosquitto()


async def test_submit_after_close_is_a_counted_drop() -> None:
    bridge = MqttBridge(MqttConfig(bot_id="bot1", port=1), RecordingHandler())
    await bridge.close()
    assert bridge.submit(many_events("bot1", 1)[0]) is False
    assert bridge.stats.dropped == 1
