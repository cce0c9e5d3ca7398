"""`ai-trading doctor` run as a user runs it (a subprocess), against real parts.

The exchange is ccxt against the local Binance-format server (tests/support/binance_server.py), the broker a
real Mosquitto, the ledger a SQLite file written by `bot.ledger.store.Ledger`, the model a small exported policy with
its card (tests/support/policy_model.py). Each failure is one line naming the problem and its fix, exit 1,
never a traceback.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import sqlite3
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest

from adapters.data.ohlcv import load_ohlcv
from adapters.data.sample import sample_path
from bot.ledger.store import Ledger
from tests.support.binance_server import API_KEY, SECRET, BinanceServer
from tests.support.mosquitto import MosquittoBroker, mosquitto, mosquitto_factory  # noqa: F401 - fixtures
from tests.support.policy_model import export_policy, fitted_spec, mismatch_sha, random_weights
from tests.support.services import free_port

ROOT = Path(__file__).resolve().parents[1]
KEYS = {"AI_TRADING_BINANCE_API_KEY": API_KEY, "AI_TRADING_BINANCE_SECRET": SECRET}


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    frame = load_ohlcv(sample_path())
    spec = fitted_spec(frame, train_rows=40_000, window=16)
    return export_policy(tmp_path_factory.mktemp("doctor-model"), spec, random_weights(spec, 2, seed=0), (0.0, 1.0))


def _exchange(server: BinanceServer) -> list[str]:
    return [f"exchange.api_url_override={server.url}", "exchange.enable_rate_limit=false", "exchange.stream=poll"]


async def _doctor(args: Sequence[str], env: Mapping[str, str] | None = None) -> tuple[int, str, str]:
    """Run the doctor in a subprocess without blocking this loop (the exchange server runs in it)."""
    environ = {k: v for k, v in os.environ.items() if not k.startswith("AI_TRADING_")}
    environ |= {"PYTHONPATH": str(ROOT), **(env or {})}
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "monitoring.doctor", *args, cwd=ROOT, env=environ,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(process.communicate(), timeout=120)  # a guard against a hung check
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


def _by_name(checks: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {c["name"]: c for c in checks}


@pytest.mark.integration
async def test_all_checks_pass_against_real_parts(
    model: Path,
    tmp_path: Path,
    binance_server: BinanceServer,
    mosquitto: MosquittoBroker,  # noqa: F811 - fixture
) -> None:
    with Ledger(f"sqlite:///{tmp_path / 'paper.db'}"):
        pass  # the ledger a paper daemon left behind: created, migrated, WAL
    args = [
        f"bot.model_path={model}",
        f"bot.ledger_dir={tmp_path}",
        *_exchange(binance_server),
        "mqtt.enabled=true",
        f"mqtt.host={mosquitto.host}",
        f"mqtt.port={mosquitto.port}",
        "metrics.enabled=true",
        f"metrics.port={free_port()}",
        "wandb.enabled=true",
    ]
    code, out, err = await _doctor(["--json", *args], KEYS)
    assert code == 0, out + err
    report = json.loads(out)
    checks = _by_name(report["checks"])
    assert report["ok"] is True
    assert list(checks) == ["config", "model", "ledger", "exchange", "mqtt", "metrics", "wandb"]
    assert all(c["status"] == "ok" for c in checks.values()), checks
    assert "card ok" in checks["model"]["detail"] and "WAL" in checks["ledger"]["detail"]
    assert "keys from AI_TRADING_BINANCE_API_KEY" in checks["exchange"]["detail"]
    assert "fetch_balance" in checks["exchange"]["detail"]
    # A signed balance request, and never an order.
    paths = [r.path for r in binance_server.requests]
    assert "/api/v3/account" in paths and not any(p.endswith("/order") for p in paths)

    # The same as text: one line per check, then the verdict.
    code, out, _ = await _doctor(args, KEYS)
    lines = out.strip().splitlines()
    assert code == 0 and len(lines) == 8 and lines[-1] == "doctor: all checks passed"
    assert all(line.startswith("ok ") for line in lines[:-1]), lines


@pytest.mark.integration
async def test_each_failure_is_one_line_with_its_fix(
    model: Path,
    tmp_path: Path,
    binance_server: BinanceServer,
    mosquitto: MosquittoBroker,  # noqa: F811 - fixture
) -> None:
    broken = tmp_path / "broken"
    broken.mkdir()
    bad_model = export_policy(broken, *_model_parts())
    mismatch_sha(bad_model)
    ledger = tmp_path / "paper.db"
    with sqlite3.connect(ledger) as conn:  # a SQLite file in rollback-journal mode, not the daemon's WAL
        conn.execute("CREATE TABLE t (x)")
    mosquitto.stop()  # the broker is down
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        code, out, err = await _doctor(
            [
                f"bot.model_path={bad_model}",
                f"bot.ledger_dir={tmp_path}",
                *_exchange(binance_server),
                "mqtt.enabled=true",
                f"mqtt.host={mosquitto.host}",
                f"mqtt.port={mosquitto.port}",
                "metrics.enabled=true",
                f"metrics.port={port}",
                "--timeout-s",
                "5",
            ],
            {"AI_TRADING_BINANCE_API_KEY": API_KEY, "AI_TRADING_BINANCE_SECRET": "wrong-secret"},
        )
    assert code == 1, out + err
    assert "Traceback" not in out + err
    lines = {line.split()[1]: line for line in out.strip().splitlines()[:-1]}
    assert lines["config"].startswith("ok")
    assert lines["model"].startswith("FAIL") and "sha256 mismatch" in lines["model"] and "->" in lines["model"]
    assert lines["ledger"].startswith("FAIL") and "not WAL" in lines["ledger"]
    assert lines["exchange"].startswith("FAIL") and "check the API key" in lines["exchange"]
    assert lines["mqtt"].startswith("FAIL") and "is the broker running?" in lines["mqtt"]
    assert lines["metrics"].startswith("FAIL") and f"127.0.0.1:{port}" in lines["metrics"]
    assert lines["metrics"].endswith("set metrics.port=...")
    assert lines["wandb"].startswith("skip")
    assert out.strip().splitlines()[-1] == "doctor: some checks FAILED"


def _model_parts() -> tuple[Any, ...]:
    frame = load_ohlcv(sample_path())
    spec = fitted_spec(frame, train_rows=40_000, window=16)
    return spec, random_weights(spec, 2, seed=0), (0.0, 1.0)


async def test_live_mode_without_keys_and_a_missing_model(tmp_path: Path) -> None:
    code, out, err = await _doctor(
        ["--json", "mode=live", f"bot.model_path={tmp_path / 'none.onnx'}", f"bot.ledger_dir={tmp_path}"]
    )
    assert code == 1 and "Traceback" not in err
    checks = _by_name(json.loads(out)["checks"])
    assert checks["model"]["status"] == "fail" and "no such file" in checks["model"]["detail"]
    assert "ai-trading train" in checks["model"]["fix"]
    assert checks["ledger"]["status"] == "ok" and "will be created" in checks["ledger"]["detail"]
    exchange = checks["exchange"]
    assert exchange["status"] == "fail" and "AI_TRADING_BINANCE_API_KEY" in exchange["fix"]


async def test_shadow_models_are_checked_as_the_daemon_loads_them(model: Path, tmp_path: Path) -> None:
    base = ["--json", "mode=live", f"bot.model_path={model}", f"bot.ledger_dir={tmp_path}"]
    frame = load_ohlcv(sample_path())
    spec = fitted_spec(frame, train_rows=40_000, window=16)
    good = export_policy(tmp_path / "ok", spec, random_weights(spec, 2, seed=5), (0.0, 1.0), name="candidate")
    code, out, err = await _doctor([*base, f"bot.shadow_models=[{good}]"])
    checks = _by_name(json.loads(out)["checks"])
    assert list(checks)[:3] == ["config", "model", "shadow models"] and "Traceback" not in err
    assert checks["shadow models"]["status"] == "ok" and checks["shadow models"]["detail"].startswith("candidate (")
    code, out, err = await _doctor([*base, f"bot.shadow_models=[{good},{model}]"])
    check = _by_name(json.loads(out)["checks"])["shadow models"]
    assert code == 1 and check["status"] == "fail" and "bot.shadow_models[1]" in check["detail"]
    assert "is the live model itself" in check["detail"] and "bot.shadow_models" in check["fix"]


async def test_a_bad_override_is_named() -> None:
    code, out, err = await _doctor(["training.lrr=1"])
    assert code == 1 and "Traceback" not in err
    assert out.startswith("FAIL  config") and "training.lrr" in out
    code, _, err = await _doctor(["not-an-override"])
    assert code == 2 and "expected KEY=VALUE" in err


def test_help_through_the_console_script_and_no_torch() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "bot.cli", "doctor", "--help"], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0 and "--json" in result.stdout and "KEY=VALUE" in result.stdout
    code = (
        "import sys, monitoring.doctor as d; d.main(['mode=backtest', 'bot.model_path=/nonexistent.onnx']); "
        "bad = [m for m in sys.modules if m == 'torch' or m.startswith('training')]; assert not bad, bad"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
