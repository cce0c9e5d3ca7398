"""How much a sweep's choice overstates its best trial: PBO by CSCV and each trial's deflated Sharpe ratio.

Both statistics come from `purgedcv` (a maintained implementation; tests/test_overfitting.py checks it
against the papers' worked figures and an independent computation):

- **PBO** (Bailey, Borwein, López de Prado and Zhu, "The Probability of Backtest Overfitting"): the T×N
  matrix of per-period validation returns of N trials is cut into S contiguous groups in time; for each of
  the C(S, S/2) ways to pick half of them as in-sample, the trial with the best in-sample Sharpe is ranked
  among all trials on the other half. PBO is the share of combinations in which that trial lands below
  the out-of-sample median (logit of its relative rank < 0). 0 means choosing in-sample carried over,
  about 0.5 or more means the choice was noise. Gort et al. (2022) apply it to DRL agents this way.
- **DSR** (Bailey and López de Prado, "The Deflated Sharpe Ratio", 2014): the probabilistic Sharpe ratio
  of a trial's returns (its sample length, skew and kurtosis) against the Sharpe the best of N
  skill-less trials would show, ``sqrt(V[SR]) * ((1 - γ) Φ⁻¹(1 - 1/N) + γ Φ⁻¹(1 - 1/(N e)))`` with V[SR]
  the variance of the trials' Sharpe ratios. A trial is reported with N = the trials finished so far
  (itself included), so the first trial is judged alone and later ones pay for the search.

All Sharpe ratios here are per period (per bar), as both papers define them; the annualised figure is
``sqrt(periods_per_year)`` times larger (8760 for 1h candles on crypto's 24/7 calendar).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import pandas as pd

MIN_PERIODS_PER_GROUP = 4
"""Fewest returns a CSCV group may hold; S is lowered (to an even number >= 2) until each group has this many."""


@dataclass(frozen=True)
class OverfittingConfig:
    """How a sweep judges its trials (training.overfitting in config/training/)."""

    dsr_threshold: float = 0.95
    """Deflated Sharpe ratio a trial needs to count as a real edge; trials below it are flagged."""
    cscv_groups: int = 16
    """S, the number of time groups of the CSCV (even); fewer are used when the validation split is short."""

    def __post_init__(self) -> None:
        if not 0.0 < self.dsr_threshold < 1.0:
            raise ValueError(f"training.overfitting.dsr_threshold must be in (0, 1), was {self.dsr_threshold}")
        if self.cscv_groups < 2 or self.cscv_groups % 2:
            raise ValueError(f"training.overfitting.cscv_groups must be an even number >= 2, was {self.cscv_groups}")


@dataclass(frozen=True)
class StudyOverfitting:
    """PBO of a set of trials."""

    pbo: float | None
    """Probability of backtest overfitting, or None when it cannot be estimated (see `reason`)."""
    n_trials: int
    """Trials in the matrix (columns)."""
    n_periods: int
    """Common validation periods (rows)."""
    groups: int
    """CSCV groups S actually used."""
    combinations: int
    """C(S, S/2) combinations scored."""
    slope: float | None
    """OLS slope of out-of-sample on in-sample Sharpe of the chosen trial (< 0: in-sample strength misleads)."""
    reason: str | None = None
    """Why `pbo` is None."""

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe fields."""
        return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in asdict(self).items()}


