"""`ai-trading ctl`: send one command to a running bot over MQTT, wait for its reply and print it.

The command is the JSON RPC of `bot.commands` (``{id, cmd, args, reply_to}``), published with QoS 1 to
``<namespace>/<bot_id>/cmd``; the reply is awaited on a private topic under the bot's reply topic
(``<namespace>/<bot_id>/reply/ctl-<id>``), which the shipped ACL lets the operator account read::

    ai-trading ctl --bot-id bot1 status
    ai-trading ctl --bot-id bot1 flatten --symbol BTC/USDT
    ai-trading ctl --bot-id bot1 reload-model --path models/best_model.onnx
    ai-trading ctl --bot-id bot1 promote shadow-a

Broker settings come from flags or the environment: ``--host`` ($AI_TRADING_MQTT_HOST, default 127.0.0.1),
``--port`` ($AI_TRADING_MQTT_PORT, 1883), ``--username`` ($AI_TRADING_MQTT_USERNAME), the password only from
$AI_TRADING_MQTT_PASSWORD (never a flag: it would show in the process list), ``--bot-id`` ($AI_TRADING_BOT_ID,
default ai-trading). A bot running with ``mqtt.command_auth=hmac`` needs signed commands: the secret comes from
$AI_TRADING_MQTT_COMMAND_SECRET or ``--secret-file``.

The reply object is printed to stdout as one JSON line. Exit codes: 0 the bot answered ``ok: true``; 1 it
answered with an error (its code and message also go to stderr), no reply came within ``--timeout``, or the
broker could not be reached; 2 bad usage.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiomqtt

from bot.commands import make_command
from bot.sinks.mqtt import COMMAND_SECRET_ENV, PASSWORD_ENV

HOST_ENV = "AI_TRADING_MQTT_HOST"
"""Environment variable with the broker host."""
PORT_ENV = "AI_TRADING_MQTT_PORT"
"""Environment variable with the broker port."""
USERNAME_ENV = "AI_TRADING_MQTT_USERNAME"
"""Environment variable with the broker user name."""
BOT_ID_ENV = "AI_TRADING_BOT_ID"
"""Environment variable with the bot to command."""
CTL_COMMANDS = ("status", "pause", "resume", "flatten", "reload-model", "promote")
"""Commands this client sends (the bot decides which it accepts)."""


class CtlError(Exception):
    """The command could not be delivered or answered (broker unreachable, no reply in time)."""


@dataclass(frozen=True)
class Target:
    """Where the bot's broker is and which bot to command."""

    bot_id: str
    """Bot id (the middle topic segment)."""
    host: str = "127.0.0.1"
    """Broker host."""
    port: int = 1883
    """Broker port."""
    namespace: str = "ai-trading"
    """Topic prefix."""
    username: str | None = None
    """Broker user name (the operator account in the shipped ACL)."""
    password: str | None = None
    """Broker password (from the environment)."""
    tls_ca_file: str | None = None
    """CA bundle for a TLS connection; None connects without TLS unless `tls` is set."""
    tls: bool = False
    """Connect over TLS (with the system CAs unless tls_ca_file is given)."""

    def topic(self, name: str) -> str:
        """Return `<namespace>/<bot_id>/<name>`."""
        return f"{self.namespace}/{self.bot_id}/{name}"


async def send_command(
    target: Target,
    cmd: str,
    args: Mapping[str, Any] | None = None,
    *,
    timeout_s: float = 10.0,
    secret: bytes | None = None,
    command_id: str | None = None,
) -> dict[str, Any]:
    """Publish one command to the bot and return its reply object (``{id, ok, result|error}``).

    Raises:
        CtlError: the broker is unreachable, or no reply with this command's id came within `timeout_s`.
    """
    command_id = command_id or f"ctl-{secrets.token_hex(8)}"
    reply_topic = target.topic(f"reply/{command_id}")
    body = make_command(command_id, cmd, args, reply_to=reply_topic, secret=secret)
    tls_params = aiomqtt.TLSParameters(ca_certs=target.tls_ca_file) if target.tls or target.tls_ca_file else None
    client = aiomqtt.Client(
        target.host,
        target.port,
        username=target.username,
        password=target.password,
        identifier=command_id,
        tls_params=tls_params,
        timeout=timeout_s,
    )
    broker = f"{target.host}:{target.port}"
    try:
        async with asyncio.timeout(timeout_s):
            async with client:
                await client.subscribe(reply_topic, qos=1)
                await client.publish(target.topic("cmd"), json.dumps(body), qos=1)
                async for message in client.messages:
                    reply = _parse_reply(message.payload)
                    if reply is not None and reply.get("id") == command_id:
                        return reply
    except TimeoutError:
        raise CtlError(
            f"no reply from bot {target.bot_id!r} to {cmd} within {timeout_s:g} s "
            f"(is it running with mqtt.enabled=true on {broker}?)"
        ) from None
    except aiomqtt.MqttError as e:
        raise CtlError(f"cannot reach the MQTT broker at {broker}: {e}") from None
    raise CtlError(f"the connection to {broker} closed before bot {target.bot_id!r} replied")


