"""PBO (CSCV) and the deflated Sharpe ratio: purgedcv checked against the papers and an independent computation."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from training.overfitting import (
    OverfittingConfig,
    assess,
    cscv,
    cscv_groups,
    deflated_sharpe_ratios,
    expected_max_sharpe,
    probability_of_overfitting,
    returns_matrix,
)

EULER = 0.5772156649015329


def _psr_from_moments(sharpe: float, benchmark: float, n: int, skew: float, kurtosis: float) -> float:
    """PSR of Bailey & López de Prado (2012), eq. (written here from the paper, not from a library)."""
    z = (sharpe - benchmark) * math.sqrt(n - 1) / math.sqrt(1 - skew * sharpe + (kurtosis - 1) / 4 * sharpe**2)
    return float(stats.norm.cdf(z))


def test_expected_max_sharpe_and_dsr_match_the_papers_numerical_example() -> None:
    # Bailey & López de Prado (2014), "The Deflated Sharpe Ratio", numerical example: annualised SR 2.5 over
    # T = 1250 daily returns, skew -3, kurtosis 10, best of N = 100 trials whose annualised Sharpe ratios
    # have variance 1/2 -> SR0 = 0.1132 per day and DSR = 0.9004.
    sr0 = expected_max_sharpe(100, 0.5 / 250)
    assert sr0 == pytest.approx(0.1132, abs=5e-5)
    dsr = _psr_from_moments(2.5 / math.sqrt(250), sr0, 1250, -3.0, 10.0)
    assert dsr == pytest.approx(0.9004, abs=5e-4)


def test_purgedcv_dsr_agrees_with_the_formula_on_real_moments() -> None:
    rng = np.random.default_rng(7)
    returns = rng.standard_t(5, size=900) * 0.01 + 0.0015
    frame = pd.DataFrame({"a": returns, "b": rng.normal(0, 0.01, 900), "c": rng.normal(0.0005, 0.01, 900)})
    result = deflated_sharpe_ratios(frame)
    sharpes = [frame[c].mean() / frame[c].std(ddof=0) for c in frame]
    for n, trial in enumerate(result, start=1):
        variance = float(np.var(sharpes[:n], ddof=1)) if n > 1 else 0.0
        z = (1 - EULER) * stats.norm.ppf(1 - 1 / n) + EULER * stats.norm.ppf(1 - 1 / (n * math.e)) if n > 1 else 0.0
        sr0 = math.sqrt(variance) * z
        column = frame.iloc[:, n - 1].to_numpy()
        skew = float(stats.skew(column, bias=False))
        kurt = float(stats.kurtosis(column, fisher=False, bias=False))
        expected = _psr_from_moments(sharpes[n - 1], sr0, len(column), skew, kurt)
        assert trial.n_trials == n
        assert trial.expected_max_sharpe == pytest.approx(sr0, rel=1e-12, abs=1e-15)
        assert trial.dsr == pytest.approx(expected, rel=1e-9)
    assert result[0].passed  # a real edge, judged alone
    assert not result[1].passed  # noise


def _cscv_by_hand(matrix: np.ndarray, groups: int) -> float:
    """The CSCV of Bailey et al. section 2, step by step (independent of purgedcv)."""
    t, n = matrix.shape
    bounds = np.array_split(np.arange(t), groups)
    below = 0
    combos = list(itertools.combinations(range(groups), groups // 2))
    for chosen in combos:
        train = np.concatenate([bounds[g] for g in chosen])
        test = np.concatenate([bounds[g] for g in range(groups) if g not in chosen])

        def sharpe(rows: np.ndarray) -> np.ndarray:
            part = matrix[rows]
            return part.mean(axis=0) / part.std(axis=0, ddof=1)

        best = int(np.argmax(sharpe(train)))
        rank = stats.rankdata(sharpe(test))[best]
        omega = rank / (n + 1)
        below += math.log(omega / (1 - omega)) < 0
    return below / len(combos)


def test_pbo_matches_a_hand_written_cscv() -> None:
    rng = np.random.default_rng(3)
    matrix = rng.normal(0, 0.01, size=(480, 12)) + np.linspace(-0.0004, 0.0004, 12)
    frame = pd.DataFrame(matrix, columns=[f"t{i}" for i in range(12)])
    result = probability_of_overfitting(frame, groups=8)
    assert result.groups == 8 and result.combinations == 70
    assert result.pbo == pytest.approx(_cscv_by_hand(matrix, 8), abs=1e-12)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_vectorised_cscv_equals_purgedcv(seed: int) -> None:
    from purgedcv import probability_of_backtest_overfitting

    rng = np.random.default_rng(seed)
    t = 203 + seed  # uneven groups
    matrix = rng.normal(0, 0.01, size=(t, 6)) + rng.normal(0, 0.0005, size=6)
    matrix[:, 5] = 0.0  # a trial that never traded (constant: Sharpe 0 on every slice)
    matrix[:40, 4] = 0.0  # one constant on some groups only
    pbo, combos, slope = cscv(matrix, 10)
    reference = probability_of_backtest_overfitting(matrix.T, n_splits=10)
    assert combos == reference.n_combos == 252
    assert pbo == reference.pbo
    assert slope == pytest.approx(reference.slope, rel=1e-9)


def test_pbo_known_answers_noise_edge_and_reversal() -> None:
    rng = np.random.default_rng(11)
    noise = pd.DataFrame(rng.normal(0, 0.01, size=(1600, 100)))
    # Bailey et al. (N = 100 skill-less trials, S = 16): the in-sample winner is a coin flip out of sample.
    assert 0.35 < (probability_of_overfitting(noise, 16).pbo or 0) < 0.65
    edge = noise.copy()
    edge[0] = edge[0] + 0.004  # one trial with a real, persistent edge (per-period Sharpe 0.4)
    assert probability_of_overfitting(edge, 16).pbo == 0.0
    # Two trials whose strength reverses between halves: the in-sample winner always loses out of sample.
    half = np.r_[np.full(50, 0.01), np.full(50, -0.01)] + rng.normal(0, 0.001, 100)
    reversal = pd.DataFrame({"a": half, "b": -half})
    assert probability_of_overfitting(reversal, 2).pbo == 1.0


def test_too_little_data_gives_a_reason_not_a_number() -> None:
    one = probability_of_overfitting(pd.DataFrame({"a": np.arange(100.0)}), 16)
    assert one.pbo is None and "2 trials" in (one.reason or "")
    short = probability_of_overfitting(pd.DataFrame(np.ones((5, 3))), 16)
    assert short.pbo is None and "too few" in (short.reason or "")
    assert cscv_groups(100, 16) == 16 and cscv_groups(30, 16) == 6 and cscv_groups(7, 16) == 0


def test_assess_aligns_trials_flags_weak_ones_and_handles_a_flat_trial() -> None:
    rng = np.random.default_rng(5)
    index = pd.date_range("2024-01-01", periods=600, freq="1h", tz="UTC")
    series = [(f"t{i}", pd.Series(rng.normal(0, 0.01, 600), index=index)) for i in range(8)]
    series.append(("flat", pd.Series(0.0, index=index)))
    series.append(("short", pd.Series(rng.normal(0, 0.01, 500), index=index[100:])))  # aligned on common bars
    result = assess(series, OverfittingConfig(dsr_threshold=0.95, cscv_groups=16))
    assert result.study.n_trials == 10 and result.study.n_periods == 500
    assert [t.n_trials for t in result.trials.values()] == list(range(1, 11))
    assert result.trials["flat"].dsr is None and not result.trials["flat"].passed
    assert not any(t.passed for t in result.trials.values())  # noise never clears 0.95
    assert result.to_dict()["pbo"]["pbo"] == result.study.pbo


def test_returns_matrix_empty_and_config_checks() -> None:
    assert returns_matrix({}).empty
    with pytest.raises(ValueError, match="dsr_threshold"):
        OverfittingConfig(dsr_threshold=1.5)
    with pytest.raises(ValueError, match="cscv_groups"):
        OverfittingConfig(cscv_groups=5)


def test_the_whole_study_deflates_more_than_the_trials_so_far() -> None:
    rng = np.random.default_rng(9)
    frame = pd.DataFrame(rng.normal(0.0008, 0.01, size=(800, 6)))
    result = assess([(str(c), frame[c]) for c in frame])
    first_alone, first_in_study = result.trials["0"], result.against_all["0"]
    assert first_alone.n_trials == 1 and first_in_study.n_trials == 6
    assert first_in_study.expected_max_sharpe > first_alone.expected_max_sharpe == 0.0
    assert first_in_study.dsr is not None and first_alone.dsr is not None and first_in_study.dsr < first_alone.dsr
