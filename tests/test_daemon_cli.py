"""`ai-trading bot` / `python -m bot`: backtest end to end, live-mode guard, model card refusal, config errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest

from adapters.data.ohlcv import load_ohlcv
from adapters.data.sample import sample_path
from bot import __main__ as bot_main
from bot.__main__ import main, normalise_overrides
from bot.errors import StartupError
from bot.ledger.schema import LedgerError
from bot.ledger.types import StaleOrderState
from bot.orders.reconciliation import ReconciliationError
from monitoring.logging import reset_logging
from tests.support.policy_model import corrupt_card, export_policy, fitted_spec, mismatch_sha, random_weights

REPO = Path(__file__).resolve().parents[1]
NO_LIMITS = [
    "bot.risk.max_position_notional=1e12",
    "bot.risk.max_total_notional=1e12",
    "bot.risk.max_order_notional=1e12",
    "bot.risk.max_orders_per_minute=1000",
    "bot.risk.max_daily_loss=1",
    "bot.risk.max_drawdown=1",
    "bot.risk.reduce_at=1",
]


@pytest.fixture(autouse=True)
def _logging() -> Iterator[None]:
    yield
    reset_logging()


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    frame = load_ohlcv(sample_path())
    spec = fitted_spec(frame, train_rows=40_000, window=16)
    out = tmp_path_factory.mktemp("cli-model")
    export_policy(out, spec, random_weights(spec, 2, seed=0), (0.0, 1.0))
    return out


@pytest.mark.integration
def test_backtest_runs_end_to_end_without_torch(model_dir: Path, tmp_path: Path) -> None:
    args = [
        "mode=backtest",
        f"model_path={model_dir / 'best_model.onnx'}",
        "bot.start=2024-01-01",
        "bot.end=2024-03-01",
        f"output_dir={tmp_path}",
        "run_name=bt",
        *NO_LIMITS,
    ]
    code = (
        "import sys; from bot.__main__ import main; rc = main(sys.argv[1:]); "
        "assert 'torch' not in sys.modules, 'the daemon imported torch'; "
        "assert not any(m == 'training' or m.startswith('training.') for m in sys.modules), 'imported training'; "
        "sys.exit(rc)"
    )
    env = {**os.environ, "AI_TRADING_LOG_LEVEL": "WARNING"}
    done = subprocess.run(
        [sys.executable, "-c", code, *args], cwd=REPO, capture_output=True, text=True, timeout=120, env=env
    )
    assert done.returncode == 0, done.stderr
    assert "total return" in done.stdout and "buy_and_hold" in done.stdout
    assert "candles/s" in done.stdout
    summary = json.loads((tmp_path / "bt" / "summary.json").read_text())
    policy = summary["evaluation"]["backtest"]["policy"]
    trades = pd.read_parquet(tmp_path / "bt" / "trades-backtest.parquet")
    assert policy["trade_count"] == len(trades) > 0
    assert summary["candles"] == 31 * 24 + 29 * 24
    equity = pd.read_parquet(tmp_path / "bt" / "equity-backtest.parquet")
    assert policy["final_equity"] == pytest.approx(equity["equity"].iloc[-1])
    assert json.loads((tmp_path / "bt" / "config.json").read_text())["bot"]["mode"] == "backtest"


def test_live_mode_refuses_without_confirmation(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], model_dir: Path
) -> None:
    monkeypatch.delenv("AI_TRADING_CONFIRM_LIVE", raising=False)
    monkeypatch.setenv("AI_TRADING_BINANCE_API_KEY", "k" * 16)
    monkeypatch.setenv("AI_TRADING_BINANCE_SECRET", "s" * 16)
    assert main(["mode=live", f"model_path={model_dir / 'best_model.onnx'}"]) == 2
    assert "bot.confirm_live=true" in capsys.readouterr().err


def test_live_mode_refuses_without_keys(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], model_dir: Path
) -> None:
    for name in list(os.environ):
        if name.startswith("AI_TRADING_BINANCE_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("AI_TRADING_CONFIRM_LIVE", "1")
    assert main(["mode=live", f"model_path={model_dir / 'best_model.onnx'}"]) == 2
    err = capsys.readouterr().err
    assert "mode=live needs API keys" in err and "AI_TRADING_BINANCE_API_KEY" in err


@pytest.mark.parametrize(("damage", "message"), [(corrupt_card, "invalid JSON"), (mismatch_sha, "sha256 mismatch")])
def test_a_corrupt_or_mismatched_card_stops_the_start(
    damage: object, message: str, model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    target = tmp_path / "model"
    target.mkdir()
    for name in ("best_model.onnx", "best_model.json"):
        (target / name).write_bytes((model_dir / name).read_bytes())
    damage(target / "best_model.onnx")  # type: ignore[operator]
    assert main(["mode=paper", f"model_path={target / 'best_model.onnx'}"]) == 2
    err = capsys.readouterr().err
    assert "model refused" in err and message in err


def test_bad_config_names_the_key_and_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bot.risk.max_drawdown=lots"]) == 2
    assert "bot.risk.max_drawdown" in capsys.readouterr().err
    assert main(["bot.modee=paper"]) == 2
    assert "bot.modee" in capsys.readouterr().err
    assert main(["mode=sideways"]) == 2
    assert "bot.mode" in capsys.readouterr().err


def test_help_lists_the_overridable_keys(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for key in (
        "bot.mode",
        "bot.model_path",
        "bot.confirm_live",
        "bot.risk.max_drawdown",
        "exchange.exchange_id",
        "wandb.enabled",
        "data.path",
        "costs.taker_fee_bps",
    ):
        assert key in out
    assert normalise_overrides(["mode=live", "data.path=x", "confirm_live=true"]) == [
        "bot.mode=live",
        "data.path=x",
        "bot.confirm_live=true",
        "data.start=null",
        "data.end=null",
    ]
    assert normalise_overrides(["data.path=x", "data.start=2024-01-01"]) == [
        "data.path=x",
        "data.start=2024-01-01",
        "data.end=null",
    ]


# --------------------------------------------------------------------------------------------- card and data agree


def _run_bot(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "AI_TRADING_LOG_LEVEL": "WARNING"}
    return subprocess.run(
        [sys.executable, "-m", "bot", *args], cwd=REPO, capture_output=True, text=True, timeout=timeout, env=env
    )


def _one_line_error(done: subprocess.CompletedProcess[str]) -> str:
    """The stderr line of a refused start: exactly one `ai-trading bot:` line, no traceback."""
    assert "Traceback" not in done.stderr, done.stderr
    lines = [line for line in done.stderr.splitlines() if line.startswith("ai-trading bot:")]
    assert len(lines) == 1, done.stderr
    return lines[0]


@pytest.fixture(scope="module")
def card_1h(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A model whose card says it was trained on BTC/USDT 1h candles."""
    frame = load_ohlcv(sample_path())
    spec = fitted_spec(frame, train_rows=40_000, window=16)
    out = tmp_path_factory.mktemp("card-1h")
    data_range = {"start": "2017-08-17", "end": "2023-12-31", "timeframe": "1h", "symbol": "BTC/USDT"}
    return export_policy(out, spec, random_weights(spec, 2, seed=0), (0.0, 1.0), data_range=data_range)