def _parse_reply(payload: object) -> dict[str, Any] | None:
    if not isinstance(payload, bytes | bytearray):
        return None
    try:
        data = json.loads(payload)
    except ValueError:
        return None
    return data if isinstance(data, dict) else None


def _parser() -> argparse.ArgumentParser:
    env = os.environ
    parser = argparse.ArgumentParser(
        prog="ai-trading ctl", description="Send a command to a running bot over MQTT and print its reply."
    )
    parser.add_argument("--bot-id", default=env.get(BOT_ID_ENV, "ai-trading"), help=f"bot to command (${BOT_ID_ENV})")
    parser.add_argument("--host", default=env.get(HOST_ENV, "127.0.0.1"), help=f"broker host (${HOST_ENV})")
    parser.add_argument("--port", default=env.get(PORT_ENV, "1883"), help=f"broker port (${PORT_ENV})")
    parser.add_argument("--username", default=env.get(USERNAME_ENV), help=f"broker user (${USERNAME_ENV})")
    parser.add_argument("--namespace", default="ai-trading", help="topic prefix (default: ai-trading)")
    parser.add_argument("--timeout", type=float, default=10.0, help="seconds to wait for the reply (default: 10)")
    parser.add_argument("--tls", action="store_true", help="connect over TLS")
    parser.add_argument("--ca-file", help="CA bundle that signed the broker's certificate (implies --tls)")
    parser.add_argument("--secret-file", help=f"HMAC secret for signed commands (${COMMAND_SECRET_ENV} wins)")
    sub = parser.add_subparsers(dest="cmd", metavar="COMMAND", required=True)
    sub.add_parser("status", help="print the bot's state")
    sub.add_parser("pause", help="stop opening new positions")
    sub.add_parser("resume", help="resume trading after a pause")
    flatten = sub.add_parser("flatten", help="close positions")
    flatten.add_argument("--symbol", help="close only this symbol's position (default: all)")
    reload = sub.add_parser("reload-model", help="load a model (default: re-read the configured one)")
    reload.add_argument("--path", help="model path or wandb: reference")
    promote = sub.add_parser("promote", help="make a shadow model the live one")
    promote.add_argument("model", help="the shadow model's name (its file stem; `status` lists the running ones)")
    return parser


def _args_of(ns: argparse.Namespace) -> dict[str, Any]:
    if ns.cmd == "flatten" and ns.symbol is not None:
        return {"symbol": ns.symbol}
    if ns.cmd == "reload-model" and ns.path is not None:
        return {"path": ns.path}
    if ns.cmd == "promote":
        return {"model": ns.model}
    return {}


def _secret(ns: argparse.Namespace) -> bytes | None:
    value = os.environ.get(COMMAND_SECRET_ENV)
    if value:
        return value.encode()
    if ns.secret_file:
        try:
            return Path(ns.secret_file).read_text(encoding="utf-8").strip().encode()
        except OSError as e:
            raise ValueError(f"--secret-file {ns.secret_file}: cannot read: {e.strerror or e}") from None
    return None


def main(argv: Sequence[str] | None = None) -> int:
    """Run `ai-trading ctl`; return 0 (ok reply), 1 (error reply, timeout, broker unreachable) or 2 (bad usage)."""
    parser = _parser()
    try:
        ns = parser.parse_args(list(sys.argv[1:] if argv is None else argv))
    except SystemExit as e:
        return int(e.code or 0)
    try:
        port = int(ns.port)
        if not 0 < port < 65536:
            raise ValueError
    except ValueError:
        sys.stderr.write(f"ai-trading ctl: --port must be a TCP port (1-65535), was {ns.port!r}\n")
        return 2
    if not ns.timeout > 0:
        sys.stderr.write(f"ai-trading ctl: --timeout must be > 0, was {ns.timeout}\n")
        return 2
    try:
        secret = _secret(ns)
    except ValueError as e:
        sys.stderr.write(f"ai-trading ctl: {e}\n")
        return 2
    target = Target(
        bot_id=ns.bot_id,
        host=ns.host,
        port=port,
        namespace=ns.namespace,
        username=ns.username,
        password=os.environ.get(PASSWORD_ENV) or None,
        tls=ns.tls,
        tls_ca_file=ns.ca_file,
    )
    try:
        reply = asyncio.run(send_command(target, ns.cmd, _args_of(ns), timeout_s=ns.timeout, secret=secret))
    except CtlError as e:
        sys.stderr.write(f"ai-trading ctl: {e}\n")
        return 1
    sys.stdout.write(json.dumps(reply, sort_keys=True) + "\n")
    if reply.get("ok") is True:
        return 0
    raw_error = reply.get("error")
    error: dict[str, Any] = raw_error if isinstance(raw_error, dict) else {}
    sys.stderr.write(f"ai-trading ctl: {ns.cmd} refused: {error.get('code')}: {error.get('message')}\n")
    return 1


if __name__ == "__main__":
    raise SystemExit(main())
