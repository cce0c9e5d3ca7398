"""Our evaluation figures against a maintained peer: empyrical-reloaded, on the same returns, to 1e-9 relative.

Annualisation is crypto's 24/7 calendar on a 365-day year (`bot.evaluation.periods_per_year`: 1h -> 8760,
5m -> 105120), passed to empyrical as ``annualization``. Returns are simple, per bar, risk-free rate 0, and
empyrical anchors its drawdown at the starting value as we do (a loss on the first bar is a drawdown).

Profit factor has no light peer here: quantstats pulls in yfinance and its cffi conflicts with ccxt's pin,
and backtesting.py's figure is on trade return percentages where ours is on trade PnL; it is checked below
against the definition on the trades the simulation produced (quantstats' formula on trade PnLs).
"""

from __future__ import annotations

import math

import empyrical
import numpy as np
import numpy.typing as npt
import pandas as pd
import pytest

from adapters.costs import CostModel
from adapters.data.ohlcv import load_ohlcv
from adapters.data.sample import sample_path
from bot.evaluation import (
    EvaluationReport,
    buy_and_hold_targets,
    compute_metrics,
    periods_per_year,
    simulate_positions,
    sma_crossover_targets,
)

RTOL = 1e-9


def _peer(returns: npt.NDArray[np.float64], annualization: float) -> dict[str, float]:
    series = pd.Series(returns)
    return {
        "sharpe": float(empyrical.sharpe_ratio(series, annualization=annualization)),
        "sortino": float(empyrical.sortino_ratio(series, annualization=annualization)),
        "max_drawdown": -float(empyrical.max_drawdown(series)),
        "cagr": float(empyrical.annual_return(series, annualization=annualization)),
        "calmar": float(empyrical.calmar_ratio(series, annualization=annualization)),
    }


def _assert_agrees(report: EvaluationReport, equity: npt.NDArray[np.float64]) -> None:
    returns = equity[1:] / equity[:-1] - 1.0
    peer = _peer(returns, report.periods_per_year)
    for name, expected in peer.items():
        ours = getattr(report, name)
        assert math.isfinite(expected), (name, expected)
        assert ours == pytest.approx(expected, rel=RTOL, abs=0.0), name


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_figures_of_seeded_returns_agree_with_empyrical(seed: int) -> None:
    rng = np.random.default_rng(seed)
    returns = rng.normal(2e-4, 0.01, size=3_000)
    returns[0] = -0.02  # a loss on the first bar: the drawdown is measured from the starting equity
    equity = 1_000.0 * np.concatenate([[1.0], np.cumprod(1.0 + returns)])
    report = compute_metrics(equity, np.ones_like(equity), [], periods_per_year("1h"))
    _assert_agrees(report, equity)
    assert report.calmar == pytest.approx(report.cagr / report.max_drawdown, rel=1e-12)


@pytest.mark.parametrize(
    ("sample", "timeframe", "strategy"),
    [
        ("BTC/USDT-1h", "1h", "buy_and_hold"),
        ("BTC/USDT-1h", "1h", "sma"),
        ("ETH/BTC-5m", "5m", "sma"),
    ],
)
def test_figures_of_real_candles_after_costs_agree_with_empyrical(sample: str, timeframe: str, strategy: str) -> None:
    frame = load_ohlcv(sample_path(sample))
    frame = frame.iloc[-20_000:]
    targets = buy_and_hold_targets(frame) if strategy == "buy_and_hold" else sma_crossover_targets(frame, 10, 30)
    costs = CostModel(taker_fee_bps=10, slippage_bps=5)
    result = simulate_positions(frame, targets, costs, initial_equity=10_000.0)
    equity = result.equity.to_numpy()
    report = compute_metrics(equity, result.positions.to_numpy(), result.trades, periods_per_year(timeframe))
    assert report.periods_per_year == {"1h": 8_760, "5m": 105_120}[timeframe]
    _assert_agrees(report, equity)

    pnls = np.array([t.pnl for t in result.trades])
    if strategy == "sma":
        assert (pnls > 0).any() and (pnls < 0).any(), "the rule both wins and loses on real candles"
        expected = pnls[pnls > 0].sum() / abs(pnls[pnls < 0].sum())
        assert report.profit_factor == pytest.approx(expected, rel=RTOL)


def test_a_report_stored_before_cagr_and_calmar_still_loads() -> None:
    equity = np.array([100.0, 110.0, 99.0, 120.0])
    report = compute_metrics(equity, np.ones(4), [], periods_per_year("1d"))
    stored = {k: v for k, v in report.to_dict().items() if k not in ("cagr", "calmar")}
    loaded = EvaluationReport.from_dict(stored)
    assert math.isnan(loaded.cagr) and math.isnan(loaded.calmar)
    assert loaded.sharpe == report.sharpe
    assert EvaluationReport.from_dict(report.to_dict()).to_dict() == report.to_dict()
    with pytest.raises(ValueError, match="missing keys"):
        EvaluationReport.from_dict({k: v for k, v in stored.items() if k != "sharpe"})
