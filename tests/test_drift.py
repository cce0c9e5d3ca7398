"""Feature drift: training distributions in the card, PSI/KS over a rolling live window, alerts on real candles."""

from __future__ import annotations

import dataclasses
import json
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pandas as pd
import pytest
from scipy import stats
from structlog.testing import capture_logs

from adapters.data.ohlcv import load_ohlcv
from adapters.data.splits import split_by_fraction
from adapters.types import ms_from_utc
from bot.events import AlertEvent, Event
from bot.model.card import METADATA_KEY, ModelCard, ModelCardError
from bot.model.drift import (
    ALERT_CODE,
    DistributionError,
    DriftConfig,
    DriftMonitor,
    FeatureDistribution,
    fit_feature_distribution,
    ks_statistic,
    monitor_for_card,
    psi,
)
from bot.model.features import FeatureSpec, IncrementalFeatures, candle_arrays, compute_features
from bot.model.health import ModelHealth
from bot.model.staleness import ALERT_CODE as STALE_CODE
from bot.model.staleness import StaleModelError
from bot.risk import RiskConfig, RiskManager, RiskState
from monitoring.metrics import BotMetrics
from tests.support.policy_model import export_policy, fitted_spec, random_weights

BUNDLED = Path(__file__).resolve().parents[1] / "adapters" / "bundled" / "BTC_USDT-1h.parquet"
NOW = datetime(2026, 1, 1, tzinfo=UTC)


@pytest.fixture(scope="module")
def candles() -> pd.DataFrame:
    return load_ohlcv(BUNDLED)


def feature_rows(spec: FeatureSpec, frame: pd.DataFrame) -> np.ndarray:
    raw, valid = compute_features(spec, *candle_arrays(frame))
    return raw[valid]


def feed(monitor: DriftMonitor, rows: np.ndarray) -> None:
    for row in rows:
        monitor.observe(row)


def test_identical_distributions_do_not_drift_and_shifted_ones_do() -> None:
    rng = np.random.default_rng(7)
    train = rng.normal(0.0, 1.0, size=(20_000, 2))
    distribution = fit_feature_distribution(("a", "b"), train)
    assert distribution.rows == 20_000
    assert all(len(h.proportions) == 20 for h in distribution.histograms)
    np.testing.assert_allclose(distribution.histograms[0].proportions, 0.05, atol=1e-3)

    same = DriftMonitor(distribution, DriftConfig(window=5000, min_samples=5000))
    feed(same, rng.normal(0.0, 1.0, size=(5000, 2)))
    figures = same.compute()
    assert figures["a"].psi < 0.02 and figures["a"].ks < 0.03

    shifted = DriftMonitor(distribution, DriftConfig(window=5000, min_samples=5000))
    live = np.column_stack([rng.normal(0.5, 1.0, 5000), rng.normal(0.0, 1.0, 5000)])
    feed(shifted, live)
    figures = shifted.compute()
    assert figures["a"].psi > 0.2 and figures["b"].psi < 0.02
    # KS at the bin edges is a lower bound of the exact statistic, within one bin's mass (5 %) of it.
    exact = stats.ks_2samp(live[:, 0], train[:, 0]).statistic
    assert exact - 0.05 <= figures["a"].ks <= exact + 1e-9
    assert figures["a"].ks > 0.15


def test_psi_and_ks_by_hand() -> None:
    train = [0.25, 0.25, 0.25, 0.25]
    live = [0.1, 0.2, 0.3, 0.4]
    expected = sum((a - e) * np.log(a / e) for a, e in zip(live, train, strict=True))
    assert psi(live, train) == pytest.approx(expected)
    assert ks_statistic(live, train) == pytest.approx(0.2)  # cumulative 0.3 vs 0.5 after two bins
    assert np.isfinite(psi([0.0, 1.0], [0.5, 0.5]))  # an empty bin is floored, not infinite


