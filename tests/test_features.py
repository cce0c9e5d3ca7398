"""Feature pipeline: batch vs incremental parity on real candles, causality, warm-up, spec round-trip."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from adapters.data.ohlcv import load_ohlcv
from adapters.data.sample import sample_path
from adapters.types import Candle
from bot.model import features as features_module
from bot.model.features import (
    DEFAULT_FEATURES,
    FEATURE_SPEC_VERSION,
    KNOWN_FEATURES,
    STATE_NAMES,
    FeatureSpec,
    IncrementalFeatures,
    PrecomputedFeatures,
    candle_arrays,
    compute_features,
    fit_normalisation,
    normalise,
    observation_valid,
    position_state,
)

Arrays = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]


@pytest.fixture(scope="module")
def btc_1h() -> Arrays:
    """First 3,000 bundled BTC/USDT 1h candles (includes zero-volume bars and a gap)."""
    frame = pd.read_parquet(sample_path("BTC/USDT-1h")).set_index("date").iloc[:3000]
    frame.index = frame.index.tz_convert("UTC")
    return candle_arrays(frame)


def _replay(spec: FeatureSpec, arrays: Arrays) -> tuple[np.ndarray, list[int]]:
    """Feed every candle through the incremental path; return its rows and the bars where it returned None."""
    incremental = IncrementalFeatures(spec)
    rows = np.zeros((len(arrays[0]), spec.n_features))
    none_at: list[int] = []
    for i in range(len(arrays[0])):
        window = incremental.update(*(a[i] for a in arrays))
        latest = incremental.latest
        if latest is not None:
            rows[i] = latest
        if window is None:
            none_at.append(i)
        else:
            assert window.shape == (spec.window, spec.n_features)
    return rows, none_at


def test_incremental_matches_batch_on_bundled_candles(btc_1h: Arrays) -> None:
    spec = FeatureSpec(names=KNOWN_FEATURES, window=8, params={"volatility_window": 12, "volume_window": 6})
    batch, valid = compute_features(spec, *btc_1h)
    rows, none_at = _replay(spec, btc_1h)
    assert np.abs(rows[valid] - batch[valid]).max() <= 1e-9
    # The live path is silent exactly until the first full window of valid rows.
    assert none_at == list(range(spec.min_history - 1))
    assert observation_valid(spec, valid).argmax() == spec.min_history - 1


def test_incremental_matches_batch_on_shared_5m_candles(shared_data: Path) -> None:
    path = shared_data / "binance" / "BTC_USDT-5m.parquet"  # 1500 candles of June 2021 (tests/data/)
    frame = pd.read_parquet(path).set_index("date")
    frame.index = pd.to_datetime(frame.index, utc=True) if frame.index.dtype.kind in "iu" else frame.index
    arrays = candle_arrays(frame)
    spec = FeatureSpec()
    batch, valid = compute_features(spec, *arrays)
    rows, _ = _replay(spec, arrays)
    assert valid.sum() == len(frame) - spec.warmup_bars
    assert np.abs(rows[valid] - batch[valid]).max() <= 1e-9


def test_a_copy_of_the_live_state_goes_on_alone(btc_1h: Arrays) -> None:
    # A promotion hands a copy of the live features to the replaced model: both must go on as if fed alone.
    spec = FeatureSpec(names=KNOWN_FEATURES, window=8, params={"volatility_window": 12, "volume_window": 6})
    original = IncrementalFeatures(spec)
    for i in range(200):
        original.update(*(a[i] for a in btc_1h))
    twin = original.copy()
    ahead = [np.array(original.update(*(a[i] for a in btc_1h))) for i in range(200, 300)]
    assert twin.bars_seen == 200 and original.bars_seen == 300  # the copy did not move with the original
    behind = [np.array(twin.update(*(a[i] for a in btc_1h))) for i in range(200, 300)]
    assert all(a.shape == (8, spec.n_features) and np.array_equal(a, b) for a, b in zip(ahead, behind, strict=True))


def test_a_bars_features_do_not_depend_on_where_the_history_starts(
    btc_1h: Arrays, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Rolling features are computed a block of bars at a time (memory; blocks of 100 here, so that this short
    # history spans many): a bar gets the same bits whether its history starts at the first bar or later, on
    # other block boundaries.
    monkeypatch.setattr(features_module, "_VOLATILITY_BLOCK", 100)
    spec = FeatureSpec(names=KNOWN_FEATURES)
    full, _ = compute_features(spec, *btc_1h)
    for start in (1, 37, 150, 1001):
        later, later_valid = compute_features(spec, *(a[start:] for a in btc_1h))
        assert later_valid.sum() == len(btc_1h[0]) - start - spec.warmup_bars
        np.testing.assert_array_equal(later[later_valid], full[start:][later_valid])


def test_features_do_not_depend_on_the_future(btc_1h: Arrays) -> None:
    spec = FeatureSpec(names=KNOWN_FEATURES)
    full, _ = compute_features(spec, *btc_1h)
    cut = 1500
    prefix, _ = compute_features(spec, *(a[: cut + 1] for a in btc_1h))
    np.testing.assert_array_equal(prefix, full[: cut + 1])
    # Perturb every later bar (prices scaled, volumes shuffled): bars <= cut must not move.
    rng = np.random.default_rng(3)
    ts, o, h, lo, c, v = (a.copy() for a in btc_1h)
    scale = rng.uniform(0.5, 2.0, len(ts) - cut - 1)
    for array in (o, h, lo, c):
        array[cut + 1 :] *= scale
    v[cut + 1 :] = rng.permutation(v[cut + 1 :]) * 3.0
    perturbed, _ = compute_features(spec, ts, o, h, lo, c, v)
    np.testing.assert_array_equal(perturbed[: cut + 1], full[: cut + 1])
    assert not np.array_equal(perturbed[cut + 1 :], full[cut + 1 :])


def test_warm_up_is_explicit_and_never_nan(btc_1h: Arrays) -> None:
    spec = FeatureSpec()
    features, valid = compute_features(spec, *btc_1h)
    assert spec.warmup_bars == 24
    assert not valid[: spec.warmup_bars].any() and valid[spec.warmup_bars :].all()
    assert np.all(features[: spec.warmup_bars] == 0.0)
    assert np.isfinite(features).all()
    incremental = IncrementalFeatures(spec)
    for i in range(spec.min_history - 1):
        assert incremental.update(*(a[i] for a in btc_1h)) is None
        assert not incremental.is_warm
        assert incremental.observation((0.0, 0.0, 0.0), normalised=False) is None
    assert incremental.bars_until_warm == 1
    assert incremental.update(*(a[spec.min_history - 1] for a in btc_1h)) is not None
    assert incremental.is_warm and incremental.bars_until_warm == 0


def test_short_history_has_no_valid_rows() -> None:
    spec = FeatureSpec()
    ts = np.arange(5, dtype=np.int64) * 3_600_000
    prices = np.full(5, 100.0)
    features, valid = compute_features(spec, ts, prices, prices, prices, prices, np.ones(5))
    assert not valid.any() and np.all(features == 0.0)


def test_time_features_at_known_times() -> None:
    spec = FeatureSpec(names=("hour_sin", "hour_cos", "dow_sin", "dow_cos"), window=1)
    monday = int(datetime(2024, 1, 1, tzinfo=UTC).timestamp() * 1000)  # a Monday, 00:00 UTC
    thursday_6h = int(datetime(2024, 1, 4, 6, tzinfo=UTC).timestamp() * 1000)
    ts = np.array([monday, thursday_6h], dtype=np.int64)
    prices = np.full(2, 10.0)
    features, _ = compute_features(spec, ts, prices, prices, prices, prices, np.ones(2))
    np.testing.assert_allclose(features[0], [0.0, 1.0, 0.0, 1.0], atol=1e-12)
    angle = 2 * np.pi * (3 + 0.25) / 7
    np.testing.assert_allclose(features[1], [1.0, 0.0, np.sin(angle), np.cos(angle)], atol=1e-12)


def test_candle_and_volume_features_by_hand() -> None:
    spec = FeatureSpec(
        names=("log_return", "body", "upper_wick", "lower_wick", "range", "volume_ratio"),
        window=1,
        params={"volume_window": 2},
    )
    ts = np.array([0, 60_000, 120_000], dtype=np.int64)
    o, h, lo, c = (np.array(x) for x in ([10.0, 10.0, 11.0], [11.0, 12.0, 11.0], [9.0, 9.5, 10.0], [10.0, 11.0, 10.5]))
    v = np.array([1.0, 3.0, 0.0])
    features, valid = compute_features(spec, ts, o, h, lo, c, v)
    assert valid.tolist() == [False, True, True]
    np.testing.assert_allclose(features[1], [np.log(1.1), 1 / 11, 1 / 11, 0.5 / 11, 2.5 / 11, np.log1p(1.5)])
    np.testing.assert_allclose(features[2], [np.log(10.5 / 11), -0.5 / 10.5, 0.0, 0.5 / 10.5, 1 / 10.5, 0.0])


def test_spec_round_trips_through_json(btc_1h: Arrays) -> None:
    spec = FeatureSpec(window=16, params={"volatility_window": 10, "volume_window": 5})
    features, valid = compute_features(spec, *btc_1h)
    fitted = fit_normalisation(spec, features, valid)
    for original in (spec, fitted):
        data = json.loads(json.dumps(original.to_dict()))
        rebuilt = FeatureSpec.from_dict(data)
        assert rebuilt == original
        assert data["observation_shape"] == [16 * len(DEFAULT_FEATURES) + 3]
        assert data["state_names"] == list(STATE_NAMES)
    assert fitted.is_fitted and not spec.is_fitted


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"version": "features-v0"}, "features-v0"),
        ({"names": ["log_return", "moon_phase"]}, "moon_phase"),
        ({"names": ["body", "body"]}, "repeat"),
        ({"names": []}, "at least one"),
        ({"window": 0}, "window"),
        ({"params": {"volatility_window": 1, "volume_window": 24}}, "volatility_window"),
        ({"params": {"volatility_window": 24, "volume_window": 24, "rsi": 14}}, "rsi"),
        ({"norm_mean": [0.0] * 10, "norm_std": [1.0] * 9}, "norm_std has 9 values"),
        ({"norm_mean": [0.0] * 10, "norm_std": None}, "both"),
        ({"norm_mean": [0.0] * 10, "norm_std": [0.0] * 10}, "norm_std"),
        ({"observation_shape": [7]}, "observation_shape"),
        ({"colour": "red"}, "colour"),
    ],
)
def test_bad_spec_is_rejected_with_a_clear_error(change: dict[str, object], message: str) -> None:
    data = FeatureSpec().to_dict() | change
    with pytest.raises(ValueError, match=message):
        FeatureSpec.from_dict(data)


def test_spec_missing_key_is_named() -> None:
    data = FeatureSpec().to_dict()
    del data["window"]
    with pytest.raises(ValueError, match="window"):
        FeatureSpec.from_dict(data)


def test_normalisation_is_fitted_on_the_training_rows_only(btc_1h: Arrays) -> None:
    spec = FeatureSpec()
    features, valid = compute_features(spec, *btc_1h)
    train = valid & (np.arange(len(valid)) < 2000)
    fitted = fit_normalisation(spec, features, train)
    altered = features.copy()
    altered[2000:] *= 7.0  # the test split must not move the statistics
    assert fit_normalisation(spec, altered, train) == fitted
    normalised = normalise(fitted, features[train])
    np.testing.assert_allclose(normalised.mean(axis=0), 0.0, atol=1e-9)
    np.testing.assert_allclose(normalised.std(axis=0), 1.0, atol=1e-9)
    mean, std = fitted.observation_normalisation()
    assert mean.shape == std.shape == fitted.observation_shape
    np.testing.assert_array_equal(mean[: spec.n_features], fitted.norm_mean)
    np.testing.assert_array_equal(std[-3:], [1.0, 1.0, 1.0])


def test_constant_feature_gets_unit_std() -> None:
    spec = FeatureSpec(names=("body",), window=1)
    features = np.zeros((10, 1))
    fitted = fit_normalisation(spec, features, np.ones(10, dtype=bool))
    assert fitted.norm_std == (1.0,)


@pytest.mark.parametrize(
    ("column", "row", "value", "message"),
    [
        ("high", 7, 1.0, "high must be >= max"),
        ("low", 3, 1e9, "low must be <="),
        ("close", 5, float("nan"), "close is not finite"),
        ("volume", 2, -1.0, "volume must be >= 0"),
        ("open", 4, 0.0, "prices must be > 0"),
    ],
)
def test_bad_candles_are_named(btc_1h: Arrays, column: str, row: int, value: float, message: str) -> None:
    columns = dict(zip(("ts", "open", "high", "low", "close", "volume"), (a[:20].copy() for a in btc_1h), strict=True))
    columns[column][row] = value
    with pytest.raises(ValueError, match=message) as error:
        compute_features(FeatureSpec(), *columns.values())
    assert f"row {row}" in str(error.value)


def test_unsorted_times_are_rejected(btc_1h: Arrays) -> None:
    ts = btc_1h[0][:10].copy()
    ts[6] = ts[5]
    with pytest.raises(ValueError, match=r"strictly increasing.*row 6"):
        compute_features(FeatureSpec(), ts, *(a[:10] for a in btc_1h[1:]))


def test_incremental_rejects_out_of_order_and_bad_candles(btc_1h: Arrays) -> None:
    incremental = IncrementalFeatures(FeatureSpec())
    incremental.update(*(a[1] for a in btc_1h))
    with pytest.raises(ValueError, match="not after the previous candle"):
        incremental.update(*(a[0] for a in btc_1h))
    with pytest.raises(ValueError, match="high must be"):
        incremental.update(int(btc_1h[0][2]), 10.0, 9.0, 8.0, 10.0, 1.0)
    assert incremental.bars_seen == 1


def test_update_candle_accepts_domain_candles() -> None:
    frame = load_ohlcv(sample_path("ETH/BTC-5m")).iloc[:200]
    spec = FeatureSpec(window=4)
    by_values = IncrementalFeatures(spec)
    by_candle = IncrementalFeatures(spec)
    for when, row in frame.iterrows():
        candle = Candle("ETH/BTC", "5m", when.to_pydatetime(), row.open, row.high, row.low, row.close, row.volume)
        a = by_candle.update_candle(candle)
        b = by_values.update(int(when.value // 1_000_000), row.open, row.high, row.low, row.close, row.volume)
        assert (a is None and b is None) or np.array_equal(a, b)
    assert by_candle.is_warm


def test_precomputed_windows_are_the_windows_handed_out_bar_by_bar() -> None:
    frame = load_ohlcv(sample_path("ETH/BTC-5m")).iloc[:300]
    spec = FeatureSpec(window=4)
    features = PrecomputedFeatures(spec, frame)
    ahead, ready = features.windows(0, 400)  # clipped to the 300 bars
    assert ahead.shape == (300 - spec.window + 1, spec.window, spec.n_features)
    assert len(ready) == len(ahead)
    handed: list[np.ndarray | None] = []
    for when, row in frame.iterrows():
        candle = Candle("ETH/BTC", "5m", when.to_pydatetime(), row.open, row.high, row.low, row.close, row.volume)
        handed.append(features.update_candle(candle))
        assert features.bar == len(handed) - 1
    # Bar i's window is ahead[i - (window - 1)]; a bar without a full valid window gets none either way.
    for i, window in enumerate(handed[spec.window - 1 :]):
        assert (window is not None) == bool(ready[i])
        if window is not None:
            assert np.array_equal(window, ahead[i])
    assert ready.sum() > 200 and not ready.all(), "the warm-up bars have no valid window"
    one, one_ready = features.windows(150, 151)
    assert np.array_equal(one[0], handed[150]) and one_ready.tolist() == [True]
    assert features.windows(300, 310)[0].shape == (0, spec.window, spec.n_features)


def test_observation_layout_and_position_state(btc_1h: Arrays) -> None:
    spec = FeatureSpec(window=4)
    features, valid = compute_features(spec, *btc_1h)
    fitted = fit_normalisation(spec, features, valid)
    incremental = IncrementalFeatures(fitted)
    for i in range(60):
        incremental.update(*(a[i] for a in btc_1h))
    state = position_state(0.5, -0.02, 3)
    assert state == (0.5, -0.02, np.log1p(3))
    raw = incremental.observation(state, normalised=False)
    normalised = incremental.observation(state, normalised=True)
    assert raw is not None and normalised is not None
    assert raw.dtype == np.float32 and raw.shape == fitted.observation_shape
    np.testing.assert_allclose(raw[:-3].reshape(4, spec.n_features), features[56:60], rtol=1e-6, atol=1e-7)
    mean, std = fitted.observation_normalisation()
    np.testing.assert_allclose(normalised, (raw.astype(np.float64) - mean) / std, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(normalised[-3:], state, rtol=1e-6)


def test_spec_versions_are_declared() -> None:
    assert FeatureSpec().version == FEATURE_SPEC_VERSION
    assert set(DEFAULT_FEATURES) <= set(KNOWN_FEATURES)
