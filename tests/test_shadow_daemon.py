"""Shadow models in the running paper daemon: one live and two shadow models on the same candles, one promoted
by `ai-trading ctl promote`, everything read back from the real sinks.

The daemon trades against the local Binance-wire server with the shipped defaults (config/bot/default.yaml, no
risk limit lifted), publishes to a real Mosquitto, is scraped by a real Prometheus and logs to an offline W&B run.
Candles are released one at a time by the test (tests/test_daemon_sinks.py's gated clock); the test synchronises
on MQTT messages and Prometheus queries, never on sleeps. Shadow ``b`` observes other features (window 8) than
the live model (window 16).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
from pathlib import Path
from typing import Any

import pytest

from adapters.data.ohlcv import load_ohlcv
from adapters.data.sample import sample_path
from bot.ledger.shadows import mark_rows, shadow_order_rows, shadow_trade_rows
from bot.ledger.store import Ledger
from bot.model.drift import fit_feature_distribution
from bot.model.features import candle_arrays, compute_features
from bot.model.policy import OnnxPolicy
from tests.support.binance_server import BinanceServer
from tests.support.mosquitto import MosquittoBroker, mosquitto, mosquitto_factory  # noqa: F401 - fixtures
from tests.support.policy_model import export_policy, fitted_spec, random_weights
from tests.support.prometheus import PrometheusServer
from tests.support.wandb_runs import offline_runs
from tests.test_ctl import run_ctl
from tests.test_daemon_sinks import BOT_ID, NAMESPACE, WAIT_S, GatedClock, Inbox, operator, run_bot, step
from tests.test_engine import T0, paper_config

pytestmark = pytest.mark.integration

MAX_CANDLES = 150


def _events(inbox: Inbox, kind: str, model: str | None = None) -> list[dict[str, Any]]:
    return [
        m.body
        for m in inbox.all
        if m.topic == "events" and m.body["type"] == kind and (model is None or m.body.get("model") == model)
    ]


async def _caught_up(inbox: Inbox, candles: int, models: list[str]) -> None:
    """Wait until each shadow in `models` published its mark of the `candles`-th released candle."""
    async with asyncio.timeout(WAIT_S):
        while any(len(_events(inbox, "shadow_equity", m)) < candles for m in models):
            await inbox.expect(lambda m: m.topic == "events" and m.body["type"] == "shadow_equity")


async def test_a_paper_daemon_runs_two_shadows_and_promotes_one(
    binance_server: BinanceServer,
    mosquitto: MosquittoBroker,  # noqa: F811 - fixture
    prometheus: PrometheusServer,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for key, value in {
        "WANDB_MODE": "offline",
        "WANDB_DIR": str(tmp_path),
        "WANDB_CACHE_DIR": str(tmp_path / "wandb-cache"),
        "WANDB_CONFIG_DIR": str(tmp_path / "wandb-config"),
        "WANDB_SILENT": "true",
    }.items():
        monkeypatch.setenv(key, value)
    frame = load_ohlcv(sample_path("BTC/USDT-1h"))
    spec = fitted_spec(frame, train_rows=40_000, window=16)
    narrow = fitted_spec(frame, train_rows=40_000, window=8)
    # The cards carry the training split's feature distribution: the drift monitor watches the live model's.
    raw, valid = compute_features(spec, *candle_arrays(frame.iloc[:40_000]))
    distribution = fit_feature_distribution(spec.names, raw, valid)
    live = export_policy(
        tmp_path / "m",
        spec,
        random_weights(spec, 2, seed=0),
        (0.0, 1.0),
        name="live",
        feature_distribution=distribution,
    )
    shadow_a = export_policy(
        tmp_path / "m",
        spec,
        random_weights(spec, 2, seed=1),
        (0.0, 1.0),
        name="shadow-a",
        feature_distribution=distribution,
    )
    shadow_b = export_policy(tmp_path / "m", narrow, random_weights(narrow, 2, seed=2), (0.0, 1.0), name="shadow-b")
    policy, promoted = OnnxPolicy.load(live), OnnxPolicy.load(shadow_a)
    clock = GatedClock(T0 + 30 * 60_000)
    binance_server.market_clock_ms = clock
    cfg = paper_config(
        tmp_path,
        live,
        [
            f"bot.bot_id={BOT_ID}",
            "bot.heartbeat_interval_s=3600",
            f"bot.shadow_models=[{shadow_a},{shadow_b}]",
            "mqtt.enabled=true",
            f"mqtt.host={mosquitto.host}",
            f"mqtt.port={mosquitto.port}",
            f"mqtt.namespace={NAMESPACE}",
            "mqtt.reconnect_min_s=0.05",
            "mqtt.reconnect_max_s=0.2",
            "metrics.enabled=true",
            f"metrics.port={prometheus.target_port}",
            "wandb.enabled=true",
            "wandb.mode=offline",
            # Drift needs bot.drift.min_samples (720) candles and runs hourly by default: a test of minutes checks
            # it every second once 40 candles were seen (the computation is the default's).
            "bot.drift.schedule='* * * * * *'",
            "bot.drift.min_samples=40",
            f"output_dir={tmp_path / 'outputs'}",
        ],
    )
    broker = ["--host", mosquitto.host, "--port", str(mosquitto.port), "--bot-id", BOT_ID]
    async with operator(mosquitto) as inbox:
        daemon = asyncio.create_task(run_bot(binance_server, clock, cfg, policy), name="daemon")
        try:
            await inbox.expect(lambda m: m.topic == "status" and m.body["state"] == "running")
            # --- both shadows trade their virtual books on the live candles -----------------------------------
            candles = 0
            while candles < MAX_CANDLES and not all(
                _events(inbox, "shadow_trade_closed", m) for m in ("shadow-a", "shadow-b")
            ):
                await step(clock, inbox)
                candles += 1
                await _caught_up(inbox, candles, ["shadow-a", "shadow-b"])
            assert all(_events(inbox, "shadow_trade_closed", m) for m in ("shadow-a", "shadow-b")), candles
            # --- the drift gauges of the live features reach Prometheus ------------------------------------
            drift = await asyncio.to_thread(
                prometheus.wait_for,
                f'aitrading_feature_drift_psi{{bot_id="{BOT_ID}",mode="paper"}}',
                lambda r: len(r) == len(spec.names),
            )
            assert {r["metric"]["feature"] for r in drift} == set(spec.names)
            assert all(float(r["value"][1]) >= 0 for r in drift)
            status = json.loads((await run_ctl(*broker, "status"))[1])["result"]
            assert set(status["shadows"]["running"]) == {"shadow-a", "shadow-b"}
            assert status["model"]["sha256"] == policy.sha256

            # --- ctl promote: shadow-a becomes the live policy, shadow-b runs on ----------------------------
            rc, out, err = await run_ctl(*broker, "promote", "shadow-a")
            assert (rc, err) == (0, ""), err
            reply = json.loads(out)["result"]
            assert reply["sha256"] == promoted.sha256 and reply["previous_sha256"] == policy.sha256
            assert reply["position"] == "kept" and reply["demoted"] == "live-previous"
            assert reply["shadows"] == ["shadow-b", "live-previous"]  # the replaced model shadows on: the way back
            await inbox.expect(lambda m: m.topic == "events" and m.body["type"] == "model_promoted")
            rc, out, _ = await run_ctl(*broker, "promote", "shadow-a")  # no longer a shadow: refused, one line
            assert rc == 1 and "no shadow model named 'shadow-a'" in json.loads(out)["error"]["message"]
            for _ in range(MAX_CANDLES):
                messages = await step(clock, inbox)
                candles += 1
                await _caught_up(inbox, candles, ["shadow-b"])
                sent = [m.body for m in messages if m.body.get("type") == "order" and m.body["status"] == "sent"]
                if sent:
                    break
            assert sent and sent[0]["model_sha"] == promoted.sha256  # the promoted model trades now
            b_last = _events(inbox, "shadow_equity", "shadow-b")[-1]

            # --- Prometheus scrapes the shadows' gauges with their model label ------------------------------
            selector = f'bot_id="{BOT_ID}",mode="paper",model="shadow-b"'
            result = await asyncio.to_thread(
                prometheus.wait_for,
                f"aitrading_shadow_equity{{{selector}}}",
                lambda r: len(r) == 1 and float(r[0]["value"][1]) == pytest.approx(float(b_last["equity"])),
            )
            assert float(result[0]["value"][1]) == pytest.approx(float(b_last["equity"]))
            trades_a = len(_events(inbox, "shadow_trade_closed", "shadow-a"))
            await asyncio.to_thread(
                prometheus.wait_for,
                f'sum(aitrading_shadow_trades_closed_total{{bot_id="{BOT_ID}",model="shadow-a"}})',
                lambda r: len(r) == 1 and float(r[0]["value"][1]) == trades_a,
            )

            os.kill(os.getpid(), signal.SIGTERM)
            async with asyncio.timeout(WAIT_S):
                engine = await daemon
        finally:
            if not daemon.done():
                daemon.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await daemon
    assert engine.policy.sha256 == promoted.sha256

    # --- the ledger holds the shadows' trades and would-be orders apart from the bot's own -------------------
    with Ledger(f"sqlite:///{tmp_path}/paper.db") as ledger:
        for model in ("shadow-a", "shadow-b"):
            trades = shadow_trade_rows(ledger, model)
            published = _events(inbox, "shadow_trade_closed", model)
            assert [str(t.trade.realized_pnl) for t in trades] == [e["realized_pnl"] for e in published]
        orders = shadow_order_rows(ledger)
        assert {"shadow-a", "shadow-b"} <= {model for model, *_ in orders} <= {"shadow-a", "shadow-b", "live-previous"}
        own = {o.client_order_id for o in ledger.orders()}
        assert own and not own & {cid for _, cid, *_ in orders}  # a virtual order never reaches the bot's book
        marks = mark_rows(ledger)
        assert {m.model for m in marks} == {"live", "shadow-a", "shadow-b", "live-previous"}
        last_a = max(m.ts for m in marks if m.model == "shadow-a")
        assert max(m.ts for m in marks if m.model == "shadow-b") > last_a  # a stopped shadowing when promoted
        promotions = [json.loads(p) for p in ledger.event_payloads("model_promoted")]
    assert [(p["model"], p["sha256"], p["position"]) for p in promotions] == [("shadow-a", promoted.sha256, "kept")]

    # --- W&B: the shadows' keys beside live/* in the daemon's offline run --------------------------------------
    (run,) = offline_runs(tmp_path)
    keys = run.logged_keys()
    assert {"shadow/shadow-a/equity", "shadow/shadow-b/equity", "shadow/shadow-b/realized_pnl"} <= keys
    assert "live/equity" in keys
