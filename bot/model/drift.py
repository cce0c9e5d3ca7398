"""Feature drift: the training distribution of each feature (stored in the model card) against a live window.

Training side: `fit_feature_distribution` bins each raw feature of the training split at its quantiles
(`bins` equal-frequency bins; a feature with fewer distinct values gets fewer bins, ties stay in one bin) and
records the fraction of training rows in each bin. Bins are right-closed, ``(-inf, e0], (e0, e1], ...,
(e_last, inf)``, so live values outside the training range land in the outer bins.

Live side: `DriftMonitor.observe` takes one raw feature row per candle (``IncrementalFeatures.latest``) and
keeps, for a rolling window of the last ``window`` rows, each row's bin indices and per-feature bin counts:
memory is ``window x features`` small integers, an update costs O(features x log bins). `DriftMonitor.check`
computes per feature, on demand:

- PSI (population stability index), ``sum((live - train) * ln(live / train))`` over the bins, each fraction
  floored at `PSI_EPSILON` so an empty bin is finite. Rule of thumb: < 0.1 stable, 0.1-0.25 moderate, > 0.25
  shifted.
- KS, the Kolmogorov-Smirnov statistic ``max |F_live - F_train|``, evaluated at the bin edges (exact for a
  feature with no more distinct values than bins, otherwise a lower bound within one bin's mass).

and returns a `DriftReport`: the figures for the gauges and an alert for each feature that has just crossed
a threshold (a feature that stays above alerts once; it alerts again after it has come back below).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt
import structlog

from bot.events import AlertEvent

if TYPE_CHECKING:
    from bot.model.card import ModelCard

log = structlog.get_logger()

DISTRIBUTION_METHOD = "quantile_bins"
"""Name of the binning scheme stored in the card (the only one this build reads)."""
DEFAULT_BINS = 20
"""Equal-frequency bins per feature by default."""
PSI_EPSILON = 1e-4
"""Smallest bin fraction PSI uses (an empty bin would make it infinite)."""
ALERT_CODE = "feature_drift"
"""Alert code of drift alerts."""


class DistributionError(ValueError):
    """A stored feature distribution is malformed or does not match the features fed to it."""


@dataclass(frozen=True)
class FeatureHistogram:
    """One feature's training distribution: right-closed bins between `edges` and the fraction in each."""

    edges: tuple[float, ...]
    """Interior bin edges, strictly increasing (the outer bins are open to -inf and +inf)."""
    proportions: tuple[float, ...]
    """Fraction of training rows per bin (len(edges) + 1 values, summing to 1)."""

    def __post_init__(self) -> None:
        if not all(math.isfinite(e) for e in self.edges):
            raise DistributionError("edges must be finite")
        if any(b <= a for a, b in zip(self.edges, self.edges[1:], strict=False)):
            raise DistributionError("edges must be strictly increasing")
        if len(self.proportions) != len(self.edges) + 1:
            raise DistributionError(
                f"needs len(edges) + 1 = {len(self.edges) + 1} proportions, has {len(self.proportions)}"
            )
        if not all(math.isfinite(p) and p >= 0 for p in self.proportions):
            raise DistributionError("proportions must be finite and >= 0")
        if abs(sum(self.proportions) - 1.0) > 1e-6:
            raise DistributionError(f"proportions must sum to 1, sum to {sum(self.proportions):.9g}")


