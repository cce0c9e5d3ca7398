"""Remote control commands: strict parsing, authorisation, idempotency and dispatch to a CommandHandler.

A command is one JSON object (DESIGN.md, "MQTT")::

    {"id": "7f3c...", "cmd": "flatten", "args": {"symbol": "BTC/USDT"}, "reply_to": "ai-trading/bot1/reply/ops",
     "ts": 1718000000, "auth": "<hex HMAC-SHA256>"}

- ``id`` (required): 1-128 characters of ``A-Z a-z 0-9 _ . : -``, unique per command; it is the idempotency key.
- ``cmd`` (required): one of :data:`COMMANDS` (and of the bot's ``allowed_commands``).
- ``args`` (optional, default ``{}``): an object; ``flatten`` takes an optional ``symbol`` string,
  ``reload-model`` an optional ``path`` string, ``promote`` a required ``model`` string (a shadow model's name);
  the other commands take none. Unknown keys are errors.
- ``reply_to`` (optional): the topic for the reply; it must be the bot's reply topic or lie under it
  (``<namespace>/<bot_id>/reply/...``) so that the broker ACL can stay tight. Default: the bot's reply topic.
- ``ts`` and ``auth``: required when the bot runs with HMAC authorisation (see below), ignored otherwise.

Replies are ``{"id": ..., "ok": true, "result": {...}}`` or ``{"id": ..., "ok": false, "error": {"code": ...,
"message": ...}}``; ``id`` is null when the request had no usable id. Error codes: ``bad_json``, ``too_large``,
``invalid_request``, ``unauthorized``, ``unknown_command``, ``forbidden``, ``bad_args``, ``id_conflict`` (the
id was already used for a different command), ``handler_error`` and ``timeout``. A request refused with any code
before ``handler_error`` never reaches the handler: it changes nothing.

**Authorisation model.** MQTT carries no sender identity per message, so who may command a bot is decided in two
layers: (1) the broker ACL (``deploy/mosquitto/acl``) lets only the operator account publish to ``.../cmd``; (2)
optionally (``command_auth="hmac"``), every command carries ``ts`` (integer Unix seconds, within
``auth_max_skew_s`` of the bot's clock) and ``auth`` = hex HMAC-SHA256, keyed with a shared secret, of
:func:`signing_string` (``id``, ``cmd``, ``ts`` and the canonical JSON of ``args``, newline-separated). Layer 2
protects against a leaked or misconfigured broker account; replays inside the skew window hit the idempotency
cache (its window is at least twice the skew), so a captured command cannot run twice.

**Idempotency.** QoS 1 delivers at least once: a command whose id was already executed within
``dedup_window_s`` returns the stored reply and is not executed again. Failed executions (``handler_error``,
``timeout``) are stored too; retry them with a new id.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import math
import re
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import structlog

log = structlog.get_logger()

COMMANDS: tuple[str, ...] = ("pause", "resume", "flatten", "status", "reload-model", "promote")
"""Every command the control plane knows."""

ENVELOPE_FIELDS = frozenset({"id", "cmd", "args", "reply_to", "ts", "auth"})
"""Keys a command object may have."""

_ID_RE = re.compile(r"[A-Za-z0-9_.:\-]{1,128}")
_HEX_RE = re.compile(r"[0-9a-f]{64}")
_MAX_STRING_ARG = 512


class CommandHandler(Protocol):
    """What the engine implements so that commands can act on it; every method may raise to report failure."""

    async def pause(self) -> Mapping[str, Any] | None:
        """Stop opening new positions until resumed."""
        ...

    async def resume(self) -> Mapping[str, Any] | None:
        """Resume trading after a pause."""
        ...

    async def flatten(self, symbol: str | None) -> Mapping[str, Any] | None:
        """Close the position in `symbol`, or every position when None."""
        ...

    async def status(self) -> Mapping[str, Any]:
        """Return the bot's current state as a JSON-ready mapping."""
        ...

    async def reload_model(self, path: str | None) -> Mapping[str, Any] | None:
        """Load the model at `path` (or re-read the configured one when None); refuse an invalid card."""
        ...

    async def promote(self, model: str) -> Mapping[str, Any] | None:
        """Make the shadow model `model` the live policy."""
        ...


