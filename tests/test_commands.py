"""Command parsing, authorisation, idempotency and dispatch (bot.commands), without a broker."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Mapping
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bot.commands import (
    COMMANDS,
    CommandProcessor,
    check_args,
    is_valid_reply_topic,
    make_command,
    parse_command,
    sign_command,
)

REPLY = "ai-trading/bot1/reply"
SECRET = b"correct horse battery staple"
NOW = 1_718_000_000


class RecordingHandler:
    """A CommandHandler that records every call (the engine's stand-in; the engine is tested on its own)."""

    def __init__(self, *, fail: str | None = None, status: Mapping[str, Any] | None = None) -> None:
        self.calls: list[tuple[str, Any]] = []
        self.fail = fail
        self._status = status if status is not None else {"state": "running", "equity": Decimal("1000.5")}
        self.called = asyncio.Event()

    def _record(self, name: str, arg: Any = None) -> None:
        self.calls.append((name, arg))
        self.called.set()
        if self.fail == name:
            raise RuntimeError(f"{name} exploded")

    async def pause(self) -> Mapping[str, Any] | None:
        self._record("pause")
        return {"state": "paused"}

    async def resume(self) -> Mapping[str, Any] | None:
        self._record("resume")
        return None

    async def flatten(self, symbol: str | None) -> Mapping[str, Any] | None:
        self._record("flatten", symbol)
        return {"closed": [symbol] if symbol else ["BTC/USDT", "ETH/USDT"]}

    async def status(self) -> Mapping[str, Any]:
        self._record("status")
        return self._status

    async def reload_model(self, path: str | None) -> Mapping[str, Any] | None:
        self._record("reload_model", path)
        return {"path": path, "sha256": "ab" * 32}


def processor(handler: RecordingHandler, **kwargs: Any) -> CommandProcessor:
    kwargs.setdefault("wall_clock", lambda: float(NOW))
    return CommandProcessor(handler, reply_topic=REPLY, **kwargs)


def raw(body: Any) -> bytes:
    return json.dumps(body).encode()


@pytest.mark.parametrize(
    ("body", "expected_call", "expected_result"),
    [
        ({"id": "c1", "cmd": "pause"}, ("pause", None), {"state": "paused"}),
        ({"id": "c2", "cmd": "resume", "args": {}}, ("resume", None), {}),
        (
            {"id": "c3", "cmd": "flatten", "args": {"symbol": "BTC/USDT"}},
            ("flatten", "BTC/USDT"),
            {"closed": ["BTC/USDT"]},
        ),
        ({"id": "c4", "cmd": "flatten"}, ("flatten", None), {"closed": ["BTC/USDT", "ETH/USDT"]}),
        ({"id": "c5", "cmd": "status"}, ("status", None), {"state": "running", "equity": "1000.5"}),
        (
            {"id": "c6", "cmd": "reload-model", "args": {"path": "models/ppo.onnx"}},
            ("reload_model", "models/ppo.onnx"),
            {"path": "models/ppo.onnx", "sha256": "ab" * 32},
        ),
        ({"id": "c7", "cmd": "reload-model"}, ("reload_model", None), {"path": None, "sha256": "ab" * 32}),
    ],
)
async def test_each_command_reaches_the_handler_and_replies(
    body: dict[str, Any], expected_call: tuple[str, Any], expected_result: dict[str, Any]
) -> None:
    handler = RecordingHandler()
    reply = await processor(handler).process(raw(body))
    assert handler.calls == [expected_call]
    assert reply.executed
    assert reply.topic == REPLY
    assert reply.payload == {"id": body["id"], "ok": True, "result": expected_result}
    assert json.loads(reply.to_json()) == reply.payload


@pytest.mark.parametrize(
    ("payload", "code", "reply_id"),
    [
        (b"{not json", "bad_json", None),
        (b"\xff\xfe", "bad_json", None),
        (b'["pause"]', "bad_json", None),
        (b'{"id": "x", "cmd": "pause", "args": {"a": NaN}}', "bad_json", None),
        (raw({"cmd": "pause"}), "invalid_request", None),
        (raw({"id": 42, "cmd": "pause"}), "invalid_request", None),
        (raw({"id": "", "cmd": "pause"}), "invalid_request", None),
        (raw({"id": "has space", "cmd": "pause"}), "invalid_request", None),
        (raw({"id": "a" * 129, "cmd": "pause"}), "invalid_request", None),
        (raw({"id": "e1", "cmd": "pause", "extra": 1}), "invalid_request", "e1"),
        (raw({"id": "e2"}), "invalid_request", "e2"),
        (raw({"id": "e3", "cmd": 7}), "invalid_request", "e3"),
        (raw({"id": "e4", "cmd": "pause", "args": ["x"]}), "invalid_request", "e4"),
        (raw({"id": "e5", "cmd": "pause", "reply_to": 5}), "invalid_request", "e5"),
        (raw({"id": "e6", "cmd": "pause", "reply_to": "elsewhere/topic"}), "invalid_request", "e6"),
        (raw({"id": "e7", "cmd": "pause", "reply_to": REPLY + "/#"}), "invalid_request", "e7"),
        (raw({"id": "e8", "cmd": "pause", "ts": "soon"}), "invalid_request", "e8"),
        (raw({"id": "e9", "cmd": "shutdown"}), "unknown_command", "e9"),
        (raw({"id": "e10", "cmd": "reload_model"}), "unknown_command", "e10"),
        (raw({"id": "e11", "cmd": "pause", "args": {"reason": "x"}}), "bad_args", "e11"),
        (raw({"id": "e12", "cmd": "flatten", "args": {"symbol": 5}}), "bad_args", "e12"),
        (raw({"id": "e13", "cmd": "flatten", "args": {"symbol": "  "}}), "bad_args", "e13"),
        (raw({"id": "e14", "cmd": "reload-model", "args": {"path": ["a"]}}), "bad_args", "e14"),
        (raw({"id": "e15", "cmd": "flatten", "args": {"symbol": "BTC/USDT", "all": True}}), "bad_args", "e15"),
        (b" " * 70000, "too_large", None),
    ],
)
async def test_malformed_commands_get_an_error_reply_and_change_nothing(
    payload: bytes, code: str, reply_id: str | None
) -> None:
    handler = RecordingHandler()
    proc = processor(handler)
    reply = await proc.process(payload)
    assert handler.calls == []
    assert not reply.executed
    assert reply.topic == REPLY  # an invalid reply_to is not trusted: the error goes to the bot's reply topic
    assert reply.payload["ok"] is False
    assert reply.payload["id"] == reply_id
    assert reply.payload["error"]["code"] == code, reply.payload
    assert reply.payload["error"]["message"]
    assert proc.refused == 1


async def test_reply_to_below_the_reply_topic_is_honoured() -> None:
    reply = await processor(RecordingHandler()).process(raw({"id": "r1", "cmd": "status", "reply_to": REPLY + "/ops"}))
    assert reply.topic == REPLY + "/ops"
    assert reply.payload["ok"] is True


def test_reply_topic_rule() -> None:
    assert is_valid_reply_topic(REPLY, REPLY)
    assert is_valid_reply_topic(REPLY + "/a/b", REPLY)
    assert not is_valid_reply_topic(REPLY + "/", REPLY)
    assert not is_valid_reply_topic(REPLY + "x", REPLY)
    assert not is_valid_reply_topic(REPLY + "/+", REPLY)
    assert not is_valid_reply_topic("ai-trading/bot2/reply", REPLY)


async def test_command_not_in_allowed_commands_is_forbidden() -> None:
    handler = RecordingHandler()
    proc = processor(handler, allowed_commands=("status",))
    refused = await proc.process(raw({"id": "f1", "cmd": "flatten"}))
    assert refused.payload["error"]["code"] == "forbidden"
    allowed = await proc.process(raw({"id": "f2", "cmd": "status"}))
    assert allowed.payload["ok"] is True
    assert handler.calls == [("status", None)]


def test_unknown_allowed_command_is_a_config_error() -> None:
    with pytest.raises(ValueError, match="allowed_commands: unknown command"):
        processor(RecordingHandler(), allowed_commands=("pause", "selfdestruct"))


async def test_repeated_id_returns_the_stored_reply_without_executing_again() -> None:
    handler = RecordingHandler()
    proc = processor(handler)
    first = await proc.process(raw({"id": "d1", "cmd": "flatten", "args": {"symbol": "BTC/USDT"}}))
    again = await proc.process(raw({"id": "d1", "args": {"symbol": "BTC/USDT"}, "cmd": "flatten"}))
    assert handler.calls == [("flatten", "BTC/USDT")]
    assert again.payload == first.payload
    assert first.executed and not again.executed
    assert proc.repeated == 1


async def test_reused_id_for_a_different_command_is_refused() -> None:
    handler = RecordingHandler()
    proc = processor(handler)
    await proc.process(raw({"id": "d2", "cmd": "pause"}))
    conflict = await proc.process(raw({"id": "d2", "cmd": "flatten"}))
    assert conflict.payload["error"]["code"] == "id_conflict"
    assert handler.calls == [("pause", None)]


async def test_ids_are_forgotten_after_the_dedup_window() -> None:
    now = [100.0]
    handler = RecordingHandler()
    proc = processor(handler, dedup_window_s=200.0, auth_max_skew_s=60.0, monotonic=lambda: now[0])
    await proc.process(raw({"id": "w1", "cmd": "pause"}))
    now[0] += 199.0
    await proc.process(raw({"id": "w1", "cmd": "pause"}))
    assert len(handler.calls) == 1
    now[0] += 2.0
    await proc.process(raw({"id": "w1", "cmd": "pause"}))
    assert len(handler.calls) == 2


async def test_dedup_cache_is_bounded() -> None:
    handler = RecordingHandler()
    proc = processor(handler, dedup_max_entries=3)
    for i in range(5):
        await proc.process(raw({"id": f"b{i}", "cmd": "resume"}))
    await proc.process(raw({"id": "b0", "cmd": "resume"}))  # evicted: runs again
    await proc.process(raw({"id": "b4", "cmd": "resume"}))  # still remembered
    assert len(handler.calls) == 6


def test_dedup_window_must_cover_replays_of_signed_commands() -> None:
    with pytest.raises(ValueError, match="dedup_window_s"):
        processor(RecordingHandler(), dedup_window_s=100.0, auth_max_skew_s=60.0)


async def test_handler_failure_is_reported_and_not_retried_under_the_same_id() -> None:
    handler = RecordingHandler(fail="flatten")
    proc = processor(handler)
    reply = await proc.process(raw({"id": "h1", "cmd": "flatten"}))
    assert reply.executed
    assert reply.payload["ok"] is False
    assert reply.payload["error"]["code"] == "handler_error"
    assert "flatten exploded" in reply.payload["error"]["message"]
    await proc.process(raw({"id": "h1", "cmd": "flatten"}))
    assert handler.calls == [("flatten", None)]


async def test_slow_handler_times_out_with_an_error_reply() -> None:
    release = asyncio.Event()

    class Stuck(RecordingHandler):
        async def pause(self) -> Mapping[str, Any] | None:
            await release.wait()
            return None

    reply = await processor(Stuck(), command_timeout_s=0.05).process(raw({"id": "t1", "cmd": "pause"}))
    assert reply.payload["error"]["code"] == "timeout"


async def test_results_are_made_json_safe_and_nan_is_an_error() -> None:
    at = datetime(2024, 1, 2, 3, 4, 5, tzinfo=UTC)
    ok = await processor(RecordingHandler(status={"at": at, "pnl": Decimal("-1.25")})).process(
        raw({"id": "j1", "cmd": "status"})
    )
    assert ok.payload["result"] == {"at": str(at), "pnl": "-1.25"}
    bad = await processor(RecordingHandler(status={"x": float("nan")})).process(raw({"id": "j2", "cmd": "status"}))
    assert bad.payload["error"]["code"] == "handler_error"
    assert json.loads(bad.to_json())["ok"] is False


# ------------------------------------------------------------------------------------------ HMAC


async def test_signed_command_is_accepted() -> None:
    handler = RecordingHandler()
    body = make_command("s1", "flatten", {"symbol": "ETH/USDT"}, secret=SECRET, ts=NOW)
    reply = await processor(handler, secret=SECRET).process(raw(body))
    assert reply.payload["ok"] is True, reply.payload
    assert handler.calls == [("flatten", "ETH/USDT")]


def _signed(**changes: Any) -> dict[str, Any]:
    body = make_command("s2", "flatten", {"symbol": "ETH/USDT"}, secret=SECRET, ts=NOW)
    body.update(changes)
    return body


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(make_command("s2", "flatten", {"symbol": "ETH/USDT"}), id="unsigned"),
        pytest.param(make_command("s2", "flatten", {"symbol": "ETH/USDT"}, secret=b"wrong", ts=NOW), id="wrong-secret"),
        pytest.param(_signed(args={"symbol": "BTC/USDT"}), id="altered-args"),
        pytest.param(_signed(cmd="pause", args={}), id="altered-cmd"),
        pytest.param(_signed(id="s3"), id="altered-id"),
        pytest.param(_signed(ts=NOW + 1), id="altered-ts"),
        pytest.param(make_command("s2", "flatten", {"symbol": "ETH/USDT"}, secret=SECRET, ts=NOW - 61), id="stale"),
        pytest.param(make_command("s2", "flatten", {"symbol": "ETH/USDT"}, secret=SECRET, ts=NOW + 61), id="future"),
        pytest.param(_signed(auth="zz"), id="garbage-auth"),
        pytest.param(_signed(auth=None), id="null-auth"),
    ],
)
async def test_bad_auth_is_refused_and_changes_nothing(body: dict[str, Any]) -> None:
    handler = RecordingHandler()
    reply = await processor(handler, secret=SECRET).process(raw(body))
    assert reply.payload["error"]["code"] == "unauthorized", reply.payload
    assert handler.calls == []


