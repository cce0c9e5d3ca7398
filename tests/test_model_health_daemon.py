"""Model health switched on in the running paper daemon: live features reach the drift monitor, a stale model is
refused at start when the user asks for that.

The daemon runs in process against the local Binance-wire server (tests/support/binance_server.py) with the shipped
default config, as test_postgres_daemon.py runs it; the card carries the training split's feature distribution.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from adapters.data.ohlcv import load_ohlcv
from adapters.data.sample import sample_path
from bot.app_config import BotAppConfig
from bot.config import load_config
from bot.errors import ModelRefused
from bot.model.drift import fit_feature_distribution
from bot.model.features import candle_arrays, compute_features
from bot.model.policy import OnnxPolicy
from tests.support.binance_server import BinanceServer
from tests.support.policy_model import export_policy, fitted_spec, random_weights
from tests.test_postgres_daemon import T0, FakeClock, _run_paper


@pytest.fixture(scope="module")
def model_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    frame = load_ohlcv(sample_path())
    spec = fitted_spec(frame, train_rows=40_000, window=16)
    raw, valid = compute_features(spec, *candle_arrays(frame.iloc[:40_000]))
    return export_policy(
        tmp_path_factory.mktemp("health-model"),
        spec,
        random_weights(spec, 2, seed=0),
        (0.0, 1.0),
        feature_distribution=fit_feature_distribution(spec.names, raw, valid),
    )


def _config(tmp_path: Path, model_path: Path, candles: int, *extra: str) -> BotAppConfig:
    # The shipped defaults (config/bot/default.yaml) with no risk limit lifted: this test is about model health.
    return load_config(
        BotAppConfig,
        [
            "bot.mode=paper",
            f"bot.model_path={model_path}",
            f"bot.ledger_dir={tmp_path / 'state'}",
            f"output_dir={tmp_path / 'outputs'}",
            "bot.schedule.equity_snapshot=",
            "bot.schedule.reconciliation=",
            f"bot.max_candles={candles}",
            *extra,
        ],
    )


@pytest.mark.integration
async def test_the_paper_daemon_feeds_every_candles_features_to_the_drift_monitor(
    binance_server: BinanceServer, tmp_path: Path, model_path: Path
) -> None:
    policy = OnnxPolicy.load(model_path)
    assert policy.card.feature_distribution is not None
    clock = FakeClock(T0 + 30 * 60_000)
    binance_server.market_clock_ms = clock
    engine = await _run_paper(binance_server, _config(tmp_path, model_path, 30), clock, policy)
    assert engine.stats.candles == 30
    health = engine._observe_features.__self__  # type: ignore[union-attr]  # the wiring's ModelHealth
    assert health.monitor is not None
    # The warm-up history and the 30 traded candles, each one row once the features are warm.
    warm_rows = health.monitor.samples
    assert 30 <= warm_rows <= 30 + policy.feature_spec.min_history


@pytest.mark.integration
async def test_a_stale_model_is_refused_at_start_when_the_user_asks(
    binance_server: BinanceServer, tmp_path: Path, model_path: Path
) -> None:
    policy = OnnxPolicy.load(model_path)  # trained on data that ended 2023-12-31 23:00; the market clock is 1.5 h later
    clock = FakeClock(T0 + 30 * 60_000)
    binance_server.market_clock_ms = clock
    cfg = _config(tmp_path, model_path, 5, "bot.model_max_age_days=0.01", "bot.model_stale_action=refuse")
    with pytest.raises(ModelRefused, match=r"refusing to start: .*bot\.model_stale_action=refuse"):
        await _run_paper(binance_server, cfg, clock, policy)
    assert not [r for r in binance_server.requests if r.method == "POST"]  # no order sent