class CommandError(Exception):
    """A command was refused; `code` is the machine-readable reason sent in the error reply."""

    def __init__(self, code: str, message: str, command_id: str | None = None) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.command_id = command_id


@dataclass(frozen=True, slots=True)
class Command:
    """A parsed, well-formed command (its args still unchecked against the command's signature)."""

    id: str
    """Idempotency key chosen by the sender."""
    cmd: str
    """Command name (not yet checked against COMMANDS)."""
    args: Mapping[str, Any] = field(default_factory=dict)
    """Arguments object."""
    reply_to: str | None = None
    """Topic for the reply, or None for the bot's default reply topic."""
    ts: int | None = None
    """Signing time in Unix seconds (HMAC mode)."""
    auth: str | None = field(default=None, repr=False)
    """Hex HMAC-SHA256 of signing_string() (HMAC mode)."""

    def fingerprint(self) -> str:
        """Return a digest of what the command does (cmd and args), to detect a reused id."""
        return hashlib.sha256(f"{self.cmd}\n{canonical_args(self.args)}".encode()).hexdigest()


def canonical_args(args: Mapping[str, Any]) -> str:
    """Return the canonical JSON of `args` (sorted keys, no spaces, ASCII) that signatures cover."""
    return json.dumps(args, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False)


def signing_string(command_id: str, cmd: str, ts: int, args: Mapping[str, Any]) -> str:
    """Return the text a command's HMAC covers: id, cmd, ts and canonical args, newline-separated."""
    return f"{command_id}\n{cmd}\n{ts}\n{canonical_args(args)}"


def sign_command(secret: bytes, command_id: str, cmd: str, ts: int, args: Mapping[str, Any]) -> str:
    """Return the hex HMAC-SHA256 an authorised sender puts in a command's `auth` field."""
    return hmac.new(secret, signing_string(command_id, cmd, ts, args).encode(), hashlib.sha256).hexdigest()


def make_command(
    command_id: str,
    cmd: str,
    args: Mapping[str, Any] | None = None,
    *,
    reply_to: str | None = None,
    secret: bytes | None = None,
    ts: int | None = None,
) -> dict[str, Any]:
    """Build a command object, signed when `secret` is given (with `ts`, default now)."""
    body: dict[str, Any] = {"id": command_id, "cmd": cmd, "args": dict(args or {})}
    if reply_to is not None:
        body["reply_to"] = reply_to
    if secret is not None:
        body["ts"] = int(time.time()) if ts is None else ts
        body["auth"] = sign_command(secret, command_id, cmd, body["ts"], body["args"])
    return body


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def parse_command(payload: bytes, *, max_bytes: int = 65536) -> Command:
    """Parse one command payload strictly; raise CommandError (with the id when one was readable)."""
    if len(payload) > max_bytes:
        raise CommandError("too_large", f"command is {len(payload)} bytes, the limit is {max_bytes}")
    try:
        data = json.loads(payload.decode("utf-8"), parse_constant=_reject_constant)
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        raise CommandError("bad_json", f"command is not valid UTF-8 JSON: {e}") from None
    if not isinstance(data, dict):
        raise CommandError("bad_json", f"command must be a JSON object, got {type(data).__name__}")
    raw_id = data.get("id")
    command_id = raw_id if isinstance(raw_id, str) and _ID_RE.fullmatch(raw_id) else None
    if command_id is None:
        detail = "missing" if "id" not in data else f"invalid ({raw_id!r:.60})"
        raise CommandError(
            "invalid_request", f"id is {detail}: it must be a string of 1-128 characters A-Z a-z 0-9 _ . : -"
        )
    unknown = sorted(str(k) for k in data if k not in ENVELOPE_FIELDS)
    if unknown:
        raise CommandError("invalid_request", f"unknown field(s) {', '.join(unknown)}", command_id)
    cmd = data.get("cmd")
    if not isinstance(cmd, str) or not cmd:
        raise CommandError("invalid_request", f"cmd must be a non-empty string, got {cmd!r:.60}", command_id)
    args = data.get("args", {})
    if not isinstance(args, dict):
        raise CommandError("invalid_request", f"args must be an object, got {type(args).__name__}", command_id)
    reply_to = data.get("reply_to")
    if reply_to is not None and not isinstance(reply_to, str):
        raise CommandError("invalid_request", f"reply_to must be a string, got {reply_to!r:.60}", command_id)
    ts = data.get("ts")
    if ts is not None and (isinstance(ts, bool) or not isinstance(ts, int)):
        raise CommandError("invalid_request", f"ts must be integer Unix seconds, got {ts!r:.60}", command_id)
    auth = data.get("auth")
    if auth is not None and not isinstance(auth, str):
        raise CommandError("invalid_request", "auth must be a string", command_id)
    return Command(id=command_id, cmd=cmd, args=args, reply_to=reply_to, ts=ts, auth=auth)