@pytest.fixture(scope="module")
def file_5m(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """3,000 of the bundled candles relabelled as 5m candles."""
    frame = load_ohlcv(sample_path()).iloc[-3000:].copy()
    frame.index = pd.date_range("2024-01-01", periods=len(frame), freq="5min", tz="UTC", name=frame.index.name)
    path = tmp_path_factory.mktemp("data-5m") / "BTC_USDT-5m.parquet"
    frame.to_parquet(path)
    return path


@pytest.fixture(scope="module")
def file_2020(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The bundled 1h candles of 2020 only: a user's own file that ends before the bundled `data.start`."""
    frame = load_ohlcv(sample_path())
    frame = frame[(frame.index >= "2020-01-01") & (frame.index < "2020-04-01")]
    path = tmp_path_factory.mktemp("data-2020") / "BTC_USDT-1h-2020.parquet"
    frame.to_parquet(path)
    return path


@pytest.mark.integration
def test_a_file_of_another_timeframe_than_the_card_is_refused_with_exit_2(
    card_1h: Path, file_5m: Path, tmp_path: Path
) -> None:
    done = _run_bot("mode=backtest", f"model_path={card_1h}", f"data.path={file_5m}", f"output_dir={tmp_path}")
    assert done.returncode == 2, done.stderr
    line = _one_line_error(done)
    assert "1h" in line and "5m" in line and "timeframe" in line, line


@pytest.mark.integration
def test_a_feed_of_another_timeframe_than_the_card_is_refused_with_exit_2(card_1h: Path, tmp_path: Path) -> None:
    # Refused before anything talks to the exchange: the feed's timeframe is the configured one.
    done = _run_bot("mode=paper", f"model_path={card_1h}", "bot.timeframe=5m", f"output_dir={tmp_path}")
    assert done.returncode == 2, done.stderr
    line = _one_line_error(done)
    assert "model card timeframe 1h" in line and "feed timeframe 5m" in line, line


@pytest.mark.integration
def test_another_symbol_than_the_cards_is_warned_about_once(card_1h: Path, file_2020: Path, tmp_path: Path) -> None:
    done = _run_bot(
        "mode=backtest",
        f"model_path={card_1h}",
        f"data.path={file_2020}",
        "data.symbol=ETH/USDT",
        f"output_dir={tmp_path}",
    )
    assert done.returncode == 0, done.stderr
    logs = done.stdout + done.stderr
    assert logs.count("model_symbol_differs") == 1, logs[-2000:]


@pytest.mark.integration
def test_a_users_file_is_backtested_over_its_own_span(card_1h: Path, file_2020: Path, tmp_path: Path) -> None:
    # The bundled data's data.start (2023-01-01) is after this file's end: the file's own span is the window.
    done = _run_bot(
        "mode=backtest", f"model_path={card_1h}", f"data.path={file_2020}", f"output_dir={tmp_path}", "run_name=own"
    )
    assert done.returncode == 0, done.stderr
    summary = json.loads((tmp_path / "own" / "summary.json").read_text())
    assert summary["window"]["start"].startswith("2020-01-01")
    assert summary["candles"] == len(load_ohlcv(file_2020))


@pytest.mark.integration
@pytest.mark.parametrize(
    ("window", "words"),
    [
        (["bot.start=2021-01-01"], ("bot.start 2021-01-01", "after the data")),
        (["bot.end=2019-01-01"], ("bot.end 2019-01-01", "before the data")),
        (["bot.start=2020-02-01", "bot.end=2020-01-15"], ("bot.end", "not after bot.start")),
        (["bot.start=2020-02-01T00:00", "bot.end=2020-02-01T01:00"], ("holds 1 candles",)),
        (["bot.start=yesterday-ish"], ("bot.start", "not a date")),
    ],
)
def test_a_bad_backtest_window_is_one_line_and_exit_2(
    window: list[str], words: tuple[str, ...], card_1h: Path, file_2020: Path, tmp_path: Path
) -> None:
    done = _run_bot(
        "mode=backtest", f"model_path={card_1h}", f"data.path={file_2020}", f"output_dir={tmp_path}", *window
    )
    assert done.returncode == 2, done.stderr
    line = _one_line_error(done)
    for word in words:
        assert word in line, line


# --------------------------------------------------------------------------------------------- progress


@pytest.mark.integration
def test_a_backtest_shows_progress_a_bar_on_a_terminal_and_quarters_off_one(
    card_1h: Path, file_2020: Path, tmp_path: Path
) -> None:
    import fcntl
    import pty
    import struct
    import termios

    args = ["mode=backtest", f"model_path={card_1h}", f"data.path={file_2020}", f"output_dir={tmp_path}"]
    candles = len(load_ohlcv(file_2020))
    # Off a terminal (captured, as in CI and under systemd): a progress line at each quarter and one at the end.
    done = _run_bot(*args, "run_name=piped", "log_level=INFO")
    assert done.returncode == 0, done.stderr
    lines = [json.loads(line) for line in (done.stdout + done.stderr).splitlines() if '"event": "progress' in line]
    step = candles // 4
    assert [line["done"] for line in lines] == [*range(step, candles, step), candles]
    assert 4 <= len(lines) <= 5  # a handful, never one per candle
    assert lines[-1]["event"] == "progress_done" and all(line["task"] == "backtest" for line in lines)

    # On a terminal (stderr is a pseudo-terminal here): a tqdm bar with the count, the rate and the ETA.
    leader, follower = pty.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 120, 0, 0))  # a terminal has a size
    env = {**os.environ, "AI_TRADING_LOG_LEVEL": "WARNING"}
    with subprocess.Popen(
        [sys.executable, "-m", "bot", *args, "run_name=tty"],
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=follower,
        env=env,
    ) as proc:
        os.close(follower)
        chunks = []
        while True:
            try:
                chunk = os.read(leader, 4096)
            except OSError:  # the child closed its end
                break
            if not chunk:
                break
            chunks.append(chunk)
        assert proc.wait(timeout=120) == 0
    os.close(leader)
    screen = b"".join(chunks).decode(errors="replace")
    assert "backtest: 100%" in screen and f"/{candles / 1000:.2f}k" in screen and "candle/s" in screen, screen[-500:]