@dataclass(frozen=True)
class FeatureDistribution:
    """Every feature's training distribution, in observation order (stored in the model card)."""

    names: tuple[str, ...]
    """Feature names, in the order of a feature row."""
    histograms: tuple[FeatureHistogram, ...]
    """One histogram per name."""
    rows: int
    """Training rows the histograms were fitted on."""
    source: str = "train"
    """Which split the rows came from (always the training split)."""

    def __post_init__(self) -> None:
        if not self.names or len(set(self.names)) != len(self.names):
            raise DistributionError(f"names must be distinct and non-empty, were {list(self.names)}")
        if len(self.histograms) != len(self.names):
            raise DistributionError(f"{len(self.names)} names but {len(self.histograms)} histograms")
        if isinstance(self.rows, bool) or not isinstance(self.rows, int) or self.rows < 1:
            raise DistributionError(f"rows must be a positive integer, was {self.rows!r}")

    def to_dict(self) -> dict[str, Any]:
        """Return the JSON layout stored under the card's ``feature_distribution``."""
        return {
            "method": DISTRIBUTION_METHOD,
            "source": self.source,
            "rows": self.rows,
            "features": {
                name: {"edges": list(h.edges), "proportions": list(h.proportions)}
                for name, h in zip(self.names, self.histograms, strict=True)
            },
        }

    @classmethod
    def from_dict(cls, data: object) -> FeatureDistribution:
        """Rebuild from `to_dict` output; raise `DistributionError` naming the bad key."""
        if not isinstance(data, Mapping):
            raise DistributionError(f"must be an object, was {type(data).__name__}")
        expected = {"method", "source", "rows", "features"}
        if set(data) != expected:
            raise DistributionError(f"needs exactly the keys {sorted(expected)}, has {sorted(data)}")
        if data["method"] != DISTRIBUTION_METHOD:
            raise DistributionError(
                f"method {data['method']!r} is not supported; this build reads {DISTRIBUTION_METHOD!r}"
            )
        if not isinstance(data["source"], str):
            raise DistributionError(f"source must be a string, was {data['source']!r}")
        features = data["features"]
        if not isinstance(features, Mapping) or not features:
            raise DistributionError("features must be a non-empty object")
        histograms = []
        for name, entry in features.items():
            if not isinstance(entry, Mapping) or set(entry) != {"edges", "proportions"}:
                raise DistributionError(f"features.{name} must be {{edges, proportions}}")
            try:
                histograms.append(FeatureHistogram(_floats(entry["edges"], name), _floats(entry["proportions"], name)))
            except DistributionError as e:
                raise DistributionError(f"features.{name}: {e}") from None
        return cls(tuple(str(n) for n in features), tuple(histograms), data["rows"], data["source"])


def _floats(values: object, name: str) -> tuple[float, ...]:
    if not isinstance(values, list) or not all(isinstance(v, int | float) and not isinstance(v, bool) for v in values):
        raise DistributionError(f"features.{name}: edges and proportions must be lists of numbers")
    return tuple(float(v) for v in values)


def fit_feature_distribution(
    names: Sequence[str], features: npt.ArrayLike, valid: npt.ArrayLike | None = None, *, bins: int = DEFAULT_BINS
) -> FeatureDistribution:
    """Bin each column of `features` ([T, len(names)], the training split's raw rows) at its quantiles.

    `valid` masks the rows to use (the feature pipeline's valid mask: warm-up rows are 0 and must not count).
    """
    matrix = np.asarray(features, dtype=np.float64)
    if matrix.ndim != 2 or matrix.shape[1] != len(names):
        raise ValueError(f"features must have shape (T, {len(names)}), was {matrix.shape}")
    if valid is not None:
        mask = np.asarray(valid, dtype=bool)
        if mask.shape != (matrix.shape[0],):
            raise ValueError(f"valid must have shape ({matrix.shape[0]},), was {mask.shape}")
        matrix = matrix[mask]
    if bins < 2:
        raise ValueError(f"bins must be >= 2, was {bins}")
    if len(matrix) < bins:
        raise ValueError(f"fitting {bins} bins needs at least {bins} training rows, got {len(matrix)}")
    if not np.isfinite(matrix).all():
        raise ValueError("features contain NaN or inf")
    levels = np.linspace(0.0, 1.0, bins + 1)[1:-1]
    histograms = []
    for column in matrix.T:
        edges = np.unique(np.quantile(column, levels))
        counts = np.bincount(np.searchsorted(edges, column, side="left"), minlength=len(edges) + 1)
        proportions = counts / counts.sum()
        histograms.append(FeatureHistogram(tuple(edges.tolist()), tuple(proportions.tolist())))
    return FeatureDistribution(tuple(names), tuple(histograms), len(matrix))


def psi(live: npt.ArrayLike, train: npt.ArrayLike, epsilon: float = PSI_EPSILON) -> float:
    """Return the population stability index of two bin-fraction vectors."""
    actual = np.maximum(np.asarray(live, dtype=np.float64), epsilon)
    expected = np.maximum(np.asarray(train, dtype=np.float64), epsilon)
    return float(np.sum((actual - expected) * np.log(actual / expected)))


def ks_statistic(live: npt.ArrayLike, train: npt.ArrayLike) -> float:
    """Return ``max |F_live - F_train|`` at the bin edges of two bin-fraction vectors."""
    gap = np.abs(np.cumsum(np.asarray(live, dtype=np.float64)) - np.cumsum(np.asarray(train, dtype=np.float64)))
    return float(gap[:-1].max()) if len(gap) > 1 else 0.0


