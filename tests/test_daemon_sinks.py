"""The daemon's sinks, end to end: a paper bot trading against the local exchange publishes to a real Mosquitto,
answers commands from it, and is scraped by a real Prometheus.

Candles are released one at a time by the test (the feed's clock only moves when the test allows it), and every
candle ends with an `equity` event: the test synchronises on those messages, never on sleeps. The daemon is
stopped with a real SIGTERM.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import aiomqtt
import pytest

from adapters.ccxt.adapter import CcxtAdapter
from adapters.data.ohlcv import load_ohlcv
from adapters.data.sample import sample_path
from adapters.types import utc_from_ms
from bot.daemon import run_daemon
from bot.engine.core import Engine
from bot.ledger.store import Ledger
from bot.model.policy import OnnxPolicy
from tests.support.binance_server import BinanceServer, daemon_ccxt_config
from tests.support.mosquitto import MosquittoBroker, mosquitto, mosquitto_factory  # noqa: F401 - fixtures
from tests.support.policy_model import export_policy, fitted_spec, random_weights
from tests.support.prometheus import PrometheusServer, sample_value
from tests.test_engine import T0, paper_config

BOT_ID = "sinks-test"
NAMESPACE = "ai-trading"
PREFIX = f"{NAMESPACE}/{BOT_ID}"
WAIT_S = 15.0
"""Upper bound of every message wait; they normally finish in milliseconds."""
MAX_CANDLES_PER_PHASE = 80

pytestmark = pytest.mark.integration


@dataclass(frozen=True)
class Models:
    live: Path
    """The model the bot starts with."""
    retrained: Path
    """Same feature spec, other weights: reload-model accepts it."""
    other_spec: Path
    """A different window: reload-model refuses it."""


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> Models:
    frame = load_ohlcv(sample_path("BTC/USDT-1h"))
    spec = fitted_spec(frame, train_rows=40_000, window=16)
    root = tmp_path_factory.mktemp("sink-models")
    live = export_policy(root / "live", spec, random_weights(spec, 2, seed=0), (0.0, 1.0))
    retrained = export_policy(root / "retrained", spec, random_weights(spec, 2, seed=1), (0.0, 1.0))
    narrow = fitted_spec(frame, train_rows=40_000, window=8)
    other = export_policy(root / "other", narrow, random_weights(narrow, 2, seed=0), (0.0, 1.0))
    return Models(live, retrained, other)


class GatedClock:
    """Market time that moves only when the feed sleeps, and the feed sleeps only when the test releases a candle."""

    def __init__(self, now_ms: int) -> None:
        self.now_ms = now_ms
        self._permits = asyncio.Semaphore(0)

    def __call__(self) -> int:
        return self.now_ms

    def now(self) -> Any:
        return utc_from_ms(self.now_ms)

    async def sleep(self, seconds: float) -> None:
        await self._permits.acquire()
        self.now_ms += int(seconds * 1000)

    def release(self) -> None:
        self._permits.release()


@dataclass(frozen=True)
class Message:
    topic: str
    """The part after <namespace>/<bot_id>/: events, status, heartbeat or reply."""
    body: dict[str, Any]


class Inbox:
    """Everything the operator's client receives under <namespace>/<bot_id>/, in arrival order."""

    def __init__(self, client: aiomqtt.Client) -> None:
        self.client = client
        self.all: list[Message] = []
        self._queue: asyncio.Queue[Message] = asyncio.Queue()

    async def pump(self) -> None:
        async for message in self.client.messages:
            topic = str(message.topic)[len(PREFIX) + 1 :]
            if topic == "cmd":
                continue
            assert isinstance(message.payload, bytes | bytearray)
            item = Message(topic, json.loads(message.payload))
            self.all.append(item)
            self._queue.put_nowait(item)

    async def expect(self, predicate: Callable[[Message], bool]) -> Message:
        """Return the next message satisfying `predicate` (skipping others), failing after WAIT_S."""
        async with asyncio.timeout(WAIT_S):
            while True:
                message = await self._queue.get()
                if predicate(message):
                    return message

    async def command(self, body: dict[str, Any] | bytes) -> dict[str, Any]:
        """Publish a command (QoS 1) and return its reply."""
        payload = body if isinstance(body, bytes) else json.dumps(body).encode()
        await self.client.publish(f"{PREFIX}/cmd", payload, qos=1)
        command_id = None if isinstance(body, bytes) else body["id"]
        reply = await self.expect(lambda m: m.topic == "reply" and m.body.get("id") == command_id)
        return reply.body


async def step(clock: GatedClock, inbox: Inbox) -> list[Message]:
    """Release one candle and return the messages up to its equity event (the engine's last word on a candle)."""
    clock.release()
    got: list[Message] = []
    async with asyncio.timeout(WAIT_S):
        while True:
            message = await inbox.expect(lambda m: True)
            got.append(message)
            if message.topic == "events" and message.body["type"] == "equity":
                return got