def _optional_string(args: Mapping[str, Any], key: str, cmd: str) -> str | None:
    value = args.get(key)
    if value is None:
        return None
    if not isinstance(value, str) or not value.strip() or len(value) > _MAX_STRING_ARG or "\x00" in value:
        raise CommandError(
            "bad_args",
            f"{cmd}: {key} must be a non-empty string (at most {_MAX_STRING_ARG} characters), got {value!r:.60}",
        )
    return value


_ARGS: dict[str, frozenset[str]] = {
    "pause": frozenset(),
    "resume": frozenset(),
    "status": frozenset(),
    "flatten": frozenset({"symbol"}),
    "reload-model": frozenset({"path"}),
    "promote": frozenset({"model"}),
}
_REQUIRED: dict[str, frozenset[str]] = {"promote": frozenset({"model"})}


def check_args(cmd: str, args: Mapping[str, Any]) -> dict[str, str | None]:
    """Check `args` against `cmd`'s signature and return the keyword arguments for the handler."""
    allowed = _ARGS[cmd]
    unknown = sorted(str(k) for k in args if k not in allowed)
    if unknown:
        takes = ", ".join(sorted(allowed)) or "no arguments"
        raise CommandError("bad_args", f"{cmd}: unknown argument(s) {', '.join(unknown)} ({cmd} takes {takes})")
    missing = sorted(k for k in _REQUIRED.get(cmd, frozenset()) if args.get(k) is None)
    if missing:
        raise CommandError("bad_args", f"{cmd}: missing argument(s) {', '.join(missing)}")
    return {key: _optional_string(args, key, cmd) for key in sorted(allowed)}


def is_valid_reply_topic(topic: str, reply_topic: str) -> bool:
    """Return whether `topic` is `reply_topic` or below it, without wildcards or NUL."""
    if len(topic) > 512 or any(c in topic for c in "+#\x00"):
        return False
    return topic == reply_topic or (topic.startswith(reply_topic + "/") and len(topic) > len(reply_topic) + 1)


@dataclass(frozen=True, slots=True)
class CommandReply:
    """A reply to publish: where, what, and whether the handler ran."""

    topic: str
    """Topic to publish the reply to."""
    payload: dict[str, Any]
    """The reply object (`{id, ok, result}` or `{id, ok, error}`)."""
    executed: bool
    """Whether this request ran the handler (False for refusals and repeated ids)."""
    cmd: str | None = None
    """The command name, when the request had a readable one."""

    def to_json(self) -> str:
        """Serialise the reply payload."""
        return json.dumps(self.payload, separators=(",", ":"), allow_nan=False, default=str)


def error_reply(command_id: str | None, code: str, message: str) -> dict[str, Any]:
    """Return an error reply object."""
    return {"id": command_id, "ok": False, "error": {"code": code, "message": message}}


