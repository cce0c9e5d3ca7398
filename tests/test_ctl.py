"""`ai-trading ctl` against a real Mosquitto and the real MQTT bridge (bot/sinks/mqtt.py), a stub command handler."""

# ruff: noqa: F811 - the Mosquitto fixtures are imported from tests.support and shadowed by test parameters

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from bot.ctl import CtlError, Target, send_command
from bot.sinks.mqtt import COMMAND_SECRET_ENV, PASSWORD_ENV, MqttBridge, MqttConfig
from tests.support.mosquitto import (  # noqa: F401 - fixtures
    BrokerFactory,
    MosquittoBroker,
    mosquitto,
    mosquitto_factory,
)

REPO = Path(__file__).resolve().parents[1]
WAIT_S = 10.0

pytestmark = pytest.mark.integration


class StubHandler:
    """Answers like an engine would and records what it was asked."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str | None]] = []

    async def pause(self) -> Mapping[str, Any]:
        self.calls.append(("pause", None))
        return {"state": "paused"}

    async def resume(self) -> Mapping[str, Any]:
        self.calls.append(("resume", None))
        return {"state": "running"}

    async def flatten(self, symbol: str | None) -> Mapping[str, Any]:
        self.calls.append(("flatten", symbol))
        return {"flattened": [symbol] if symbol else ["BTC/USDT", "ETH/USDT"]}

    async def status(self) -> Mapping[str, Any]:
        self.calls.append(("status", None))
        return {"state": "running", "equity": "1000.5"}

    async def reload_model(self, path: str | None) -> Mapping[str, Any]:
        self.calls.append(("reload_model", path))
        if path == "missing.onnx":
            raise FileNotFoundError("missing.onnx")
        return {"model": path or "models/best_model.onnx"}

    async def promote(self, model: str) -> Mapping[str, Any]:
        self.calls.append(("promote", model))
        if model != "shadow-a":
            raise ValueError(f"no shadow model named {model!r} is running (shadows: shadow-a)")
        return {"model": model, "position": "kept"}


def bridge_config(broker: MosquittoBroker, bot_id: str, **changes: Any) -> MqttConfig:
    values: dict[str, Any] = {
        "bot_id": bot_id,
        "host": broker.host,
        "port": broker.port,
        "reconnect_min_s": 0.05,
        "reconnect_max_s": 0.2,
        "heartbeat_interval_s": 0.0,
    }
    values.update(changes)
    return MqttConfig(**values)


async def run_ctl(*args: str, env: Mapping[str, str] | None = None) -> tuple[int, str, str]:
    """Run `python -m bot.cli ctl ARGS` (the console script's dispatcher) and return (rc, stdout, stderr)."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "bot.cli",
        "ctl",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(REPO), **(env or {})},
    )
    async with asyncio.timeout(60):
        out, err = await process.communicate()
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


async def test_ctl_commands_reach_the_bot_and_print_its_replies(mosquitto: MosquittoBroker) -> None:
    config = bridge_config(mosquitto, "bot-ctl")
    handler = StubHandler()
    broker = ["--host", mosquitto.host, "--port", str(mosquitto.port), "--bot-id", "bot-ctl"]
    async with MqttBridge(config, handler) as bridge:
        await bridge.wait_connected(WAIT_S)
        rc, out, err = await run_ctl(*broker, "status")
        assert (rc, err) == (0, ""), err
        reply = json.loads(out)
        assert reply["ok"] is True and reply["result"] == {"state": "running", "equity": "1000.5"}
        assert reply["id"].startswith("ctl-")

        # The same path in process, for the rest (each subprocess costs an interpreter start).
        target = Target(bot_id="bot-ctl", host=mosquitto.host, port=mosquitto.port)
        assert (await send_command(target, "pause"))["result"] == {"state": "paused"}
        assert (await send_command(target, "resume"))["result"] == {"state": "running"}
        flat = await send_command(target, "flatten", {"symbol": "BTC/USDT"})
        assert flat["result"] == {"flattened": ["BTC/USDT"]}
        reload = await send_command(target, "reload-model", {"path": "models/b.onnx"})
        assert reload["result"] == {"model": "models/b.onnx"}
        failed = await send_command(target, "reload-model", {"path": "missing.onnx"})
        assert failed["ok"] is False and failed["error"]["code"] == "handler_error"

        rc, out, err = await run_ctl(*broker, "promote", "shadow-a")
        assert (rc, err) == (0, ""), err
        assert json.loads(out)["result"] == {"model": "shadow-a", "position": "kept"}
        # A refusal (no such shadow) is the bot's error reply: ctl prints it and exits 1 with one line.
        rc, out, err = await run_ctl(*broker, "promote", "shadow-z")
        assert rc == 1 and json.loads(out)["error"]["code"] == "handler_error"
        assert err.count("\n") == 1 and "no shadow model named 'shadow-z'" in err

        rc, out, err = await run_ctl(*broker, "flatten")
        assert rc == 0 and json.loads(out)["result"] == {"flattened": ["BTC/USDT", "ETH/USDT"]}
    assert handler.calls == [
        ("status", None),
        ("pause", None),
        ("resume", None),
        ("flatten", "BTC/USDT"),
        ("reload_model", "models/b.onnx"),
        ("reload_model", "missing.onnx"),
        ("promote", "shadow-a"),
        ("promote", "shadow-z"),
        ("flatten", None),
    ]