def sent_orders(messages: list[Message]) -> list[str]:
    return [
        m.body["client_order_id"]
        for m in messages
        if m.topic == "events" and m.body["type"] == "order" and m.body["status"] == "sent"
    ]


async def trade_until_an_order(clock: GatedClock, inbox: Inbox) -> int:
    """Release candles until the bot sends an order; return how many candles that took."""
    for candles in range(1, MAX_CANDLES_PER_PHASE + 1):
        if sent_orders(await step(clock, inbox)):
            return candles
    raise AssertionError(f"no order in {MAX_CANDLES_PER_PHASE} candles")


@contextlib.asynccontextmanager
async def operator(broker: MosquittoBroker) -> AsyncIterator[Inbox]:
    """An operator's client subscribed to everything of the bot, with its messages pumped into an Inbox."""
    nodelay = [(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)]
    async with aiomqtt.Client(broker.host, broker.port, socket_options=nodelay, timeout=WAIT_S) as client:
        await client.subscribe(f"{PREFIX}/#", qos=1)
        inbox = Inbox(client)
        pump = asyncio.create_task(inbox.pump(), name="operator:pump")
        try:
            yield inbox
        finally:
            pump.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await pump


async def run_bot(server: BinanceServer, clock: GatedClock, cfg: Any, policy: OnnxPolicy) -> Engine:
    ccxt_config = daemon_ccxt_config(server, timeout_ms=2000)
    async with CcxtAdapter(ccxt_config, None, clock_ms=clock, sleep=clock.sleep) as feed:
        return await run_daemon(cfg, policy, feed, clock=clock.now, install_signals=True)


def _metric(prometheus: PrometheusServer, promql: str, expected: float) -> float:
    result = prometheus.wait_for(promql, lambda r: len(r) == 1 and float(r[0]["value"][1]) == pytest.approx(expected))
    return sample_value(result)