@dataclass(frozen=True)
class TrialDeflation:
    """One trial's deflated Sharpe ratio given the trials run up to it."""

    key: str
    """The trial's column in the returns matrix."""
    n_trials: int
    """N: trials finished up to and including this one."""
    sharpe: float | None
    """Per-period Sharpe ratio of its validation returns (population std, as purgedcv)."""
    expected_max_sharpe: float
    """SR0: the per-period Sharpe the best of N skill-less trials would show."""
    dsr: float | None
    """Deflated Sharpe ratio (a probability), or None when the returns have no variance (never traded)."""
    passed: bool
    """dsr >= the threshold."""

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe fields."""
        return asdict(self)


def returns_matrix(series: Mapping[str, pd.Series]) -> pd.DataFrame:
    """Align per-period returns of several trials on their common timestamps: a T×N frame, no NaN."""
    if not series:
        return pd.DataFrame()
    frame = pd.concat({key: s.astype(float) for key, s in series.items()}, axis=1, join="inner")
    return frame.dropna(how="any")


def cscv_groups(n_periods: int, wanted: int) -> int:
    """The even S <= `wanted` giving each group at least MIN_PERIODS_PER_GROUP periods (0 if none does)."""
    groups = min(wanted, n_periods // MIN_PERIODS_PER_GROUP)
    groups -= groups % 2
    return groups if groups >= 2 else 0


def probability_of_overfitting(matrix: pd.DataFrame, groups: int = 16) -> StudyOverfitting:
    """PBO of the trials (columns) of a T×N returns matrix, by CSCV with up to `groups` time groups."""
    n_periods, n_trials = matrix.shape
    used = cscv_groups(n_periods, groups)
    if n_trials < 2:
        return StudyOverfitting(None, n_trials, n_periods, used, 0, None, "needs at least 2 trials with returns")
    if used == 0:
        return StudyOverfitting(
            None, n_trials, n_periods, 0, 0, None, f"{n_periods} common periods are too few for 2 CSCV groups"
        )
    pbo, combinations, slope = cscv(matrix.to_numpy(dtype=float), used)
    return StudyOverfitting(pbo, n_trials, n_periods, used, combinations, slope)


def cscv(matrix: np.ndarray[Any, Any], groups: int) -> tuple[float, int, float | None]:
    """(PBO, combinations, slope) of a T×N matrix: `purgedcv.probability_of_backtest_overfitting`, vectorised.

    purgedcv scores each (combination, trial) pair in Python: C(16, 8) = 12,870 combinations of 20 trials
    take about 10 s. The same statistic from per-group sums is one matrix product; a test checks both give
    the same PBO, logits and slope. Conventions follow purgedcv: S contiguous groups (the first T mod S one
    row longer), Sharpe = mean / sample std, 0 for a constant slice, relative rank = average rank / (N + 1).
    """
    from scipy.stats import rankdata

    n_periods, n_trials = matrix.shape
    bounds = np.cumsum([0] + [n_periods // groups + (1 if k < n_periods % groups else 0) for k in range(groups)])
    sums = np.add.reduceat(matrix, bounds[:-1], axis=0)  # S×N
    squares = np.add.reduceat(matrix * matrix, bounds[:-1], axis=0)
    counts = np.diff(bounds).astype(float)
    lows = np.minimum.reduceat(matrix, bounds[:-1], axis=0)
    highs = np.maximum.reduceat(matrix, bounds[:-1], axis=0)
    chosen = np.array(list(itertools.combinations(range(groups), groups // 2)))
    in_sample = np.zeros((len(chosen), groups))
    np.put_along_axis(in_sample, chosen, 1.0, axis=1)
    is_sharpe = _sharpe_from_sums(in_sample, sums, squares, counts, lows, highs)
    oos_sharpe = _sharpe_from_sums(1.0 - in_sample, sums, squares, counts, lows, highs)
    best = np.argmax(is_sharpe, axis=1)
    rows = np.arange(len(chosen))
    omega = rankdata(oos_sharpe, axis=1)[rows, best] / (n_trials + 1)
    logits = np.log(omega / (1 - omega))
    is_best, oos_best = is_sharpe[rows, best], oos_sharpe[rows, best]
    variance = float(np.var(is_best))
    slope = float(np.cov(is_best, oos_best, ddof=0)[0, 1] / variance) if variance > 0 and len(rows) > 1 else None
    return float(np.mean(logits < 0)), len(chosen), slope


def _sharpe_from_sums(
    mask: np.ndarray[Any, Any],
    sums: np.ndarray[Any, Any],
    squares: np.ndarray[Any, Any],
    counts: np.ndarray[Any, Any],
    lows: np.ndarray[Any, Any],
    highs: np.ndarray[Any, Any],
) -> np.ndarray[Any, Any]:
    n = (mask @ counts)[:, None]
    total = mask @ sums
    mean = total / n
    variance = np.maximum((mask @ squares - total * mean) / (n - 1), 0.0)
    selected = mask.astype(bool)
    low = np.stack([lows[row].min(axis=0) for row in selected])
    high = np.stack([highs[row].max(axis=0) for row in selected])
    with np.errstate(divide="ignore", invalid="ignore"):
        sharpe = mean / np.sqrt(variance)
    return np.where((high > low) & (variance > 0), sharpe, 0.0)


def per_period_sharpe(returns: np.ndarray[Any, Any]) -> float | None:
    """Mean over population std of per-period returns; None when they have no variance."""
    values = np.asarray(returns, dtype=float)
    if values.size < 2 or float(np.ptp(values)) == 0.0:
        return None
    return float(values.mean() / values.std(ddof=0))


def expected_max_sharpe(n_trials: int, variance: float) -> float:
    """SR0 of the DSR paper: the expected best per-period Sharpe of `n_trials` skill-less trials (0 for one)."""
    from scipy.stats import norm

    if n_trials <= 1 or variance <= 0:
        return 0.0
    euler = 0.5772156649015329
    z = (1 - euler) * norm.ppf(1 - 1 / n_trials) + euler * norm.ppf(1 - 1 / (n_trials * math.e))
    return float(math.sqrt(variance) * z)


def deflated_sharpe_ratios(
    matrix: pd.DataFrame, threshold: float = 0.95, *, so_far: bool = True
) -> list[TrialDeflation]:
    """Each column's DSR with N = its position in the (completion-ordered) columns + 1, or N = all columns.

    V[SR] is the sample variance of the per-period Sharpe ratios of the columns counted; a column with
    no variance (a policy that never traded) has no Sharpe, counts as a trial, and gets dsr None.
    """
    from purgedcv import deflated_sharpe_ratio_full

    out: list[TrialDeflation] = []
    all_sharpes = [per_period_sharpe(matrix[key].to_numpy(dtype=float)) for key in matrix.columns]
    for index, key in enumerate(matrix.columns):
        returns = matrix[key].to_numpy(dtype=float)
        sharpe = all_sharpes[index]
        counted = all_sharpes[: index + 1] if so_far else all_sharpes
        n = len(counted)
        sharpes = [x for x in counted if x is not None]
        variance = float(np.var(sharpes, ddof=1)) if len(sharpes) > 1 else 0.0
        expected_max = expected_max_sharpe(n, variance)
        dsr: float | None = None
        if sharpe is not None:
            try:
                dsr = float(deflated_sharpe_ratio_full(returns, n_trials=n, var_sharpe=variance).dsr)
            except ValueError:  # moments too extreme for the normal approximation
                dsr = None
        out.append(TrialDeflation(str(key), n, sharpe, expected_max, dsr, dsr is not None and dsr >= threshold))
    return out


@dataclass(frozen=True)
class SweepOverfitting:
    """What a sweep's leaderboard shows about overfitting."""

    study: StudyOverfitting
    trials: dict[str, TrialDeflation]
    """Each trial's DSR given the trials run up to it."""
    against_all: dict[str, TrialDeflation]
    """Each trial's DSR given every trial of the study (what the chosen best trial must pass)."""
    threshold: float

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe summary block."""
        return {
            "pbo": self.study.to_dict(),
            "dsr_threshold": self.threshold,
            "trials": {k: v.to_dict() for k, v in self.trials.items()},
            "against_all_trials": {k: v.to_dict() for k, v in self.against_all.items()},
        }


def assess(series: Sequence[tuple[str, pd.Series]], config: OverfittingConfig | None = None) -> SweepOverfitting:
    """PBO of all trials and each trial's DSR; `series` is (key, per-period returns) in completion order."""
    config = config or OverfittingConfig()
    matrix = returns_matrix(dict(series))
    if matrix.shape[1]:
        matrix = matrix[[k for k, _ in series if k in matrix.columns]]
    study = probability_of_overfitting(matrix, config.cscv_groups)
    trials = {t.key: t for t in deflated_sharpe_ratios(matrix, config.dsr_threshold)}
    against_all = {t.key: t for t in deflated_sharpe_ratios(matrix, config.dsr_threshold, so_far=False)}
    return SweepOverfitting(study, trials, against_all, config.dsr_threshold)
