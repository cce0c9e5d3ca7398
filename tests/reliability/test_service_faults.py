"""Faults of the services around the running daemon: the MQTT broker killed and restarted, W&B stalled.

A live daemon (real ccxt against the local exchange server, a SQLite ledger) trades 1 s candles with a model that
flips its position at every candle, with a real Mosquitto or the real W&B service (offline mode) beside it:

- **broker killed and restarted**: an operator holds a persistent MQTT session (QoS 1, the broker saves it to
  disk); the broker is SIGKILLed while the bot trades and started again on the same port. Trading goes on while
  it is away (the bridge queues), the bot reconnects by itself, the operator receives the `order` event of every
  order sent while the broker was away, a command is answered after the restart, the hundreds of failed
  attempts are counted and logged once per change, not once per attempt;
- **W&B stalled**: the W&B service process (the daemon's child) is frozen with SIGSTOP. Trading goes on (the
  sink's thread blocks, the trading loop never waits for it); SIGTERM while it is still frozen stops the daemon
  within its bounded finish wait, with exit code 0 and one line saying W&B did not finish.

In both, nothing is sent twice and the ledger keeps every venue order and fill. The risk limits are the
harness's (`LIVE_ARGS`, out of the way): the model orders at every candle, which the shipped limits would stop,
and this test is about the services.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiomqtt
import psutil
import pytest

from bot.sinks.wandb_live import WANDB_SERVICE_NAMES
from tests.reliability.harness import (
    ORDER,
    assert_sent_once_and_recorded,
    flipping_model,
    one_second_exchange,
    posted_ids,
    start_daemon,
)
from tests.support.mosquitto import MosquittoBroker, require_mosquitto, start_mosquitto

pytestmark = [pytest.mark.integration, pytest.mark.reliability]

BOT_ID = "faults"
PREFIX = f"ai-trading/{BOT_ID}"
RUN = ("bot.max_candles=100000", "exchange.timeout_ms=2000", "bot.submit_timeout_s=3", f"bot.bot_id={BOT_ID}")
WAIT_S = 90.0
"""Failure guard of each wait on the loaded CI machine; they normally take a few seconds."""


class Operator:
    """An operator's MQTT client with a persistent session: what the broker queued for it arrives on reconnect."""

    def __init__(self, broker: MosquittoBroker) -> None:
        self.broker = broker
        self.messages: list[tuple[str, dict[str, Any]]] = []
        self._arrived = asyncio.Event()

    @contextlib.asynccontextmanager
    async def connected(self, *, subscribe: bool) -> AsyncIterator[aiomqtt.Client]:
        nodelay = [(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)]
        client = aiomqtt.Client(
            self.broker.host,
            self.broker.port,
            identifier="operator",
            clean_session=False,
            socket_options=nodelay,
            timeout=10,
        )
        async with client:
            if subscribe:
                await client.subscribe(f"{PREFIX}/#", qos=1)
            pump = asyncio.create_task(self._pump(client))
            try:
                yield client
            finally:
                pump.cancel()
                with contextlib.suppress(asyncio.CancelledError, aiomqtt.MqttError):
                    await pump

    async def _pump(self, client: aiomqtt.Client) -> None:
        with contextlib.suppress(aiomqtt.MqttError):  # the broker killed under us
            async for message in client.messages:
                assert isinstance(message.payload, bytes | bytearray)
                self.messages.append((str(message.topic)[len(PREFIX) + 1 :], json.loads(message.payload)))
                self._arrived.set()

    async def wait_for(self, topic: str, **fields: Any) -> dict[str, Any]:
        """The first message on `topic` (events, status, reply...) whose body has `fields`."""
        async with asyncio.timeout(WAIT_S):
            while True:
                for got, body in self.messages:
                    if got == topic and all(body.get(k) == v for k, v in fields.items()):
                        return body
                self._arrived.clear()
                await self._arrived.wait()

    def sent_orders(self) -> set[str]:
        """Client order ids of the `order` events with status `sent`."""
        return {
            body["client_order_id"]
            for topic, body in self.messages
            if topic == "events" and body.get("type") == "order" and body.get("status") == "sent"
        }


def durable_broker(workdir: Path) -> MosquittoBroker:
    """Mosquitto that saves its sessions to disk at every change, so a SIGKILL keeps the operator's session."""
    broker = start_mosquitto(workdir, persistence=True)
    conf = broker.conf_path.read_text().replace("autosave_interval 0", "autosave_interval 1")
    broker.conf_path.write_text(conf + "autosave_on_changes true\n")
    broker.restart()
    return broker


async def wait_until_file(path: Path) -> None:
    async with asyncio.timeout(WAIT_S):
        while not path.exists():
            await asyncio.sleep(0.05)  # polling a condition, not synchronisation


