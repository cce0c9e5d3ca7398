"""The period of trades a dashboard page analyses: the "from"/"to" days of its form, as UTC bounds."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd


@dataclass(frozen=True)
class Period:
    """The days whose trades the analytics cover: entry time in [`since`, `until`) (UTC); None is open."""

    since: pd.Timestamp | None = None
    until: pd.Timestamp | None = None
    first_day: str = ""
    """The form's "from" date as given (YYYY-MM-DD), "" when open."""
    last_day: str = ""
    """The form's "to" date as given (inclusive), "" when open."""

    def select(self, frame: pd.DataFrame) -> pd.DataFrame:
        """Return the trades that entered in the period."""
        if "entry_time" not in frame.columns:
            return frame
        keep = pd.Series(True, index=frame.index)
        if self.since is not None:
            keep &= frame["entry_time"] >= self.since
        if self.until is not None:
            keep &= frame["entry_time"] < self.until
        return frame[keep]

    def clip(self, curve: pd.Series) -> pd.Series:
        """Return the part of an equity curve (UTC index) inside the period."""
        if not len(curve) or not isinstance(curve.index, pd.DatetimeIndex):
            return curve
        index = curve.index if curve.index.tz is not None else curve.index.tz_localize("UTC")
        keep = np.ones(len(curve), dtype=bool)
        if self.since is not None:
            keep &= np.asarray(index >= self.since)
        if self.until is not None:
            keep &= np.asarray(index < self.until)
        return curve[keep]


def parse_period(first_day: str | None, last_day: str | None) -> Period:
    """Return the period of the "from"/"to" dates (YYYY-MM-DD, both inclusive); ValueError naming a bad one."""
    bounds: list[pd.Timestamp | None] = []
    for name, text in (("from", first_day), ("to", last_day)):
        if not text:
            bounds.append(None)
            continue
        try:
            bounds.append(pd.Timestamp(text).tz_localize("UTC").normalize())
        except (ValueError, TypeError) as e:
            raise ValueError(f"{name}={text!r} is not a date (YYYY-MM-DD): {e}") from None
    since, last = bounds
    until = None if last is None else last + pd.Timedelta(days=1)
    if since is not None and until is not None and until <= since:
        raise ValueError(f"to={last_day} is before from={first_day}")
    return Period(since, until, first_day or "", last_day or "")
