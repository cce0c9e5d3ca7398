"""Shadow models on the one engine: a replay feed and the paper venue (as in tests/test_engine.py), the shipped
default config, the bundled candles and a real SQLite ledger.

- A shadow with the live model's weights (another card, so another sha256) trades exactly like the live bot: same
  round trips, same equity at every close. The shadow's virtual book is the paper venue's fill model.
- `promote` with ``bot.promote_position=flatten`` swaps in a shadow with other features mid-run.
- A shadow that fails at run time is dropped with an alert; the other shadow and the live bot trade on.
- Shadows that cannot run are refused at start with one line naming the config key.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from structlog.testing import capture_logs

from adapters.data.ohlcv import load_ohlcv
from adapters.data.sample import sample_path
from adapters.types import Candle
from bot.__main__ import main
from bot.app_config import BotAppConfig
from bot.config import load_config
from bot.engine.core import Engine
from bot.errors import ConfigError, ModelRefused
from bot.events import AlertEvent
from bot.ledger.shadows import mark_rows, shadow_trade_rows
from bot.ledger.store import Ledger
from bot.model.policy import OnnxPolicy
from bot.startup import load_shadows, unkept_promotion
from tests.support.policy_model import export_policy, fitted_spec, random_weights
from tests.support.shadow_replay import replay

START = pd.Timestamp("2024-01-03", tz="UTC").to_pydatetime()
END = pd.Timestamp("2024-01-24", tz="UTC").to_pydatetime()


@dataclass(frozen=True)
class Models:
    live: Path
    twin: Path
    """The live weights under another card."""
    narrow: Path
    """Other weights on other features (window 8)."""


@pytest.fixture(scope="module")
def frame() -> pd.DataFrame:
    return load_ohlcv(sample_path("BTC/USDT-1h"))


@pytest.fixture(scope="module")
def models(frame: pd.DataFrame, tmp_path_factory: pytest.TempPathFactory) -> Models:
    root = tmp_path_factory.mktemp("shadow-models")
    spec = fitted_spec(frame, train_rows=40_000, window=16)
    narrow = fitted_spec(frame, train_rows=40_000, window=8)
    weights = random_weights(spec, 2, seed=0)
    return Models(
        live=export_policy(root, spec, weights, (0.0, 1.0), name="live"),
        twin=export_policy(root, spec, weights, (0.0, 1.0), name="twin", metrics={"copy_of": "live"}),
        narrow=export_policy(root, narrow, random_weights(narrow, 2, seed=3), (0.0, 1.0), name="narrow"),
    )


@pytest.mark.parametrize(
    "overrides",
    [(), ("bot.risk.stop_loss=0.005",)],
    ids=["defaults", "with a stop-loss"],  # a tight stop (off by default) makes both sides send stop exits
)
async def test_a_shadow_of_the_live_weights_trades_exactly_like_the_live_bot(
    tmp_path: Path, frame: pd.DataFrame, models: Models, overrides: tuple[str, ...]
) -> None:
    with capture_logs() as logs:
        run = await replay(
            tmp_path, frame, models.live, [models.twin, models.narrow], start=START, end=END, overrides=overrides
        )
    assert run.pool.steps == run.engine.stats.candles == 21 * 24
    with Ledger(run.ledger_url) as ledger:
        live = ledger.closed_trades()
        twin = [t.trade for t in shadow_trade_rows(ledger, "twin")]
        marks = mark_rows(ledger)
    assert len(live) >= 3, "the defaults trade"
    fields = ("symbol", "side", "qty", "entry_price", "exit_price", "realized_pnl", "fees", "opened_at", "closed_at")
    assert [[getattr(t, f) for f in fields] for t in twin] == [[getattr(t, f) for f in fields] for t in live]
    by_model: dict[str, dict[Any, Any]] = {}
    for mark in marks:
        by_model.setdefault(mark.model, {})[mark.ts] = (mark.target, mark.equity)
    assert by_model["twin"] == by_model["live"]  # the same target and book equity at every close
    assert run.pool.get("twin").agreement == 1.0
    if overrides:  # the stop exits were there to match: the live bot's and the twin's
        stops = [e.get("shadow") for e in logs if e["event"] == "stop_loss_triggered"]
        assert stops.count(None) >= 1 and stops.count("twin") == stops.count(None)
    assert run.pool.get("narrow").agreement is not None and run.pool.get("narrow").agreement < 1.0
    # A shadow never touches the bot's ledger: every order there was decided by the live model.
    with Ledger(run.ledger_url) as ledger:
        assert {ledger.order_model_sha(o.client_order_id) for o in ledger.orders()} == {run.engine.policy.sha256}


async def test_promote_with_flatten_swaps_in_a_shadow_with_other_features_and_the_replaced_model_is_the_way_back(
    tmp_path: Path, frame: pd.DataFrame, models: Models
) -> None:
    replies: list[asyncio.Task[Any]] = []
    narrow, live = OnnxPolicy.load(models.narrow), OnnxPolicy.load(models.live)
    promotions = {START + timedelta(days=5, hours=12): "narrow", START + timedelta(days=12): "live-previous"}

    def promote(engine: Engine, candle: Candle) -> None:
        if candle.open_time in promotions:
            replies.append(asyncio.ensure_future(engine.commands.promote(promotions[candle.open_time])))

    run = await replay(
        tmp_path,
        frame,
        models.live,
        [models.narrow, models.twin],
        start=START,
        end=END,
        overrides=("bot.promote_position=flatten",),
        on_candle=promote,
    )
    first, back = (r.result() for r in replies)
    assert first["position"] == "flattened" and first["features"] == "the shadow's"
    assert first["sha256"] == narrow.sha256 and first["shadows"] == ["twin", "live-previous"]
    # The replaced model shadowed on with the live features it had; promoting it again restores it.
    assert back["sha256"] == live.sha256 and back["previous_sha256"] == narrow.sha256
    assert back["features"] == "the shadow's" and back["demoted"] == "narrow"
    assert run.engine.policy.sha256 == live.sha256
    state = run.engine.symbol_states["BTC/USDT"]
    assert state.features.spec.window == 16 and state.core.spec.window == 16
    promoted = [e for e in run.events if e.type == "model_promoted"]
    assert len(promoted) == 2
    with Ledger(run.ledger_url) as ledger:
        journal = [json.loads(p) for p in ledger.event_payloads("model_promoted")]
        orders = ledger.orders()
        shas = {o.client_order_id: ledger.order_model_sha(o.client_order_id) for o in orders}
        marks = mark_rows(ledger)
    assert [(j["model"], j["position"]) for j in journal] == [("narrow", "flattened"), ("live-previous", "flattened")]
    # After the flatten orders (sent by the replaced model, at the promotion) and before the way back.
    between = [o for o in orders if promoted[0].ts < o.created_at < promoted[1].ts]  # type: ignore[operator]
    assert between and {shas[o.client_order_id] for o in between} == {narrow.sha256}
    assert {m.model for m in marks if promoted[0].ts < m.ts <= promoted[1].ts} == {"live", "twin", "live-previous"}
    assert {m.model for m in marks if m.ts > promoted[1].ts} == {"live", "twin", "narrow"}
    # A restart runs bot.model_path again: the start says so when that is not the promoted model.
    with Ledger(run.ledger_url) as ledger:
        assert unkept_promotion(ledger, live) is None  # the last promotion brought the configured model back
        unkept = unkept_promotion(ledger, narrow)
        assert unkept is not None and "made live-previous" in unkept and "set bot.model_path to the promoted" in unkept


async def test_a_shadow_that_fails_is_dropped_with_an_alert_and_the_rest_trade_on(
    tmp_path: Path, frame: pd.DataFrame, models: Models, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A run-time failure of a shadow (what a corrupt model or a bug would raise) cannot be produced on demand
    # with a valid model: the twin's step is made to raise at its 100th candle.
    calls = [0]
    from bot.shadow.model import ShadowModel

    original = ShadowModel.step

    def failing_step(self: ShadowModel, candle: Candle, **kwargs: Any) -> Any:
        if self.name == "twin":
            calls[0] += 1
            if calls[0] == 100:
                raise RuntimeError("inference failed")
        return original(self, candle, **kwargs)

    monkeypatch.setattr(ShadowModel, "step", failing_step)
    run = await replay(tmp_path, frame, models.live, [models.twin, models.narrow], start=START, end=END)
    alerts = [e for e in run.events if isinstance(e, AlertEvent) and e.code == "shadow_dropped"]
    assert len(alerts) == 1 and "twin" in alerts[0].message and "inference failed" in alerts[0].message
    assert run.pool.failed == {"twin": "RuntimeError: inference failed"} and run.pool.names == ["narrow"]
    assert run.engine.stats.candles == run.pool.steps == 21 * 24
    with Ledger(run.ledger_url) as ledger:
        marks = mark_rows(ledger)
    assert sum(m.model == "twin" for m in marks) == 99
    assert sum(m.model == "narrow" for m in marks) == 21 * 24


def test_shadows_that_cannot_run_are_refused_at_start(tmp_path: Path, models: Models, frame: pd.DataFrame) -> None:
    live = OnnxPolicy.load(models.live)

    def shadows(*paths: Path | str) -> Any:
        listed = ",".join(str(p) for p in paths)
        cfg = load_config(BotAppConfig, [f"bot.model_path={models.live}", f"bot.shadow_models=[{listed}]"])
        return load_shadows(cfg, live, timeframe="1h")

    assert [name for name, _ in shadows(models.twin, models.narrow)] == ["twin", "narrow"]
    corrupt = tmp_path / "corrupt"
    corrupt.mkdir()
    (corrupt / "twin.onnx").write_bytes(models.twin.read_bytes())
    (corrupt / "twin.json").write_text("{not json")
    with pytest.raises(ModelRefused, match=r"shadow model refused \(bot\.shadow_models\[1\]\): .*invalid JSON"):
        shadows(models.narrow, corrupt / "twin.onnx")
    with pytest.raises(ConfigError, match=r"bot\.shadow_models\[1\] .*already named 'twin'"):
        other = tmp_path / "other"
        other.mkdir()
        spec = fitted_spec(frame, train_rows=40_000, window=16)
        shadows(models.twin, export_policy(other, spec, random_weights(spec, 2, seed=9), (0.0, 1.0), name="twin"))
    with pytest.raises(ConfigError, match=r"bot\.shadow_models\[0\] .*is the live model itself"):
        shadows(models.live)
    four_hours = tmp_path / "4h"
    four_hours.mkdir()
    spec = fitted_spec(frame, train_rows=40_000, window=16)
    slow = export_policy(
        four_hours,
        spec,
        random_weights(spec, 2, seed=4),
        (0.0, 1.0),
        name="slow",
        data_range={"start": "2020-01-01T00:00:00+00:00", "end": "2023-12-31T00:00:00+00:00", "timeframe": "4h"},
    )
    with pytest.raises(ModelRefused, match=r"bot\.shadow_models\[0\].*timeframe 4h"):
        shadows(slow)


def test_the_daemon_refuses_a_missing_shadow_in_one_line_with_exit_2(
    models: Models, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Refused before anything talks to the exchange (no network is needed to see it).
    missing = tmp_path / "gone.onnx"
    assert main(["mode=paper", f"model_path={models.live}", f"bot.shadow_models=[{missing}]"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    line = err.strip().splitlines()[-1]  # the lines before are the JSON log
    assert line.startswith("ai-trading bot: shadow model refused (bot.shadow_models[0]): ONNX file not found"), line


async def test_a_full_queue_drops_candles_for_the_shadows_and_a_shadow_that_missed_some_is_not_promoted(
    tmp_path: Path, frame: pd.DataFrame, models: Models
) -> None:
    # The replay hands candles back to back and the shadows step only between live decisions: with room for 8
    # candles the queue overflows, as it would behind a feed that delivers a backlog at once.
    attempts: list[asyncio.Task[Any]] = []

    def promote_at_day_five(engine: Engine, candle: Candle) -> None:
        if candle.open_time == START + timedelta(days=5):
            attempts.append(asyncio.ensure_future(engine.commands.promote("twin")))

    run = await replay(
        tmp_path,
        frame,
        models.live,
        [models.twin],
        start=START,
        end=END,
        overrides=("bot.shadow_queue_size=8",),
        on_candle=promote_at_day_five,
    )
    assert run.pool.dropped > 0 and run.pool.steps + run.pool.dropped == run.engine.stats.candles
    refusal = attempts[0].exception()
    assert isinstance(refusal, ValueError) and "promote refused: shadow twin missed" in str(refusal)
    assert run.engine.policy.sha256 == OnnxPolicy.load(models.live).sha256  # the live policy stayed