async def test_the_broker_killed_and_restarted_loses_no_order_event_and_never_stops_trading(tmp_path: Path) -> None:
    require_mosquitto()
    broker = durable_broker(tmp_path / "broker")
    operator = Operator(broker)
    model = flipping_model(tmp_path / "model")
    mqtt = (
        "mqtt.enabled=true",
        f"mqtt.host={broker.host}",
        f"mqtt.port={broker.port}",
        "mqtt.reconnect_min_s=0.05",
        "mqtt.reconnect_max_s=0.2",
    )
    try:
        async with one_second_exchange() as server:
            async with operator.connected(subscribe=True):
                daemon = await start_daemon(server, model, tmp_path, name="broker", args=(*RUN, *mqtt))
                try:
                    await operator.wait_for("status", state="running")
                    await asyncio.wait_for(server.wait_for_calls("POST", ORDER, 1), timeout=WAIT_S)
                    await operator.wait_for("events", type="order", status="sent")
                    await wait_until_file(tmp_path / "broker" / "mosquitto.db")
                    assert broker.process is not None
                    broker.process.kill()  # SIGKILL: no goodbye to anyone
                    broker.process.wait()
                    killed_at = len(server.calls("POST", ORDER))
                    # The bot trades on with the broker gone.
                    await asyncio.wait_for(server.wait_for_calls("POST", ORDER, killed_at + 3), timeout=WAIT_S)
                    broker.process = None
                    broker.start()
                    after_restart = len(server.calls("POST", ORDER))
                    await asyncio.wait_for(server.wait_for_calls("POST", ORDER, after_restart + 2), timeout=WAIT_S)
                except BaseException:
                    daemon.kill()
                    raise
            # The operator comes back to its saved session and gets what the broker queued for it meanwhile.
            async with operator.connected(subscribe=False) as client:
                try:
                    posted = posted_ids(server.calls("POST", ORDER))
                    # The bot's own bridge reconnected and answers commands again.
                    command = {"id": "after-restart", "cmd": "status"}
                    await client.publish(f"{PREFIX}/cmd", json.dumps(command).encode(), qos=1)
                    reply = await operator.wait_for("reply", id="after-restart")
                    assert reply["ok"] is True, reply
                    # Every order sent after the kill (its event waited in the bot's queue) reached the operator.
                    async with asyncio.timeout(WAIT_S):
                        while not set(posted[killed_at:]) <= operator.sent_orders():
                            operator._arrived.clear()
                            await operator._arrived.wait()
                    code = await daemon.stop()
                    await operator.wait_for("status", state="offline")
                finally:
                    daemon.kill()
            assert code == 0, daemon.log_tail()
            assert_sent_once_and_recorded(server, tmp_path / "live.db", daemon)
    finally:
        broker.stop()
    # Many attempts while the broker was away, one line per distinct error, and the reconnection counts them.
    connected = daemon.events("mqtt_connected")
    assert len(connected) == 2, connected
    failures = connected[1]["failures_in_outage"]
    failed_lines = daemon.events("mqtt_connection_failed")
    assert failures >= 3 and 1 <= len(failed_lines) <= 2 < failures, (failures, failed_lines)


def descendant_pids(pid: int) -> list[int]:
    """The W&B service below `pid` and anything it started, found by name as the daemon finds it; else [].

    A child caught between fork and exec still has the daemon's name, and freezing it would stall no W&B service. In
    one CI run the frozen child was not one the daemon recognised as W&B's, which is the likely cause."""
    try:
        services = [c for c in psutil.Process(pid).children() if c.name().startswith(WANDB_SERVICE_NAMES)]
        return [p.pid for service in services for p in (service, *service.children(recursive=True))]
    except psutil.NoSuchProcess:
        return []


async def test_a_stalled_wandb_never_stops_trading_and_a_sigterm_still_stops_the_daemon(tmp_path: Path) -> None:
    model = flipping_model(tmp_path / "model")
    env = {"WANDB_MODE": "offline", "WANDB_SILENT": "true", "WANDB_DIR": str(tmp_path)}
    frozen: list[int] = []
    async with one_second_exchange() as server:
        daemon = await start_daemon(server, model, tmp_path, name="wandb", args=(*RUN, "wandb.enabled=true"), env=env)
        try:
            await asyncio.wait_for(server.wait_for_calls("POST", ORDER, 1), timeout=WAIT_S)
            async with asyncio.timeout(WAIT_S):
                while not (frozen := descendant_pids(daemon.pid)):
                    await asyncio.sleep(0.05)  # polling a condition, not synchronisation
            for pid in frozen:
                os.kill(pid, signal.SIGSTOP)
            stalled_at = len(server.calls("POST", ORDER))
            await asyncio.wait_for(server.wait_for_calls("POST", ORDER, stalled_at + 4), timeout=WAIT_S)
            stopping = time.monotonic()
            code = await daemon.stop()
            stop_s = time.monotonic() - stopping
        finally:
            daemon.kill()
            for pid in frozen:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        assert code == 0, daemon.log_tail()
        assert daemon.events("wandb_live_finish_timeout"), daemon.log_tail()
        # The frozen W&B service (a direct child of the daemon) was the process the daemon killed to exit.
        (stopped,) = daemon.events("wandb_service_stopped")
        assert stopped["pids"] and set(stopped["pids"]) <= set(frozen), (stopped, frozen)
        assert stop_s < 45, f"the daemon took {stop_s:.1f} s to stop with W&B frozen"
        assert_sent_once_and_recorded(server, tmp_path / "live.db", daemon)
