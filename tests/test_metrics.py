"""Evaluation metrics against hand-computed values, and baselines on real candles with the shared cost model."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest

from adapters.costs import CostModel
from adapters.data.ohlcv import load_ohlcv
from adapters.data.sample import sample_path
from bot.evaluation import (
    EvaluationReport,
    Trade,
    buy_and_hold_targets,
    compute_metrics,
    evaluate_positions,
    evaluate_with_baselines,
    format_table,
    periods_per_year,
    simulate_positions,
    sma_crossover_targets,
)


def _frame(opens: list[float], closes: list[float], volumes: list[float] | None = None) -> pd.DataFrame:
    index = pd.date_range("2024-01-01", periods=len(opens), freq="h", tz="UTC", name="date")
    highs = [max(o, c) for o, c in zip(opens, closes, strict=True)]
    lows = [min(o, c) for o, c in zip(opens, closes, strict=True)]
    return pd.DataFrame(
        {"open": opens, "high": highs, "low": lows, "close": closes, "volume": volumes or [1e9] * len(opens)},
        index=index,
        dtype="float64",
    )


def _trade(pnl: float, bars: int) -> Trade:
    now = pd.Timestamp("2024-01-01", tz="UTC")
    return Trade(1, now, now, 100.0, 100.0, bars, pnl, pnl / 100.0, 0.0)


@pytest.fixture(scope="module")
def candles() -> pd.DataFrame:
    return load_ohlcv(sample_path("BTC/USDT-1h")).iloc[-3000:]


def test_periods_per_year_follow_a_24_7_365_day_market() -> None:
    assert periods_per_year("1h") == 24 * 365
    assert periods_per_year("5m") == 12 * 24 * 365
    assert periods_per_year("1d") == 365
    with pytest.raises(ValueError, match="timeframe"):
        periods_per_year("hourly")


def test_compute_metrics_matches_hand_computed_values() -> None:
    equity = [100.0, 110.0, 99.0, 108.9, 108.9]
    positions = [0.0, 1.0, 1.0, 1.0, 0.0]
    trades = [_trade(10.0, 2), _trade(-5.0, 1), _trade(2.0, 3), _trade(0.0, 4)]
    report = compute_metrics(equity, positions, trades, periods_per_year=8760.0, total_costs=1.5)

    # returns r = [0.1, -0.1, 0.1, 0.0]; mean 0.025
    # sample variance = (0.075² + 0.125² + 0.075² + 0.025²) / 3 = 0.0275 / 3
    sharpe = 0.025 / math.sqrt(0.0275 / 3) * math.sqrt(8760)
    # downside deviation = sqrt(mean([0, 0.01, 0, 0])) = 0.05
    sortino = 0.025 / 0.05 * math.sqrt(8760)
    assert report.total_return == pytest.approx(0.089)
    assert report.sharpe == pytest.approx(sharpe)
    assert report.sortino == pytest.approx(sortino)
    # peak 110 at bar 1, trough 99 at bar 2: 1 - 99/110 = 0.1; never back to 110 -> duration 4 - 1 = 3
    assert report.max_drawdown == pytest.approx(0.1)
    assert report.max_drawdown_duration_bars == 3
    assert report.max_drawdown_recovered is False
    # winners 10 and 2 of 4 trades; gross profit 12 / gross loss 5
    assert report.win_rate == pytest.approx(0.5)
    assert report.profit_factor == pytest.approx(2.4)
    assert report.trade_count == 4
    assert report.avg_trade_bars == pytest.approx(2.5)
    # bars 1..4 hold [1, 1, 1, 0]; |Δ position| = 1 + 0 + 0 + 1 = 2 over 4 bars
    assert report.exposure == pytest.approx(0.75)
    assert report.total_turnover == pytest.approx(2.0)
    assert report.turnover_per_year == pytest.approx(2.0 / 4 * 8760)
    assert report.final_equity == pytest.approx(108.9)
    assert report.total_costs == pytest.approx(1.5)


def test_drawdown_duration_ends_at_recovery() -> None:
    # peak 100 at bar 0, trough 80 at bar 2, back to 100 at bar 4 -> 4 bars, 20 % drawdown
    report = compute_metrics([100.0, 90.0, 80.0, 95.0, 100.0, 120.0], [0.0] * 6, [], 8760.0)
    assert report.max_drawdown == pytest.approx(0.2)
    assert report.max_drawdown_duration_bars == 4
    assert report.max_drawdown_recovered is True


def test_edge_conventions_for_no_trades_and_no_losers() -> None:
    flat = compute_metrics([100.0, 100.0, 100.0], [0.0, 0.0, 0.0], [], 8760.0)
    assert flat.sharpe == 0.0 and flat.sortino == 0.0
    assert math.isnan(flat.win_rate) and math.isnan(flat.profit_factor) and math.isnan(flat.avg_trade_bars)
    assert flat.max_drawdown == 0.0 and flat.exposure == 0.0

    winners = compute_metrics([100.0, 101.0, 103.0], [0.0, 1.0, 1.0], [_trade(3.0, 2)], 8760.0)
    assert winners.profit_factor == math.inf
    assert winners.sortino == math.inf  # no negative return, positive mean
    assert winners.win_rate == 1.0

    payload = json.loads(json.dumps(flat.to_dict(), allow_nan=False))
    assert payload["win_rate"] is None and payload["profit_factor"] is None
    assert json.loads(json.dumps(winners.to_dict(), allow_nan=False))["profit_factor"] == "inf"
    assert EvaluationReport.from_dict(winners.to_dict()) == winners
    rebuilt = EvaluationReport.from_dict(payload)
    assert math.isnan(rebuilt.win_rate) and rebuilt.trade_count == 0


def test_compute_metrics_rejects_bad_curves() -> None:
    with pytest.raises(ValueError, match="equity must be finite"):
        compute_metrics([100.0, float("nan")], [0.0, 0.0], [], 8760.0)
    with pytest.raises(ValueError, match="positions must have"):
        compute_metrics([100.0, 101.0], [0.0], [], 8760.0)


def test_simulate_long_trade_matches_hand_computation() -> None:
    frame = _frame(opens=[100.0, 100.0, 110.0, 100.0], closes=[100.0, 110.0, 99.0, 100.0])
    costs = CostModel(taker_fee_bps=10.0, slippage_bps=0.0)  # 0.001 of |Δ position| × equity
    result = simulate_positions(frame, [1.0, 1.0, 0.0, 0.0], costs, initial_equity=1000.0)

    # bar 1: buy at the open for 1000 × 0.001 = 1, then +10 % on 999 -> 999 + 99.9 = 1098.9
    # bar 2: -10 % on 1098.9 -> 989.01
    # bar 3: gap 99 -> 100 on the open position: 989.01 × 100/99 = 999.0, exit cost 0.999 -> 998.001
    np.testing.assert_allclose(result.equity.to_numpy(), [1000.0, 1098.9, 989.01, 998.001])
    np.testing.assert_allclose(result.positions.to_numpy(), [0.0, 1.0, 1.0, 0.0])
    assert result.total_costs == pytest.approx(1.999)
    (trade,) = result.trades
    assert trade.direction == 1 and trade.bars == 2 and not trade.is_open
    assert trade.entry_time == frame.index[1] and trade.exit_time == frame.index[3]
    assert trade.pnl == pytest.approx(-1.0 + 99.9 - 109.89 + 9.99 - 0.999)
    assert trade.costs == pytest.approx(1.999)


def test_simulate_flip_splits_costs_between_trades() -> None:
    frame = _frame(opens=[100.0, 100.0, 120.0, 90.0], closes=[100.0, 120.0, 90.0, 90.0])
    costs = CostModel(taker_fee_bps=10.0, slippage_bps=10.0)  # 0.002 per unit of turnover, slippage 0.001
    result = simulate_positions(frame, [1.0, -1.0, 0.0, 0.0], costs, initial_equity=1000.0)

    # bar 1: cost 2, long +20 % on 998 -> 1197.6
    # bar 2: flip long -> short (|Δ| = 2): cost 1197.6 × 0.002 × 2 = 4.7904, half exit, half entry;
    #        short on 1192.8096 while price falls 25 % -> + 298.2024 -> 1491.012
    # bar 3: close the short: cost 1491.012 × 0.002 = 2.982024 -> 1488.029976
    np.testing.assert_allclose(result.equity.to_numpy(), [1000.0, 1197.6, 1491.012, 1488.029976])
    long, short = result.trades
    assert long.direction == 1 and short.direction == -1
    assert long.pnl == pytest.approx(-2.0 + 199.6 - 2.3952)
    assert short.pnl == pytest.approx(-2.3952 + 298.2024 - 2.982024)
    assert long.return_fraction == pytest.approx(long.pnl / 1000.0)
    assert short.return_fraction == pytest.approx(short.pnl / 1197.6)
    # fills move against the trade by the 10 bps slippage
    assert long.entry_price == pytest.approx(100.1) and long.exit_price == pytest.approx(119.88)
    assert short.entry_price == pytest.approx(119.88) and short.exit_price == pytest.approx(90.09)
    assert long.pnl + short.pnl == pytest.approx(result.equity.iloc[-1] - 1000.0)


def test_simulate_market_impact_uses_traded_quantity_over_bar_volume() -> None:
    frame = _frame(opens=[100.0, 100.0, 100.0], closes=[100.0, 100.0, 100.0], volumes=[1.0, 20.0, 1.0])
    costs = CostModel(taker_fee_bps=10.0, slippage_bps=0.0, impact_bps=100.0)
    result = simulate_positions(frame, [1.0, 1.0, 1.0], costs, initial_equity=1000.0)
    # bar 1 buys 1000 / 100 = 10 units of a 20-unit bar: participation 0.5 -> slippage 50 bps, fee 10 bps
    assert result.equity.iloc[1] == pytest.approx(1000.0 * (1 - 0.001 - 0.005))
    (trade,) = result.trades
    assert trade.is_open and trade.bars == 2
    assert trade.entry_price == pytest.approx(100.0 * 1.005)


def test_simulate_open_trade_is_marked_to_last_close() -> None:
    frame = _frame(opens=[100.0, 100.0, 105.0], closes=[100.0, 105.0, 110.0])
    result = simulate_positions(frame, [-0.5, -0.5, -0.5], CostModel(0.0, 0.0, 0.0), initial_equity=1000.0)
    # half short from bar 1's open (no costs): each bar's equity moves by -0.5 × the bar's return
    after_bar1 = 1000.0 * (1 - 0.5 * 0.05)
    after_bar2 = after_bar1 * (1 - 0.5 * (110.0 / 105.0 - 1))
    assert result.equity.iloc[-1] == pytest.approx(after_bar2)
    (trade,) = result.trades
    assert trade.is_open and trade.direction == -1 and trade.exit_price == 110.0
    assert trade.pnl == pytest.approx(after_bar2 - 1000.0)


def test_simulate_rejects_bad_targets() -> None:
    frame = _frame(opens=[100.0, 100.0], closes=[100.0, 100.0])
    with pytest.raises(ValueError, match=r"shape \(2,\)"):
        simulate_positions(frame, [1.0], CostModel())
    with pytest.raises(ValueError, match=r"in \[-1, 1\]; was 1.5 at 2024-01-01 01:00"):
        simulate_positions(frame, [0.0, 1.5], CostModel())


def test_sma_crossover_targets_on_a_known_series() -> None:
    frame = _frame(opens=[1.0, 2.0, 3.0, 4.0, 3.0, 2.0, 1.0], closes=[1.0, 2.0, 3.0, 4.0, 3.0, 2.0, 1.0])
    # SMA2 = [-, 1.5, 2.5, 3.5, 3.5, 2.5, 1.5]; SMA3 = [-, -, 2, 3, 3.33, 3, 2]
    np.testing.assert_array_equal(sma_crossover_targets(frame, 2, 3), [0, 0, 1, 1, 1, 0, 0])
    np.testing.assert_array_equal(sma_crossover_targets(frame, 2, 3, allow_short=True), [0, 0, 1, 1, 1, -1, -1])
    with pytest.raises(ValueError, match="fast < slow"):
        sma_crossover_targets(frame, 3, 2)


def test_buy_and_hold_on_real_candles_pays_one_entry_cost(candles: pd.DataFrame) -> None:
    costs = CostModel(taker_fee_bps=10.0, slippage_bps=2.0)
    report = evaluate_positions(candles, buy_and_hold_targets(candles), costs, "1h", initial_equity=10_000.0)
    # fully invested from bar 1's open: equity grows with the price, after one entry cost of 12 bps
    expected = 10_000.0 * (1 - 0.0012) * candles["close"].iloc[-1] / candles["open"].iloc[1]
    assert report.final_equity == pytest.approx(expected, rel=1e-9)
    assert report.total_costs == pytest.approx(10_000.0 * 0.0012)
    assert report.trade_count == 1 and report.exposure == 1.0
    assert report.total_turnover == 1.0


def test_baselines_on_real_candles_share_the_cost_model(candles: pd.DataFrame) -> None:
    rng = np.random.default_rng(7)
    targets = rng.choice([-1.0, 0.0, 1.0], size=len(candles))
    free = evaluate_with_baselines(candles, targets, CostModel(0.0, 0.0, 0.0), "1h")
    costly = evaluate_with_baselines(candles, targets, CostModel(taker_fee_bps=10.0, slippage_bps=5.0), "1h")
    assert set(free) == {"policy", "buy_and_hold", "sma_crossover"}
    for name in free:
        assert costly[name].final_equity < free[name].final_equity, name
        assert costly[name].trade_count == free[name].trade_count, name
    # a random policy trading every other bar pays far more than the SMA rule
    assert costly["policy"].total_costs > 10 * costly["sma_crossover"].total_costs
    assert costly["sma_crossover"].trade_count > 5
    for name, report in costly.items():
        payload = report.to_dict()
        json.dumps(payload, allow_nan=False)
        assert 0.0 <= report.exposure <= 1.0, name

    table = format_table(costly)
    lines = table.splitlines()
    assert lines[0].split() == ["metric", "policy", "buy_and_hold", "sma_crossover"]
    trades_row = next(line for line in lines if line.startswith("trades"))
    assert trades_row.split()[1:] == [str(costly[n].trade_count) for n in costly]
    assert f"{costly['buy_and_hold'].total_return * 100:.2f}%" in table


def test_simulation_agrees_with_the_training_env_bar_by_bar(candles: pd.DataFrame) -> None:
    env_module = pytest.importorskip("training.env")
    frame = candles.iloc[-1500:]
    costs = CostModel(taker_fee_bps=10.0, slippage_bps=5.0, impact_bps=50.0)
    actions = (-1.0, 0.0, 0.5, 1.0)
    config = env_module.EnvConfig(window=8, episode_length=None, random_start=False, actions=actions)
    env = env_module.TradingEnv(frame, config, costs=costs)
    _, info = env.reset(seed=0)
    start = info["start_index"]
    rng = np.random.default_rng(11)
    # Sticky random actions so that trades last several bars, with resizes and flips.
    chosen = np.repeat(rng.integers(0, len(actions), size=(len(frame) - start) // 5 + 1), 5)
    equity, env_trades, step = [env.equity], [], 0
    truncated = False
    while not truncated:
        _, _, terminated, truncated, info = env.step(int(chosen[step]))
        assert not terminated
        equity.append(info["equity"])
        env_trades += [info[key] for key in ("trade", "open_trade") if key in info]
        step += 1

    # The env decides at the close of bar `start + k` for step k + 1: the same targets from bar `start` on.
    targets = np.array([actions[a] for a in chosen[:step]] + [0.0])
    result = simulate_positions(frame.iloc[start:], targets, costs, initial_equity=config.initial_equity)
    np.testing.assert_allclose(result.equity.to_numpy(), equity, rtol=1e-10)
    assert len(result.trades) == len(env_trades) > 20
    for ours, theirs in zip(result.trades, env_trades, strict=True):
        assert ours.direction == theirs["direction"] and ours.bars == theirs["bars"]
        assert ours.is_open == theirs["is_open"]
        assert ours.entry_time.value // 1_000_000 == theirs["entry_time_ms"]
        assert ours.entry_price == pytest.approx(theirs["entry_price"], rel=1e-12)
        assert ours.exit_price == pytest.approx(theirs["exit_price"], rel=1e-12)
        assert ours.pnl == pytest.approx(theirs["pnl"], rel=1e-8, abs=1e-8)
        assert ours.costs == pytest.approx(theirs["costs"], rel=1e-8)