async def test_replayed_signed_command_runs_once() -> None:
    handler = RecordingHandler()
    proc = processor(handler, secret=SECRET)
    body = raw(make_command("s4", "pause", secret=SECRET, ts=NOW))
    first, second = await proc.process(body), await proc.process(body)
    assert handler.calls == [("pause", None)]
    assert second.payload == first.payload


async def test_unauthorised_request_does_not_read_the_reply_cache() -> None:
    handler = RecordingHandler()
    proc = processor(handler, secret=SECRET)
    await proc.process(raw(make_command("s5", "status", secret=SECRET, ts=NOW)))
    probe = await proc.process(raw(make_command("s5", "status")))
    assert probe.payload["error"]["code"] == "unauthorized"
    assert "result" not in probe.payload


def test_signature_is_independent_of_key_order() -> None:
    a = sign_command(SECRET, "k", "flatten", NOW, {"symbol": "X", "z": 1})
    b = sign_command(SECRET, "k", "flatten", NOW, {"z": 1, "symbol": "X"})
    assert a == b
    assert a != sign_command(SECRET, "k", "flatten", NOW, {"symbol": "Y", "z": 1})


# ------------------------------------------------------------------------------------------ properties

_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=8,
)
_envelopes = st.fixed_dictionaries(
    {
        "id": st.from_regex(r"[A-Za-z0-9_.:\-]{1,16}", fullmatch=True) | _values,
        "cmd": st.sampled_from([*COMMANDS, "shutdown", ""]) | _values,
    },
    optional={
        "args": st.dictionaries(
            st.sampled_from(["symbol", "path", "reason"]),
            st.sampled_from(["BTC/USDT", "models/m.onnx", "", " "]) | _values,
            max_size=2,
        )
        | _values,
        "reply_to": st.sampled_from([REPLY, REPLY + "/ops", "other/reply", REPLY + "/#"]) | _values,
        "ts": _values,
        "other": _values,
    },
)


@settings(max_examples=200, deadline=None)
@given(payload=st.binary(max_size=200) | _envelopes.map(lambda d: json.dumps(d).encode()))
def test_any_payload_gets_a_well_formed_reply_and_only_valid_commands_run(payload: bytes) -> None:
    handler = RecordingHandler()
    reply = asyncio.run(processor(handler).process(payload))
    body = json.loads(reply.to_json())
    assert set(body) in ({"id", "ok", "result"}, {"id", "ok", "error"})
    assert body["id"] is None or isinstance(body["id"], str)
    assert reply.executed == bool(handler.calls) == body["ok"]
    if handler.calls:
        command = parse_command(payload)
        assert command.cmd in COMMANDS
        check_args(command.cmd, command.args)  # would raise for args the handler must never see
