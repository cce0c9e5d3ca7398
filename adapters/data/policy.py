"""What validation does about each kind of OHLCV problem: the `Policy` and the choices for each kind."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

RowPolicy = Literal["error", "drop"]
GapPolicy = Literal["error", "drop", "ffill", "allow"]
ZeroVolumePolicy = Literal["ignore", "drop", "error"]

ROW_POLICIES: tuple[RowPolicy, ...] = ("error", "drop")
GAP_POLICIES: tuple[GapPolicy, ...] = ("error", "drop", "ffill", "allow")
ZERO_VOLUME_POLICIES: tuple[ZeroVolumePolicy, ...] = ("ignore", "drop", "error")

DEFAULT_GAPS: GapPolicy = "allow"
"""The one default for missing bars, of the loader (training, the daemon) and of `ai-trading data check` alike:
real exchange history has outages; they are reported and kept (filling would invent prices)."""


@dataclass(frozen=True)
class Policy:
    """What to do with each kind of problem (see `adapters.data.validation`)."""

    gaps: GapPolicy = "error"
    """Missing bars between timestamps: error, drop (keep the longest gap-free run), ffill, allow."""
    duplicates: RowPolicy = "error"
    """Rows sharing a timestamp: error or drop (identical: keep first; conflicting: drop all)."""
    non_finite: RowPolicy = "error"
    """NaN/inf values and missing or unparseable timestamps."""
    non_positive: RowPolicy = "error"
    """Prices ≤ 0 and negative volume."""
    high_low: RowPolicy = "error"
    """Bars whose high is below their low."""
    out_of_range: RowPolicy = "error"
    """Bars whose open or close lies outside [low, high]."""
    misaligned: RowPolicy = "error"
    """Timestamps off the timeframe's grid."""
    zero_volume: ZeroVolumePolicy = "ignore"
    """Bars with zero volume: ignore (reported as a warning), drop, or error."""

    def __post_init__(self) -> None:
        for name in ("duplicates", "non_finite", "non_positive", "high_low", "out_of_range", "misaligned"):
            _check_choice(name, getattr(self, name), ROW_POLICIES)
        _check_choice("gaps", self.gaps, GAP_POLICIES)
        _check_choice("zero_volume", self.zero_volume, ZERO_VOLUME_POLICIES)

    def for_kind(self, kind: str) -> str:
        """Return the policy that applies to a problem kind."""
        if kind == "empty":
            return "error"
        return str(getattr(self, _POLICY_FIELD[kind]))

    @classmethod
    def rows(cls, policy: RowPolicy, **overrides: Any) -> Policy:
        """Build a policy applying one row policy to every row-level corruption kind."""
        fields: dict[str, Any] = dict.fromkeys(
            ("non_finite", "non_positive", "high_low", "out_of_range", "misaligned"), policy
        )
        fields.update(overrides)
        return cls(**fields)


def _check_choice(name: str, value: object, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"policy {name}={value!r} is not one of {', '.join(choices)}")


_POLICY_FIELD = {
    "bad_timestamp": "non_finite",
    "non_finite": "non_finite",
    "non_positive_price": "non_positive",
    "negative_volume": "non_positive",
    "high_below_low": "high_low",
    "open_outside_range": "out_of_range",
    "close_outside_range": "out_of_range",
    "misaligned": "misaligned",
    "duplicate": "duplicates",
    "zero_volume": "zero_volume",
    "gap": "gaps",
}
KINDS = ("empty", *_POLICY_FIELD)