def test_discrete_features_keep_ties_in_one_bin() -> None:
    hours = np.tile(np.arange(24, dtype=np.float64), 100)[:, None]
    distribution = fit_feature_distribution(("hour",), hours, bins=10)
    histogram = distribution.histograms[0]
    assert sum(histogram.proportions) == pytest.approx(1.0)
    monitor = DriftMonitor(distribution, DriftConfig(window=240, min_samples=240))
    feed(monitor, np.tile(np.arange(24, dtype=np.float64), 10)[:, None])
    assert monitor.compute()["hour"].psi == pytest.approx(0.0, abs=1e-12)
    assert monitor.compute()["hour"].ks == pytest.approx(0.0, abs=1e-12)


def test_the_window_rolls_and_only_the_last_rows_count() -> None:
    rng = np.random.default_rng(3)
    distribution = fit_feature_distribution(("x", "y"), rng.normal(size=(4000, 2)))
    rolling = DriftMonitor(distribution, DriftConfig(window=300, min_samples=100))
    old = rng.normal(3.0, 1.0, size=(1000, 2))
    recent = rng.normal(size=(300, 2))
    feed(rolling, np.concatenate([old, recent]))
    fresh = DriftMonitor(distribution, DriftConfig(window=300, min_samples=100))
    feed(fresh, recent)
    assert rolling.samples == 300
    assert rolling.compute() == fresh.compute()
    assert rolling.compute()["x"].psi < 0.15


def test_below_min_samples_nothing_is_computed_and_bad_rows_are_refused() -> None:
    distribution = fit_feature_distribution(("x",), np.arange(100.0)[:, None])
    monitor = DriftMonitor(distribution, DriftConfig(window=50, min_samples=10))
    feed(monitor, np.arange(9.0)[:, None])
    report = monitor.check(NOW)
    assert not report.is_ready and report.features == {} and report.alerts == ()
    with pytest.raises(DistributionError, match=r"shape \(1,\)"):
        monitor.observe(np.zeros(2))
    with capture_logs() as logs:
        monitor.observe(np.array([np.nan]))
        monitor.observe(np.array([np.inf]))
    assert monitor.samples == 9
    assert [e["event"] for e in logs] == ["drift_row_rejected"]  # logged on the first, counted after


def test_config_mistakes_name_the_key() -> None:
    for changes, key in (
        ({"window": 1}, "bot.drift.window"),
        ({"min_samples": 0}, "bot.drift.min_samples"),
        ({"window": 10, "min_samples": 11}, "bot.drift.min_samples"),
        ({"psi_threshold": 0.0}, "bot.drift.psi_threshold"),
        ({"ks_threshold": 1.5}, "bot.drift.ks_threshold"),
        ({"schedule": "every hour"}, "bot.drift.schedule"),
    ):
        with pytest.raises(ValueError, match=key):
            DriftConfig(**changes)  # type: ignore[arg-type]


def test_distribution_round_trips_through_the_card_and_bad_ones_are_refused() -> None:
    rng = np.random.default_rng(1)
    spec = FeatureSpec(window=4)
    distribution = fit_feature_distribution(spec.names, rng.normal(size=(500, spec.n_features)))
    assert FeatureDistribution.from_dict(json.loads(json.dumps(distribution.to_dict()))) == distribution
    data = distribution.to_dict()
    data["features"]["body"]["proportions"][0] += 0.5
    with pytest.raises(DistributionError, match=r"features\.body: proportions must sum to 1"):
        FeatureDistribution.from_dict(data)
    data = distribution.to_dict()
    data["method"] = "kde"
    with pytest.raises(DistributionError, match="method 'kde' is not supported"):
        FeatureDistribution.from_dict(data)


def policy_2023(candles: pd.DataFrame, out: Path) -> tuple[FeatureSpec, Path, pd.DataFrame, int]:
    """The bundled 2023 policy: data from 2023-01-01 split 70/15/15 (config/data/btc_usdt_1h.yaml), features and
    normalisation fitted on the training split only, its distribution stored in the exported card.

    Returns its feature spec, ONNX path, test candles, and how many valid feature rows the training split has."""
    data = candles.loc["2023-01-01":]
    split = split_by_fraction(data, 0.7, 0.15, 0.15)
    train, test = split.train.take(data), split.test.take(data)
    spec = fitted_spec(data, len(train), window=8)
    raw, valid = compute_features(spec, *candle_arrays(train))
    onnx_path = export_policy(
        out,
        spec,
        random_weights(spec, 3, seed=0),
        (-1.0, 0.0, 1.0),
        feature_distribution=fit_feature_distribution(spec.names, raw, valid),
        data_range={"start": str(train.index[0]), "end": str(test.index[-1])},
    )
    return spec, onnx_path, test, int(valid.sum())