async def test_no_reply_times_out_with_one_line(mosquitto: MosquittoBroker) -> None:
    rc, out, err = await run_ctl(
        "--host", mosquitto.host, "--port", str(mosquitto.port), "--bot-id", "nobody", "--timeout", "0.5", "status"
    )
    assert rc == 1 and out == ""
    assert err.count("\n") == 1 and "no reply from bot 'nobody' to status within 0.5 s" in err
    target = Target(bot_id="nobody", host=mosquitto.host, port=mosquitto.port)
    with pytest.raises(CtlError, match="no reply"):
        await send_command(target, "pause", timeout_s=0.3)


async def test_unreachable_broker_and_bad_usage_are_one_line_errors(mosquitto: MosquittoBroker) -> None:
    port = mosquitto.port
    mosquitto.stop()
    rc, out, err = await run_ctl("--port", str(port), "--timeout", "2", "status")
    assert rc == 1 and out == "" and err.count("\n") == 1
    assert f"127.0.0.1:{port}" in err and "Traceback" not in err
    rc, _, err = await run_ctl("--port", "http", "status")
    assert rc == 2 and err == "ai-trading ctl: --port must be a TCP port (1-65535), was 'http'\n"
    rc, _, err = await run_ctl("explode")
    assert rc == 2 and "invalid choice" in err


async def test_signed_commands_and_broker_credentials_come_from_the_environment(
    tmp_path: Path, mosquitto_factory: BrokerFactory
) -> None:
    # The shipped ACL: only the operator account may command, and it may read the bot's reply topics.
    broker = mosquitto_factory(
        users={"operator": "op-pass", "bot-signed": "bot-pass"}, acl_file=REPO / "deploy" / "mosquitto" / "acl"
    )
    config = bridge_config(broker, "bot-signed", username="bot-signed", command_auth="hmac", command_secret_file=None)
    handler = StubHandler()
    env = {PASSWORD_ENV: "bot-pass", COMMAND_SECRET_ENV: "s3cret"}
    async with MqttBridge(config, handler, env=env) as bridge:
        await bridge.wait_connected(WAIT_S)
        args = ["--host", broker.host, "--port", str(broker.port), "--bot-id", "bot-signed", "--username", "operator"]
        rc, out, err = await run_ctl(*args, "pause", env={PASSWORD_ENV: "op-pass", COMMAND_SECRET_ENV: "s3cret"})
        assert rc == 0, err
        assert json.loads(out)["result"] == {"state": "paused"}
        secret_file = tmp_path / "secret"
        secret_file.write_text("wrong\n")
        rc, out, err = await run_ctl(
            *args, "--secret-file", str(secret_file), "resume", env={PASSWORD_ENV: "op-pass", COMMAND_SECRET_ENV: ""}
        )
        assert rc == 1 and json.loads(out)["error"]["code"] == "unauthorized"
        rc, out, err = await run_ctl(*args, "status", env={PASSWORD_ENV: "wrong", COMMAND_SECRET_ENV: "s3cret"})
        assert rc == 1 and out == "" and "cannot reach the MQTT broker" in err
    assert handler.calls == [("pause", None)]
    assert "op-pass" not in err and "s3cret" not in err