@dataclass(frozen=True)
class DriftConfig:
    """Feature drift monitoring (config/bot/default.yaml, ``bot.drift``)."""

    enabled: bool = True
    """Monitor drift (needs a card with a feature distribution; older cards run without it)."""
    window: int = 2160
    """Live candles in the rolling window (2160 = 90 days of 1h candles; a month is too short for volatility)."""
    min_samples: int = 720
    """Candles the window needs before drift is computed."""
    schedule: str = "23 * * * *"
    """Cron (UTC) of the drift check (gauges, alerts); "" turns the check off."""
    psi_threshold: float = 0.25
    """Alert when a feature's PSI exceeds this."""
    ks_threshold: float = 0.25
    """Alert when a feature's KS statistic exceeds this."""

    def __post_init__(self) -> None:
        if isinstance(self.window, bool) or self.window < 2:
            raise ValueError(f"bot.drift.window: must be an integer >= 2, was {self.window!r}")
        if not 1 <= self.min_samples <= self.window:
            raise ValueError(f"bot.drift.min_samples: must be in [1, window={self.window}], was {self.min_samples}")
        if not (math.isfinite(self.psi_threshold) and self.psi_threshold > 0):
            raise ValueError(f"bot.drift.psi_threshold: must be > 0, was {self.psi_threshold}")
        if not 0 < self.ks_threshold <= 1:
            raise ValueError(f"bot.drift.ks_threshold: must be in (0, 1], was {self.ks_threshold}")
        if self.schedule.strip():
            # Imported here: the model card reads this module, and card readers need no scheduler.
            from bot.engine.scheduler import cron_trigger

            cron_trigger(self.schedule, "bot.drift.schedule")


@dataclass(frozen=True)
class FeatureDrift:
    """One feature's drift figures."""

    psi: float
    """Population stability index of the live window against training."""
    ks: float
    """Kolmogorov-Smirnov statistic of the live window against training."""


@dataclass(frozen=True)
class DriftAlert:
    """A feature whose live distribution has just moved past a threshold."""

    feature: str
    """Feature name."""
    psi: float
    """Its PSI."""
    ks: float
    """Its KS statistic."""
    samples: int
    """Live candles the figures were computed on."""
    message: str
    """What happened, with the thresholds."""

    def to_event(self, bot_id: str, ts: datetime) -> AlertEvent:
        """Return the alert event for the sinks (ledger, MQTT, W&B, Prometheus)."""
        return AlertEvent(ts=ts, bot_id=bot_id, level="warning", code=ALERT_CODE, message=self.message)


@dataclass(frozen=True)
class DriftReport:
    """The result of one drift check."""

    checked_at: datetime
    """When the check ran."""
    samples: int
    """Live candles in the window."""
    features: Mapping[str, FeatureDrift] = field(default_factory=dict)
    """Figures per feature; empty while the window holds fewer than min_samples candles."""
    alerts: tuple[DriftAlert, ...] = ()
    """Features that crossed a threshold since the previous check."""

    @property
    def is_ready(self) -> bool:
        """Whether the window was full enough to compute drift."""
        return bool(self.features)

    def gauges(self) -> dict[str, tuple[float, float]]:
        """Return {feature: (psi, ks)}, the plain values `monitoring.metrics.BotMetrics.set_feature_drift` takes."""
        return {name: (d.psi, d.ks) for name, d in self.features.items()}