def test_bundled_policy_drifts_on_2021_candles_but_not_on_its_own_test_period(
    candles: pd.DataFrame, tmp_path: Path
) -> None:
    spec, onnx_path, test, valid_rows = policy_2023(candles, tmp_path)
    card = ModelCard.load(onnx_path.with_suffix(".json"))
    card.verify_onnx(onnx_path)
    assert card.schema_version == 2 and card.feature_distribution is not None
    assert card.feature_distribution.rows == valid_rows
    embedded = {p.key: p.value for p in onnx.load(str(onnx_path)).metadata_props}[METADATA_KEY]
    assert ModelCard.from_json(embedded).feature_distribution == card.feature_distribution

    config = DriftConfig()  # the shipped defaults: 90 days of 1h candles, PSI 0.25, KS 0.25
    own = monitor_for_card(card, config)
    assert own is not None
    feed(own, feature_rows(spec, test))
    report = own.check(NOW)
    assert report.is_ready and report.samples == min(config.window, len(test) - spec.warmup_bars)
    assert report.alerts == (), report.gauges()
    assert max(d.psi for d in report.features.values()) < config.psi_threshold

    old = monitor_for_card(card, config)
    assert old is not None
    feed(old, feature_rows(spec, candles.loc["2021-01-01":"2021-12-31"]))
    with capture_logs() as logs:
        report = old.check(NOW)
    drifted = {a.feature for a in report.alerts}
    # 2021's volatility and candle shapes are far from 2023-24's; calendar features never drift.
    assert {"volatility", "upper_wick", "lower_wick"} <= drifted
    assert not drifted & {"hour_sin", "hour_cos", "dow_sin", "dow_cos"}
    assert report.features["volatility"].psi > 1.0
    assert [e["feature"] for e in logs if e["event"] == "feature_drift_detected"] == sorted(drifted)
    event = report.alerts[0].to_event("bot-1", NOW)
    assert event.code == ALERT_CODE and event.level == "warning" and report.alerts[0].feature in event.message
    # Still drifting at the next check: no second alert; the gauges keep their values.
    again = old.check(NOW)
    assert again.alerts == () and again.gauges() == report.gauges()
    # Back on the policy's own period: the drift clears (logged), and a new drift would alert again.
    feed(old, feature_rows(spec, test))
    with capture_logs() as logs:
        cleared = old.check(NOW)
    assert cleared.alerts == () and old.drifting == frozenset()
    assert {e["feature"] for e in logs if e["event"] == "feature_drift_cleared"} == drifted


def test_old_cards_load_with_drift_off_and_one_warning(tmp_path: Path, candles: pd.DataFrame) -> None:
    spec = fitted_spec(candles.iloc[-2000:], 1400, window=8)
    onnx_path = export_policy(tmp_path, spec, random_weights(spec, 3), (-1.0, 0.0, 1.0))
    card_path = onnx_path.with_suffix(".json")
    payload = json.loads(card_path.read_text())
    assert payload["schema_version"] == 2 and payload["feature_distribution"] is None
    del payload["feature_distribution"]
    payload["schema_version"] = 1
    card_path.write_text(json.dumps(payload))
    old = ModelCard.load(card_path)
    assert old.schema_version == 1 and old.feature_distribution is None
    assert "feature_distribution" not in old.to_dict()
    with capture_logs() as logs:
        assert monitor_for_card(old, DriftConfig()) is None
    assert [(e["event"], e["log_level"]) for e in logs] == [("feature_drift_disabled", "warning")]
    with capture_logs() as logs:
        assert monitor_for_card(old, DriftConfig(enabled=False)) is None
    assert logs == []

    payload["feature_distribution"] = None
    card_path.write_text(json.dumps(payload))
    with pytest.raises(ModelCardError, match="unknown key"):
        ModelCard.load(card_path)