def _json_safe(result: Mapping[str, Any] | None) -> dict[str, Any]:
    if result is None:
        return {}
    if not isinstance(result, Mapping):
        raise TypeError(f"handler returned {type(result).__name__}, expected a mapping or None")
    # Decimals, datetimes and enums become strings; NaN is refused so every reply is valid JSON.
    safe: dict[str, Any] = json.loads(json.dumps(dict(result), default=str, allow_nan=False))
    return safe


@dataclass
class _Done:
    fingerprint: str
    payload: dict[str, Any]
    expires_at: float


class CommandProcessor:
    """Turn raw command payloads into handler calls and replies; refuse anything malformed or unauthorised."""

    def __init__(
        self,
        handler: CommandHandler,
        *,
        reply_topic: str,
        allowed_commands: tuple[str, ...] = COMMANDS,
        secret: bytes | None = None,
        auth_max_skew_s: float = 60.0,
        dedup_window_s: float = 600.0,
        dedup_max_entries: int = 1024,
        command_timeout_s: float = 30.0,
        max_bytes: int = 65536,
        wall_clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        """Dispatch to `handler`; with `secret`, require HMAC-signed commands (see the module docstring)."""
        unknown = sorted(set(allowed_commands) - set(COMMANDS))
        if unknown:
            raise ValueError(f"allowed_commands: unknown command(s) {', '.join(unknown)}; known: {', '.join(COMMANDS)}")
        if secret is not None and not secret:
            raise ValueError("command secret must not be empty")
        if dedup_window_s < 2 * auth_max_skew_s:
            raise ValueError(
                f"dedup_window_s ({dedup_window_s}) must be at least twice auth_max_skew_s "
                f"({auth_max_skew_s}) so that replayed signed commands are caught"
            )
        self.handler = handler
        self.reply_topic = reply_topic
        self.allowed_commands = frozenset(allowed_commands)
        self._secret = secret
        self.auth_max_skew_s = auth_max_skew_s
        self.dedup_window_s = dedup_window_s
        self.dedup_max_entries = dedup_max_entries
        self.command_timeout_s = command_timeout_s
        self.max_bytes = max_bytes
        self._wall_clock = wall_clock
        self._monotonic = monotonic
        self._done: OrderedDict[str, _Done] = OrderedDict()
        self.executed = 0
        """Handler calls made."""
        self.refused = 0
        """Requests answered with an error before reaching the handler."""
        self.repeated = 0
        """Requests answered from the idempotency cache."""

    @property
    def requires_auth(self) -> bool:
        """Whether commands must carry a valid HMAC."""
        return self._secret is not None

    async def process(self, payload: bytes) -> CommandReply:
        """Validate, authorise, de-duplicate and execute one command payload; never raise for bad input."""
        try:
            command = parse_command(payload, max_bytes=self.max_bytes)
        except CommandError as e:
            return self._refuse(e, self.reply_topic)
        reply_topic = self.reply_topic
        if command.reply_to is not None:
            if not is_valid_reply_topic(command.reply_to, self.reply_topic):
                return self._refuse(
                    CommandError(
                        "invalid_request",
                        f"reply_to {command.reply_to!r:.80} must be {self.reply_topic} or below it, without wildcards",
                        command.id,
                    ),
                    reply_topic,
                    command.cmd,
                )
            reply_topic = command.reply_to
        try:
            self._authorise(command)
            previous = self._lookup(command)
            if previous is not None:
                self.repeated += 1
                log.info("command_repeated", command_id=command.id, cmd=command.cmd)
                return CommandReply(reply_topic, previous, executed=False, cmd=command.cmd)
            if command.cmd not in COMMANDS:
                raise CommandError(
                    "unknown_command", f"unknown command {command.cmd!r:.60}; known: {', '.join(COMMANDS)}", command.id
                )
            if command.cmd not in self.allowed_commands:
                raise CommandError("forbidden", f"command {command.cmd!r} is not allowed on this bot", command.id)
            kwargs = check_args(command.cmd, command.args)
        except CommandError as e:
            e.command_id = command.id
            return self._refuse(e, reply_topic, command.cmd)
        reply = await self._execute(command, kwargs)
        self._remember(command, reply)
        return CommandReply(reply_topic, reply, executed=True, cmd=command.cmd)

    def _refuse(self, error: CommandError, topic: str, cmd: str | None = None) -> CommandReply:
        self.refused += 1
        log.warning("command_refused", command_id=error.command_id, cmd=cmd, code=error.code, reason=error.message)
        return CommandReply(topic, error_reply(error.command_id, error.code, error.message), executed=False, cmd=cmd)

    def _authorise(self, command: Command) -> None:
        if self._secret is None:
            return
        if command.ts is None or command.auth is None:
            raise CommandError("unauthorized", "command must carry ts and auth (HMAC-SHA256) on this bot")
        skew = abs(self._wall_clock() - command.ts)
        if not math.isfinite(skew) or skew > self.auth_max_skew_s:
            raise CommandError(
                "unauthorized",
                f"ts {command.ts} is {skew:.0f} s from the bot's clock (limit {self.auth_max_skew_s:g} s)",
            )
        try:
            expected = sign_command(self._secret, command.id, command.cmd, command.ts, command.args)
        except ValueError:  # args with NaN cannot be canonicalised, hence cannot carry a valid signature
            expected = ""
        if not _HEX_RE.fullmatch(command.auth) or not hmac.compare_digest(expected, command.auth):
            raise CommandError("unauthorized", "auth does not match the command (wrong secret or altered command)")

    def _expire(self) -> None:
        now = self._monotonic()
        while self._done:
            oldest = next(iter(self._done.values()))
            if oldest.expires_at > now and len(self._done) <= self.dedup_max_entries:
                break
            self._done.popitem(last=False)

    def _lookup(self, command: Command) -> dict[str, Any] | None:
        self._expire()
        done = self._done.get(command.id)
        if done is None:
            return None
        if done.fingerprint != command.fingerprint():
            raise CommandError("id_conflict", f"id {command.id!r} was already used for a different command")
        return done.payload

    def _remember(self, command: Command, reply: dict[str, Any]) -> None:
        self._done[command.id] = _Done(command.fingerprint(), reply, self._monotonic() + self.dedup_window_s)
        self._expire()

    async def _execute(self, command: Command, kwargs: dict[str, str | None]) -> dict[str, Any]:
        self.executed += 1
        started = time.perf_counter()
        try:
            async with asyncio.timeout(self.command_timeout_s):
                result = await self._call(command.cmd, kwargs)
            payload = {"id": command.id, "ok": True, "result": _json_safe(result)}
        except TimeoutError:
            log.error("command_timed_out", command_id=command.id, cmd=command.cmd, timeout_s=self.command_timeout_s)
            return error_reply(
                command.id,
                "timeout",
                f"{command.cmd} did not finish within {self.command_timeout_s:g} s; its outcome is unknown",
            )
        except Exception as e:  # the handler's failure goes back to the operator, never up into the bridge
            log.exception("command_failed", command_id=command.id, cmd=command.cmd)
            return error_reply(command.id, "handler_error", f"{command.cmd} failed: {type(e).__name__}: {e}")
        log.info(
            "command_executed",
            command_id=command.id,
            cmd=command.cmd,
            duration_ms=round((time.perf_counter() - started) * 1000, 3),
        )
        return payload

    async def _call(self, cmd: str, kwargs: dict[str, str | None]) -> Mapping[str, Any] | None:
        handler = self.handler
        if cmd == "pause":
            return await handler.pause()
        if cmd == "resume":
            return await handler.resume()
        if cmd == "flatten":
            return await handler.flatten(kwargs["symbol"])
        if cmd == "status":
            return await handler.status()
        if cmd == "reload-model":
            return await handler.reload_model(kwargs["path"])
        if cmd == "promote":
            model = kwargs["model"]
            assert model is not None  # check_args requires it
            return await handler.promote(model)
        raise AssertionError(f"unhandled command {cmd}")  # pragma: no cover - COMMANDS and _call disagree