class DriftMonitor:
    """Rolling window of live feature rows, compared with the card's training distribution on demand."""

    def __init__(self, distribution: FeatureDistribution, config: DriftConfig) -> None:
        """Start with an empty window of `config.window` rows."""
        self.distribution = distribution
        self.config = config
        self.names = distribution.names
        widest = max(len(h.edges) for h in distribution.histograms)
        if widest >= np.iinfo(np.int16).max:
            raise DistributionError(f"a feature has {widest + 1} bins; the drift monitor handles at most 32767")
        # Edges padded with +inf to one [features, widest] array: a row's bin indices are one comparison.
        self._edges = np.full((len(self.names), widest), np.inf)
        for j, h in enumerate(distribution.histograms):
            self._edges[j, : len(h.edges)] = h.edges
        self._train = [np.asarray(h.proportions, dtype=np.float64) for h in distribution.histograms]
        self._features = np.arange(len(self.names))
        self._bins = np.zeros((config.window, len(self.names)), dtype=np.int16)
        self._counts = np.zeros((len(self.names), widest + 1), dtype=np.int64)
        self._next = 0
        self._filled = 0
        self._drifting: set[str] = set()
        self._rejected = 0

    @property
    def samples(self) -> int:
        """Live rows in the window."""
        return self._filled

    @property
    def drifting(self) -> frozenset[str]:
        """Features above a threshold at the latest check."""
        return frozenset(self._drifting)

    def observe(self, features: npt.ArrayLike) -> None:
        """Add one candle's raw feature row (in `names` order); the oldest row leaves a full window."""
        row = np.asarray(features, dtype=np.float64)
        if row.shape != (len(self.names),):
            raise DistributionError(
                f"drift monitor expects a feature row of shape ({len(self.names)},) for {list(self.names)}, "
                f"got {row.shape}"
            )
        if not np.isfinite(row).all():
            self._rejected += 1
            if self._rejected == 1 or self._rejected % 1000 == 0:
                log.warning("drift_row_rejected", reason="not finite", rejected=self._rejected)
            return
        slot = self._next
        if self._filled == self.config.window:
            self._counts[self._features, self._bins[slot]] -= 1
        # Right-closed bins: the index is the number of edges strictly below the value.
        index = (self._edges < row[:, None]).sum(axis=1)
        self._bins[slot] = index
        self._counts[self._features, index] += 1
        self._next = (slot + 1) % self.config.window
        self._filled = min(self._filled + 1, self.config.window)

    def observe_many(self, rows: npt.ArrayLike) -> None:
        """Add many candles' raw feature rows at once, oldest first: the same window as `observe` on each in turn.

        For a backtest, which holds its whole history's features: one vectorised binning instead of a call per
        candle.
        """
        block = np.asarray(rows, dtype=np.float64)
        if block.ndim != 2 or block.shape[1] != len(self.names):
            raise DistributionError(
                f"drift monitor expects feature rows of shape (n, {len(self.names)}) for {list(self.names)}, "
                f"got {block.shape}"
            )
        finite = np.isfinite(block).all(axis=1)
        if not finite.all():
            before = self._rejected
            self._rejected += int((~finite).sum())
            if before == 0 or before // 1000 != self._rejected // 1000:
                log.warning("drift_row_rejected", reason="not finite", rejected=self._rejected)
            block = block[finite]
        if not len(block):
            return
        window = self.config.window
        block = block[-window:]
        index = (self._edges[None, :, :] < block[:, :, None]).sum(axis=2).astype(np.int16)
        # The window in order (oldest first), then the new rows; keep the last `window`, from slot 0.
        held = np.roll(self._bins, -self._next, axis=0) if self._filled == window else self._bins[: self._filled]
        kept = np.concatenate([held, index])[-window:]
        self._bins[: len(kept)] = kept
        self._filled = len(kept)
        self._next = len(kept) % window
        self._counts[:] = 0
        for j in self._features:
            counted = np.bincount(kept[:, j], minlength=self._counts.shape[1])
            self._counts[j] = counted

    def compute(self) -> dict[str, FeatureDrift]:
        """Return PSI and KS per feature for the current window (empty below min_samples)."""
        if self._filled < self.config.min_samples:
            return {}
        result = {}
        for name, counts, train in zip(self.names, self._counts, self._train, strict=True):
            live = counts[: len(train)] / self._filled
            result[name] = FeatureDrift(psi=psi(live, train), ks=ks_statistic(live, train))
        return result

    def check(self, now: datetime) -> DriftReport:
        """Compute drift now; alert for each feature that has newly crossed a threshold, log changes."""
        figures = self.compute()
        if not figures:
            return DriftReport(checked_at=now, samples=self._filled)
        cfg = self.config
        above = {n for n, d in figures.items() if d.psi > cfg.psi_threshold or d.ks > cfg.ks_threshold}
        alerts = []
        for name in sorted(above - self._drifting):
            d = figures[name]
            alerts.append(
                DriftAlert(
                    feature=name,
                    psi=d.psi,
                    ks=d.ks,
                    samples=self._filled,
                    message=(
                        f"feature {name} drifted from its training distribution over the last {self._filled} "
                        f"candles: PSI {d.psi:.3f} (threshold {cfg.psi_threshold}), KS {d.ks:.3f} "
                        f"(threshold {cfg.ks_threshold}); the model sees inputs unlike its training data"
                    ),
                )
            )
            log.warning("feature_drift_detected", feature=name, psi=d.psi, ks=d.ks, samples=self._filled)
        for name in sorted(self._drifting - above):
            log.info("feature_drift_cleared", feature=name, psi=figures[name].psi, ks=figures[name].ks)
        self._drifting = above
        return DriftReport(checked_at=now, samples=self._filled, features=figures, alerts=tuple(alerts))


def monitor_for_card(card: ModelCard, config: DriftConfig) -> DriftMonitor | None:
    """Return a drift monitor for `card`, or None (one warning line) when it is off or the card has no distribution."""
    if not config.enabled:
        return None
    if card.feature_distribution is None:
        log.warning(
            "feature_drift_disabled",
            model=card.name,
            schema_version=card.schema_version,
            reason="the model card stores no training feature distribution (exported before card schema 2)",
        )
        return None
    return DriftMonitor(card.feature_distribution, config)