def test_card_refuses_a_distribution_for_other_features(candles: pd.DataFrame) -> None:
    spec = FeatureSpec(window=4)
    rows = feature_rows(spec, candles.iloc[-500:])
    distribution = fit_feature_distribution(spec.names, rows)
    wrong = dataclasses.replace(distribution, names=tuple(reversed(distribution.names)))
    card_fields = {
        "name": "m",
        "feature_spec": spec.to_dict(),
        "observation_shape": spec.observation_shape,
        "action_space": "discrete",
        "action_mapping": (0.0, 1.0),
        "norm_mean": (0.0,) * spec.observation_size,
        "norm_std": (1.0,) * spec.observation_size,
        "norm_std_floor": 1e-8,
        "data_range": {"start": "2024-01-01", "end": "2024-06-01"},
    }
    assert ModelCard(**card_fields, feature_distribution=distribution).feature_distribution == distribution  # type: ignore[arg-type]
    with pytest.raises(ModelCardError, match="feature_distribution covers"):
        ModelCard(**card_fields, feature_distribution=wrong)  # type: ignore[arg-type]
    with pytest.raises(ModelCardError, match="needs schema_version >= 2"):
        ModelCard(**card_fields, feature_distribution=distribution, schema_version=1)  # type: ignore[arg-type]


async def test_model_health_wires_drift_and_staleness_into_alerts_gauges_and_risk(
    candles: pd.DataFrame, tmp_path: Path
) -> None:
    data = candles.loc["2023-01-01":"2023-12-31"]
    spec = fitted_spec(data, 6000, window=8)
    raw, valid = compute_features(spec, *candle_arrays(data.iloc[:6000]))
    onnx_path = export_policy(
        tmp_path,
        spec,
        random_weights(spec, 3),
        (-1.0, 0.0, 1.0),
        feature_distribution=fit_feature_distribution(spec.names, raw, valid),
    )
    card = ModelCard.load(onnx_path.with_suffix(".json"))
    events: list[Event] = []
    now = [datetime(2024, 3, 1, tzinfo=UTC)]
    risk = RiskManager(RiskConfig(), bot_id="bot-h", emit=events.append)
    metrics = BotMetrics(bot_id="bot-h", mode="paper")
    rows: list[dict[str, float]] = []  # what the W&B live run is handed
    health = ModelHealth(
        card,
        DriftConfig(window=720, min_samples=720),
        bot_id="bot-h",
        emit=events.append,
        max_age_days=90,
        stale_action="reduce",
        reduce_only=risk.reduce_only,
        gauges=metrics,
        record=rows.append,
        clock=lambda: now[0],
    )
    assert not health.start().is_stale and events == [] and risk.state is RiskState.ACTIVE
    assert metrics.registry.get_sample_value("aitrading_model_age_days", {"bot_id": "bot-h", "mode": "paper"}) == (
        pytest.approx(60 + 1 / 24)  # 2023-12-31T23:00 to 2024-03-01
    )

    assert await health.check_drift() is not None and events == [] and rows == []  # window empty: nothing computed
    live = IncrementalFeatures(spec)
    for row in candles.loc["2021-05-01":"2021-06-30"].itertuples():
        live.update(ms_from_utc(row.Index.to_pydatetime()), row.open, row.high, row.low, row.close, row.volume)
        health.observe(live.latest)
    report = await health.check_drift()
    assert report is not None and report.is_ready
    drift_alerts = [e for e in events if isinstance(e, AlertEvent) and e.code == ALERT_CODE]
    assert {a.message.split()[1] for a in drift_alerts} == {a.feature for a in report.alerts} != set()
    labels = {"bot_id": "bot-h", "mode": "paper", "feature": "volatility"}
    assert metrics.registry.get_sample_value("aitrading_feature_drift_psi", labels) == report.features["volatility"].psi
    # The same figures go to the W&B live run, two keys per feature.
    assert rows[-1]["live/drift/volatility/psi"] == report.features["volatility"].psi
    assert rows[-1]["live/drift/volatility/ks"] == report.features["volatility"].ks
    assert len(rows[-1]) == 2 * len(report.features)

    events.clear()
    now[0] = datetime(2024, 6, 1, tzinfo=UTC)
    stale = await health.check_staleness()
    assert stale.is_stale and risk.state is RiskState.REDUCING
    assert [e.code for e in events if isinstance(e, AlertEvent)] == [STALE_CODE, "risk_reducing"]

    refusing = ModelHealth(card, DriftConfig(), bot_id="b", emit=events.append, max_age_days=90, stale_action="refuse")
    refusing._clock = lambda: now[0]
    with pytest.raises(StaleModelError, match="refusing to start"):
        refusing.start()


