"""Synthetic known-answer markets: deterministic, the planted edge is where it says, the random walk has none.

The learning test itself (PPO must find the planted edge and not find one in the random walk) is the benchmark
`tests/benchmarks/known_answer.py`, which CI runs; these tests pin the markets it trains on.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from adapters.data.ohlcv import load_ohlcv
from adapters.data.synthetic import SyntheticSpec, oracle_positions, synthetic_candles, write_synthetic
from adapters.errors import DataError
from bot.config import own_file_window
from training.train import load_dataset, load_train_config


def _wick_tilt(frame: pd.DataFrame) -> np.ndarray:
    """Lower minus upper wick over the bar's range: > 0 when the lower wick is the longer."""
    body_top = frame[["open", "close"]].max(axis=1)
    body_bottom = frame[["open", "close"]].min(axis=1)
    upper, lower = np.log(frame["high"] / body_top), np.log(body_bottom / frame["low"])
    return (lower - upper).to_numpy()


def test_a_seed_draws_the_same_market_and_another_seed_another() -> None:
    a, b = synthetic_candles(SyntheticSpec(bars=500, seed=3)), synthetic_candles(SyntheticSpec(bars=500, seed=3))
    pd.testing.assert_frame_equal(a, b)
    assert not np.allclose(a["close"], synthetic_candles(SyntheticSpec(bars=500, seed=4))["close"])


@pytest.mark.parametrize("market", ["regime", "random-walk"])
def test_candles_are_canonical_ohlcv(market: str, tmp_path: Path) -> None:
    path = tmp_path / "market.parquet"
    frame = write_synthetic(SyntheticSpec(market=market, bars=2_000, seed=1), str(path))  # type: ignore[arg-type]
    # The loader's strictest policy raises on NaN, gaps, duplicates, disorder, high < low, off-grid times.
    assert len(load_ohlcv(path, gaps="error", zero_volume="error")) == 2_000
    assert (frame["high"] >= frame[["open", "close"]].max(axis=1)).all()
    assert (frame["low"] <= frame[["open", "close"]].min(axis=1)).all()
    assert (frame["open"].iloc[1:].to_numpy() == frame["close"].iloc[:-1].to_numpy()).all()
    assert (frame.index.to_series().diff().dropna() == pd.Timedelta("1h")).all()


def test_regimes_persist_for_about_their_mean_length() -> None:
    frame = synthetic_candles(SyntheticSpec(bars=50_000, seed=0, regime_bars=100))
    state = np.asarray(frame.attrs["regime"])
    switches = int((np.diff(state) != 0).sum())
    assert set(np.unique(state)) == {-1, 1}
    assert 50_000 / 100 * 0.8 < switches < 50_000 / 100 * 1.2


def test_the_wick_feature_predicts_the_next_return_in_the_regime_market_only() -> None:
    """The planted edge: the wick tilt of the last bars tells the sign of the next bar's drift."""
    correlations = {}
    for market in ("regime", "random-walk"):
        frame = synthetic_candles(SyntheticSpec(market=market, bars=30_000, seed=2))  # type: ignore[arg-type]
        tilt = pd.Series(_wick_tilt(frame)).rolling(4).mean().to_numpy()[:-1]
        nxt = np.diff(np.log(frame["close"].to_numpy()))
        ok = ~np.isnan(tilt)
        correlations[market] = float(np.corrcoef(tilt[ok], nxt[ok])[0, 1])
    assert correlations["regime"] > 0.1
    # 30,000 independent draws: |r| beyond 0.03 would be a 5-sigma accident.
    assert abs(correlations["random-walk"]) < 0.03


def test_the_oracle_beats_buy_and_hold_in_the_regime_market() -> None:
    frame = synthetic_candles(SyntheticSpec(bars=20_000, seed=5))
    returns = np.diff(np.log(frame["close"].to_numpy()))
    oracle = float((oracle_positions(frame)[1:] * returns).sum())
    assert oracle > float(returns.sum()) + 5.0  # log points: the edge is large, not marginal
    with pytest.raises(DataError, match="hidden regime"):
        oracle_positions(frame.iloc[:-1])


@pytest.mark.parametrize(
    ("kwargs", "named"),
    [
        ({"market": "trend"}, "market must be one of regime, random-walk"),
        ({"bars": 1}, "at least 2 bars"),
        ({"volatility": 0.0}, "volatility must be > 0"),
        ({"signal": 1.0}, "signal must be in [0, 1)"),
        ({"regime_bars": 1.0}, "regime_bars must be > 1"),
        ({"timeframe": "7x"}, "7x"),
    ],
)
def test_a_bad_spec_is_an_error_naming_the_field(kwargs: dict[str, object], named: str) -> None:
    with pytest.raises(DataError) as excinfo:
        SyntheticSpec(**kwargs)  # type: ignore[arg-type]
    assert named in str(excinfo.value)


@pytest.mark.parametrize("suffix", [".parquet", ".feather"])
def test_a_written_market_loads_back_as_the_same_candles(tmp_path: Path, suffix: str) -> None:
    path = tmp_path / f"market{suffix}"
    frame = write_synthetic(SyntheticSpec(bars=1_000, seed=9), str(path))
    loaded = load_ohlcv(path)
    np.testing.assert_allclose(loaded["close"].to_numpy(), frame["close"].to_numpy(), rtol=0, atol=0)
    assert loaded.index[0] == frame.index[0] and len(loaded) == len(frame)
    with pytest.raises(DataError, match=r"\.parquet or \.feather"):
        write_synthetic(SyntheticSpec(bars=10), str(tmp_path / "market.csv"))


def test_an_own_file_is_trained_on_its_own_span_not_the_bundled_window(tmp_path: Path) -> None:
    """The bundled config's `data.start: 2023-01-01` would leave a 2020 file with no candle at all."""
    path = tmp_path / "own.parquet"
    write_synthetic(SyntheticSpec(bars=800, seed=0), str(path))
    assert own_file_window([f"data.path={path}"]) == [f"data.path={path}", "data.start=null", "data.end=null"]
    assert own_file_window([f"data.path={path}", "data.start=2020-01-10"])[-1] == "data.end=null"
    assert own_file_window(["seed=1"]) == ["seed=1"]
    cfg = load_train_config([f"data.path={path}"])
    assert len(load_dataset(cfg.data).frame) == 800
    # A window the user names is kept, and one that holds too little says what the file does hold.
    cfg = load_train_config([f"data.path={path}", "data.start=2020-01-30"])
    with pytest.raises(DataError) as excinfo:
        load_dataset(cfg.data)
    message = str(excinfo.value)
    assert "data.start=2020-01-30 and data.end=null" in message and "the file holds 800" in message
    assert "2020-01-01" in message
    short = tmp_path / "short.parquet"
    write_synthetic(SyntheticSpec(bars=300, seed=0), str(short))
    with pytest.raises(DataError, match=r"only 300 candles \(2020-01-01 00:00:00\+00:00 \.\. .*\); need at least 500"):
        load_dataset(load_train_config([f"data.path={short}"]).data)