@pytest.mark.parametrize(
    ("error", "code", "line", "event"),
    [
        (
            ReconciliationError(["BTC 1 on the venue, 0 in the book"]),
            3,
            "refusing to trade: reconciliation failed",
            "daemon_refused_to_trade",
        ),
        (LedgerError("schema version 9 is newer"), 3, "ledger unusable: schema version 9", "daemon_ledger_unusable"),
        (StaleOrderState("order c1 was not sent"), 3, "ledger unusable: order c1", "daemon_ledger_unusable"),
        (StartupError("exchange unreachable"), 1, "exchange unreachable", "daemon_start_failed"),
    ],
)
def test_each_error_the_run_raises_exits_with_its_code_in_one_line(
    error: Exception,
    code: int,
    line: str,
    event: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # The mode's own run is replaced (what raises each error is tested where it is raised): under test is the
    # mapping to exit codes from the error types alone (bot/errors.py), as systemd's RestartPreventExitStatus
    # reads them, with one line for the user and the error logged as its event.
    def run_mode(cfg: object) -> None:
        raise error

    monkeypatch.setattr(bot_main, "run_mode", run_mode)
    assert main(["mode=paper"]) == code
    err = capsys.readouterr().err
    said = [text for text in err.splitlines() if text.startswith("ai-trading bot:")]
    assert len(said) == 1 and said[0].startswith(f"ai-trading bot: {line}"), err
    assert "Traceback" not in err
    logged = [json.loads(text)["event"] for text in err.splitlines() if text.startswith("{")]
    assert logged == [event], err
