"""Tests for the Enhanced Logger: renderer choice, levels, context, idempotence and redaction."""

from __future__ import annotations

import asyncio
import datetime as dt
import io
import json
import logging
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import pytest
import structlog
from hypothesis import given
from hypothesis import strategies as st
from structlog.contextvars import bound_contextvars

from monitoring.logging import LEVEL_ENV_VAR, configure_logging, is_secret_key, redact_event, reset_logging
from monitoring.redaction import MASK, redact_text, register_secret

SECRET = "sk-live-9f8e7d6c5b4a"


class TtyStream(io.StringIO):
    """A StringIO that claims to be a terminal."""

    def isatty(self) -> bool:
        return True


@pytest.fixture(autouse=True)
def _clean_logging(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.delenv(LEVEL_ENV_VAR, raising=False)
    reset_logging()
    yield
    reset_logging()


def json_lines(stream: io.StringIO) -> list[dict[str, Any]]:
    """Parse every rendered line as JSON (fails the test on a non-JSON line)."""
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_json_lines_carry_iso_utc_timestamp_level_and_event() -> None:
    out = io.StringIO()
    configure_logging("INFO", json=True, stream=out)
    structlog.get_logger().info("order_submitted", symbol="BTC/USDT", amount=Decimal("0.015"))

    (line,) = json_lines(out)
    assert list(line)[:3] == ["timestamp", "level", "event"]
    assert line["event"] == "order_submitted"
    assert line["level"] == "info"
    assert line["symbol"] == "BTC/USDT"
    assert line["amount"] == "0.015"  # Decimal rendered exactly, not as repr or float
    stamp = dt.datetime.fromisoformat(line["timestamp"])
    assert stamp.utcoffset() == dt.timedelta(0)
    assert abs(dt.datetime.now(dt.UTC) - stamp) < dt.timedelta(minutes=1)


def test_logs_default_to_stderr_and_leave_stdout_alone(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging("INFO", json=True)
    structlog.get_logger().info("daemon_started")
    logging.getLogger("apscheduler").warning("job missed")

    captured = capsys.readouterr()
    assert captured.out == ""
    events = [json.loads(line)["event"] for line in captured.err.splitlines()]
    assert events == ["daemon_started", "job missed"]


def test_json_none_picks_console_on_a_tty_and_json_elsewhere() -> None:
    tty = TtyStream()
    configure_logging("INFO", stream=tty)
    structlog.get_logger().info("feed_connected", symbol="ETH/USDT")
    text = tty.getvalue()
    assert "feed_connected" in text
    assert "symbol" in text
    with pytest.raises(json.JSONDecodeError):
        json.loads(text.splitlines()[0])

    pipe = io.StringIO()
    configure_logging("INFO", stream=pipe)
    structlog.get_logger().info("feed_connected", symbol="ETH/USDT")
    assert json_lines(pipe)[0]["symbol"] == "ETH/USDT"


def test_console_forced_off_a_tty_has_no_colour_codes() -> None:
    out = io.StringIO()
    configure_logging("INFO", json=False, stream=out)
    structlog.get_logger().warning("feed_reconnecting", attempt=2)
    text = out.getvalue()
    assert "feed_reconnecting" in text
    assert "attempt=2" in text
    assert "\x1b[" not in text


@pytest.mark.parametrize(
    ("env_value", "argument", "shown"),
    [
        (None, None, {"info", "warning"}),
        ("debug", None, {"debug", "info", "warning"}),
        ("WARNING", None, {"warning"}),
        ("WARNING", "DEBUG", {"debug", "info", "warning"}),
        ("40", None, set()),
    ],
)
def test_level_comes_from_argument_then_env_then_info(
    monkeypatch: pytest.MonkeyPatch, env_value: str | None, argument: str | None, shown: set[str]
) -> None:
    if env_value is not None:
        monkeypatch.setenv(LEVEL_ENV_VAR, env_value)
    out = io.StringIO()
    configure_logging(argument, json=True, stream=out)
    log = structlog.get_logger()
    log.debug("a_debug")
    log.info("an_info")
    log.warning("a_warning")
    assert {line["level"] for line in json_lines(out)} == shown


def test_bad_level_in_env_names_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(LEVEL_ENV_VAR, "verbose")
    with pytest.raises(ValueError, match=rf"{LEVEL_ENV_VAR}='verbose'"):
        configure_logging(stream=io.StringIO())


def test_configuring_twice_does_not_duplicate_lines() -> None:
    first, second = io.StringIO(), io.StringIO()
    configure_logging("INFO", json=True, stream=first)
    configure_logging("INFO", json=True, stream=second)
    structlog.get_logger().info("ledger_opened")
    logging.getLogger("ccxt").warning("rate limited")

    assert first.getvalue() == ""
    assert [line["event"] for line in json_lines(second)] == ["ledger_opened", "rate limited"]
    pipeline_handlers = [h for h in logging.getLogger().handlers if type(h).__name__ == "_PipelineHandler"]
    assert len(pipeline_handlers) == 1


def test_noisy_libraries_stay_at_warning_unless_debug() -> None:
    out = io.StringIO()
    configure_logging("INFO", json=True, stream=out)
    ccxt_log = logging.getLogger("ccxt.base.exchange")
    ccxt_log.info("fetch GET /api/v3/klines")
    ccxt_log.warning("rate limit hit")
    logging.getLogger("bot.engine.core").info("own stdlib info passes")
    assert [line["event"] for line in json_lines(out)] == ["rate limit hit", "own stdlib info passes"]
    assert json_lines(out)[0]["logger"] == "ccxt.base.exchange"

    out = io.StringIO()
    configure_logging("DEBUG", json=True, stream=out)
    ccxt_log.info("fetch GET /api/v3/klines")
    assert [line["event"] for line in json_lines(out)] == ["fetch GET /api/v3/klines"]


def test_contextvars_reach_structlog_and_stdlib_lines() -> None:
    out = io.StringIO()
    configure_logging("INFO", json=True, stream=out)
    with bound_contextvars(run_id="run-7", bot_id="bot-1", symbol="BTC/USDT", client_order_id="cid-42"):
        structlog.get_logger().info("order_submitted")
        logging.getLogger("ccxt").warning("order rejected by venue")
    structlog.get_logger().info("outside_context")

    inside = json_lines(out)[:2]
    for line in inside:
        assert (line["run_id"], line["bot_id"], line["symbol"], line["client_order_id"]) == (
            "run-7",
            "bot-1",
            "BTC/USDT",
            "cid-42",
        )
    assert "run_id" not in json_lines(out)[2]


async def test_contextvars_stay_per_task() -> None:
    async def trade(symbol: str) -> None:
        with bound_contextvars(symbol=symbol):
            await asyncio.sleep(0)  # yield so the two tasks interleave
            structlog.get_logger().info("tick_received")

    with structlog.testing.capture_logs(processors=[structlog.contextvars.merge_contextvars]) as events:
        async with asyncio.TaskGroup() as group:
            group.create_task(trade("BTC/USDT"), name="feed:BTC/USDT")
            group.create_task(trade("ETH/USDT"), name="feed:ETH/USDT")
    assert sorted(e["symbol"] for e in events) == ["BTC/USDT", "ETH/USDT"]


def test_redaction_by_key_name_including_nested_values() -> None:
    headers = {"X-MBX-APIKEY": "abcdef123456", "Content-Type": "application/json"}
    with structlog.testing.capture_logs(processors=[redact_event]) as events:
        structlog.get_logger().info(
            "exchange_connected",
            api_key="k1k1k1k1",
            apiKey="k2k2k2k2",
            SECRET="s3s3s3s3",
            wandb_api_key="w4w4w4w4",
            password="p5p5p5p5",
            access_token="t6t6t6t6",
            private_key="pk7pk7pk7",
            request={"headers": headers, "params": [{"signature": "ok", "passphrase": "pp8pp8"}]},
            missing_token=None,
            max_tokens=512,
            symbol="BTC/USDT",
        )
    (event,) = events
    for key in ("api_key", "apiKey", "SECRET", "wandb_api_key", "password", "access_token", "private_key"):
        assert event[key] == MASK, key
    assert event["request"]["headers"] == {"X-MBX-APIKEY": MASK, "Content-Type": "application/json"}
    assert event["request"]["params"] == [{"signature": "ok", "passphrase": MASK}]
    assert event["missing_token"] is None
    assert event["max_tokens"] == 512
    assert event["symbol"] == "BTC/USDT"
    assert headers["X-MBX-APIKEY"] == "abcdef123456"  # the caller's dict is not modified


def test_secret_key_names() -> None:
    for name in ("api_key", "apiKey", "API-KEY", "client_secret", "Authorization", "passwd", "token", "bot_token"):
        assert is_secret_key(name), name
    for name in ("symbol", "max_tokens", "token_count", "client_order_id", "keys_seen", "price"):
        assert not is_secret_key(name), name


def test_known_secret_values_are_redacted_from_events_and_nested_strings() -> None:
    register_secret(SECRET + "\n")  # values read from files keep their newline; it is stripped
    with structlog.testing.capture_logs(processors=[redact_event]) as events:
        structlog.get_logger().warning(
            f"auth header was Bearer {SECRET}",
            url=f"https://api.example.com/order?key={SECRET}&x=1",
            nested={"list": [f"a{SECRET}b", 3]},
        )
    (event,) = events
    assert event["event"] == f"auth header was Bearer {MASK}"
    assert event["url"] == f"https://api.example.com/order?key={MASK}&x=1"
    assert event["nested"] == {"list": [f"a{MASK}b", 3]}


def test_known_secrets_are_redacted_from_rendered_json_exceptions_and_stdlib_lines() -> None:
    out = io.StringIO()
    configure_logging("INFO", json=True, stream=out, secrets=[SECRET])
    log = structlog.get_logger()
    ccxt_log = logging.getLogger("ccxt")
    try:
        raise PermissionError(f"binance 401: invalid key {SECRET}")
    except PermissionError:
        log.exception("balance_fetch_failed")
        ccxt_log.exception("request failed")
    ccxt_log.warning("GET https://api.binance.com/api/v3/account?apiKey=%s", SECRET)
    ccxt_log.error("signed request", extra={"secret": "whatever", "detail": f"k={SECRET}"})
    log.info("object_logged", thing=PermissionError(SECRET))

    text = out.getvalue()
    assert SECRET not in text
    lines = json_lines(out)
    assert [line["event"] for line in lines] == [
        "balance_fetch_failed",
        "request failed",
        f"GET https://api.binance.com/api/v3/account?apiKey={MASK}",
        "signed request",
        "object_logged",
    ]
    for line in lines[:2]:
        assert f"PermissionError: binance 401: invalid key {MASK}" in line["exception"]
    assert lines[1]["logger"] == "ccxt"
    assert (lines[3]["secret"], lines[3]["detail"]) == (MASK, f"k={MASK}")
    assert lines[4]["thing"] == MASK


def test_known_secrets_are_redacted_from_console_tracebacks() -> None:
    out = io.StringIO()
    configure_logging("INFO", json=False, stream=out, secrets=[SECRET])
    try:
        raise PermissionError(f"invalid key {SECRET}")
    except PermissionError:
        structlog.get_logger().exception("balance_fetch_failed")
        logging.getLogger("ccxt").exception("request failed")
    text = out.getvalue()
    assert SECRET not in text
    assert text.count(f"PermissionError: invalid key {MASK}") == 2


def test_secret_with_json_special_characters_is_redacted_after_escaping() -> None:
    awkward = 'pa"ss\\word99'
    out = io.StringIO()
    configure_logging("INFO", json=True, stream=out)
    register_secret(awkward)
    structlog.get_logger().info("login", note=f"used {awkward}", obj=[object(), awkward])
    assert json_lines(out)[0]["note"] == f"used {MASK}"
    assert "word99" not in out.getvalue()


def test_short_values_are_not_treated_as_secrets() -> None:
    register_secret("abc")
    register_secret("   ")
    assert redact_text("abc and abcd") == "abc and abcd"
    with pytest.raises(TypeError, match="expects a str"):
        register_secret(1234)  # type: ignore[arg-type]


def test_reset_logging_removes_the_handler_and_forgets_secrets() -> None:
    configure_logging("INFO", json=True, stream=io.StringIO(), secrets=[SECRET])
    reset_logging()
    assert not [h for h in logging.getLogger().handlers if type(h).__name__ == "_PipelineHandler"]
    assert redact_text(SECRET) == SECRET


_ALNUM = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789-_", max_size=20)


@given(
    secret=st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789", min_size=4, max_size=24),
    prefix=_ALNUM,
    suffix=_ALNUM,
)
def test_registered_secret_never_survives_redaction(secret: str, prefix: str, suffix: str) -> None:
    reset_logging()
    register_secret(secret)
    redacted = redact_text(prefix + secret + suffix + secret)
    assert secret not in redacted
    assert MASK in redacted