async def test_paper_bot_publishes_to_mqtt_obeys_commands_and_is_scraped(
    binance_server: BinanceServer,
    mosquitto: MosquittoBroker,  # noqa: F811 - fixture
    prometheus: PrometheusServer,
    models: Models,
    tmp_path: Path,
) -> None:
    policy = OnnxPolicy.load(models.live)
    clock = GatedClock(T0 + 30 * 60_000)
    binance_server.market_clock_ms = clock
    cfg = paper_config(
        tmp_path,
        models.live,
        [
            f"bot.bot_id={BOT_ID}",
            "bot.heartbeat_interval_s=3600",  # one heartbeat at start; the rest of the run takes seconds
            "mqtt.enabled=true",
            f"mqtt.host={mosquitto.host}",
            f"mqtt.port={mosquitto.port}",
            f"mqtt.namespace={NAMESPACE}",
            "mqtt.reconnect_min_s=0.05",
            "mqtt.reconnect_max_s=0.2",
            "metrics.enabled=true",
            f"metrics.port={prometheus.target_port}",
        ],
    )
    async with operator(mosquitto) as inbox:
        daemon = asyncio.create_task(run_bot(binance_server, clock, cfg, policy), name="daemon")
        try:
            await inbox.expect(lambda m: m.topic == "status" and m.body["state"] == "running")
            await inbox.expect(lambda m: m.topic == "heartbeat" and m.body["seq"] == 1)

            # --- trading: orders flow; a malformed command is refused and changes nothing ---------------------
            await trade_until_an_order(clock, inbox)
            not_json = await inbox.command(b"{pause")
            assert not_json["ok"] is False and not_json["error"]["code"] == "bad_json"
            bad_args = await inbox.command({"id": "bad-1", "cmd": "pause", "args": {"minutes": 5}})
            assert bad_args == {
                "id": "bad-1",
                "ok": False,
                "error": {"code": "bad_args", "message": bad_args["error"]["message"]},
            }
            assert "unknown argument(s) minutes" in bad_args["error"]["message"]
            unknown = await inbox.command({"id": "bad-2", "cmd": "sell-everything"})
            assert unknown["error"]["code"] == "unknown_command"
            status = (await inbox.command({"id": "status-1", "cmd": "status"}))["result"]
            assert status["paused"] is False and status["risk_state"] == "active" and status["state"] == "running"
            await trade_until_an_order(clock, inbox)  # trading unchanged

            # --- pause: acknowledged, and no order while the policy wants to trade -----------------------------
            paused = await inbox.command({"id": "pause-1", "cmd": "pause"})
            assert paused["ok"] is True and paused["result"]["state"] == "paused"
            await inbox.expect(lambda m: m.topic == "status" and m.body["state"] == "paused")
            during_pause: list[Message] = []
            for _ in range(30):
                during_pause += await step(clock, inbox)
            assert sent_orders(during_pause) == []
            status = (await inbox.command({"id": "status-2", "cmd": "status"}))["result"]
            assert status["paused"] is True and status["status"].startswith("running paused")
            assert status["orders_withheld"] > 0, "the pause must have held back orders the policy wanted"

            # --- reload-model: a different feature spec is refused, the same spec is taken ---------------------
            refused = await inbox.command(
                {"id": "reload-1", "cmd": "reload-model", "args": {"path": str(models.other_spec)}}
            )
            assert refused["ok"] is False and refused["error"]["code"] == "handler_error"
            assert "feature spec window differs" in refused["error"]["message"]
            status = (await inbox.command({"id": "status-3", "cmd": "status"}))["result"]
            assert status["model"]["sha256"] == policy.sha256
            retrained = OnnxPolicy.load(models.retrained)
            reloaded = await inbox.command(
                {"id": "reload-2", "cmd": "reload-model", "args": {"path": str(models.retrained)}}
            )
            assert reloaded["ok"] is True
            assert reloaded["result"]["sha256"] == retrained.sha256 != policy.sha256
            alert = await inbox.expect(lambda m: m.topic == "events" and m.body["type"] == "alert")
            assert alert.body["code"] == "model_reloaded"

            # --- resume: acknowledged, and orders flow again -------------------------------------------------
            resumed = await inbox.command({"id": "resume-1", "cmd": "resume"})
            assert resumed["ok"] is True and resumed["result"]["was_paused"] is True
            assert resumed["result"]["risk_state"] == "active"
            await inbox.expect(lambda m: m.topic == "status" and m.body["state"] == "running")
            await trade_until_an_order(clock, inbox)
            last_equity = [m.body for m in inbox.all if m.topic == "events" and m.body["type"] == "equity"][-1]

            # --- Prometheus scrapes the running daemon ---------------------------------------------------------
            sent = sent_orders(inbox.all)
            selector = f'bot_id="{BOT_ID}",mode="paper"'
            orders = await asyncio.to_thread(
                _metric, prometheus, f'sum(aitrading_orders_total{{{selector},status="sent"}})', len(sent)
            )
            assert orders == len(sent) >= 3
            equity = await asyncio.to_thread(
                _metric, prometheus, f"aitrading_equity{{{selector}}}", float(last_equity["equity"])
            )
            assert equity == pytest.approx(float(Decimal(last_equity["equity"])))
            await asyncio.to_thread(_metric, prometheus, f'aitrading_risk_state{{{selector},state="active"}}', 1.0)
            await asyncio.to_thread(_metric, prometheus, f"aitrading_heartbeats_total{{{selector}}}", 1.0)

            # --- SIGTERM: a clean stop, the bot marked offline, the exporter closed ----------------------------
            os.kill(os.getpid(), signal.SIGTERM)
            async with asyncio.timeout(WAIT_S):
                engine = await daemon
        finally:
            if not daemon.done():
                daemon.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await daemon
        await inbox.expect(lambda m: m.topic == "status" and m.body["state"] == "stopping")
        offline = await inbox.expect(lambda m: m.topic == "status" and m.body["state"] == "offline")
        assert offline.body["message"] == "stopped"

    assert engine.state == "stopped"
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", prometheus.target_port), timeout=1.0).close()

    # Events arrived on their topics, in the order the bot made them: the ledger's orders in submission order,
    # each order's states along its state machine, fills after their order was sent, equity marks in time order.
    events = [m.body for m in inbox.all if m.topic == "events"]
    assert {m.topic for m in inbox.all} == {"events", "status", "heartbeat", "reply"}
    assert not [e for e in events if e["type"] in ("status", "heartbeat")]
    with Ledger(f"sqlite:///{tmp_path}/paper.db") as ledger:
        ledger_orders = ledger.orders()
        ledger_fills = ledger.fills()
    assert [o.client_order_id for o in ledger_orders] == sent_orders(inbox.all)
    rank = {"sent": 0, "open": 1, "partially_filled": 2, "filled": 3, "cancelled": 3, "rejected": 3}
    for order in ledger_orders:
        states = [e["status"] for e in events if e["type"] == "order" and e["client_order_id"] == order.client_order_id]
        assert states[0] == "sent" and states[-1] == order.status.value
        assert [rank[s] for s in states] == sorted(rank[s] for s in states), states
    position = {e["client_order_id"]: i for i, e in enumerate(events) if e["type"] == "order" and e["status"] == "sent"}
    fills = [(i, e) for i, e in enumerate(events) if e["type"] == "fill"]
    assert [e["trade_id"] for _, e in fills] == [f.trade_id for f in ledger_fills]
    assert all(position[e["client_order_id"]] < i for i, e in fills)
    marks = [e["ts"] for e in events if e["type"] == "equity"]
    assert marks == sorted(marks)