def test_observing_many_rows_at_once_keeps_the_same_window_as_one_by_one() -> None:
    rng = np.random.default_rng(5)
    distribution = fit_feature_distribution(("x", "y"), rng.normal(size=(4000, 2)))
    config = DriftConfig(window=300, min_samples=100)
    rows = np.concatenate([rng.normal(2.0, 1.0, size=(250, 2)), rng.normal(size=(420, 2))])
    rows[[10, 400]] = np.nan  # not finite: refused, as one by one
    one_by_one = DriftMonitor(distribution, config)
    in_blocks = DriftMonitor(distribution, config)
    for block in (rows[:90], rows[90:95], rows[95:500], rows[500:]):  # before, across and after a full window
        for row in block:
            if np.isfinite(row).all():
                one_by_one.observe(row)
        in_blocks.observe_many(block)
        assert in_blocks.samples == one_by_one.samples
        assert in_blocks.compute() == one_by_one.compute()
    assert in_blocks.samples == 300
    assert in_blocks.compute()["x"].psi < 0.15  # the shifted rows have left the window
    with pytest.raises(DistributionError, match=r"shape \(n, 2\)"):
        in_blocks.observe_many(rows[:, :1])


def test_a_backtest_reports_drift_on_2021_candles_and_none_on_the_policys_own_test_period(
    candles: pd.DataFrame, tmp_path: Path
) -> None:
    from adapters.costs import CostModel
    from adapters.paper.config import BTC_USDT
    from bot.backtest.run import run_backtest
    from bot.engine.decision import TradingSettings
    from bot.model.policy import OnnxPolicy
    from bot.sinks.bus import EventBus

    _, onnx_path, test, _ = policy_2023(candles, tmp_path)
    policy = OnnxPolicy.load(onnx_path)
    config = DriftConfig()  # the shipped defaults

    def backtest(start: str, end: str, bus: EventBus | None = None) -> Any:
        return run_backtest(
            candles,
            symbol="BTC/USDT",
            policy=policy,
            market=BTC_USDT,
            risk=RiskManager(RiskConfig()),
            costs=CostModel(),
            settings=TradingSettings(),
            initial_quote=Decimal(10_000),
            start=pd.Timestamp(start, tz="UTC"),
            end=pd.Timestamp(end, tz="UTC"),
            bus=bus,
            drift=config,
        )

    alerts: list[Event] = []

    class Alerts:
        def publish(self, event: Event) -> None:
            if isinstance(event, AlertEvent):
                alerts.append(event)

    old = backtest("2021-01-01", "2022-01-01", EventBus([Alerts()])).drift
    assert old is not None and old.checks == 8760 // config.min_samples + 1  # every min_samples candles, and at the end
    assert {"volatility", "upper_wick", "lower_wick"} <= set(old.first_drifted)
    assert not set(old.first_drifted) & {"hour_sin", "hour_cos", "dow_sin", "dow_cos"}
    # The first check is the first moment the window holds min_samples candles: drift is seen from then on.
    assert min(old.first_drifted.values()) == pd.Timestamp("2021-01-01", tz="UTC") + pd.Timedelta(
        hours=config.min_samples
    )
    assert old.last["volatility"][0] > 1.0
    # Each drifted feature alerted once, at market time, to the sinks: not once per check.
    assert sorted(a.message.split()[1] for a in alerts) == sorted(old.first_drifted)
    assert {a.code for a in alerts} == {ALERT_CODE}

    own = backtest(str(test.index[0]), str(test.index[-1])).drift
    assert own is not None and own.checks > 0
    # On its own test period the full window ends inside both thresholds (a calm month may cross one on the way:
    # the first checks see only min_samples candles), and far fewer features ever drift than on 2021's candles.
    assert all(p < config.psi_threshold and k < config.ks_threshold for p, k in own.last.values()), own.last
    assert len(own.first_drifted) < len(old.first_drifted)
