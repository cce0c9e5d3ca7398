"""Split a candle frame in time: train/validation/test parts and walk-forward folds, never looking ahead.

Every split is made of `Segment`s: half-open row ranges `[start, stop)` over the frame in time order.
Within a split the parts are in order train < validation < test, never overlap, and are separated by
`embargo_bars` unused rows, so a feature window of that many bars computed at the first row of a later
part reads nothing from an earlier one's targets (and no earlier part ever sees a later row).

Walk-forward folds (`walk_forward`): K consecutive folds whose test segments tile the end of the data
without overlap, the last one ending at the last row. Each fold's validation segment sits just before
its test segment (after an embargo), and its train segment just before that: a window of fixed length
(`expanding=False`, rolling) or everything from row 0 (`expanding=True`). A later fold's train segment
may include an earlier fold's test rows: they are in its past.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime

import pandas as pd

from adapters.errors import DataError


@dataclass(frozen=True, slots=True)
class Segment:
    """A half-open range of rows `[start, stop)` in time order."""

    start: int
    stop: int

    def __post_init__(self) -> None:
        if not 0 <= self.start <= self.stop:
            raise ValueError(f"segment needs 0 <= start <= stop, was [{self.start}, {self.stop})")

    def __len__(self) -> int:
        return self.stop - self.start

    @property
    def slice(self) -> slice:
        """The positional slice for `frame.iloc`."""
        return slice(self.start, self.stop)

    def take(self, frame: pd.DataFrame) -> pd.DataFrame:
        """Return the segment's rows of the frame."""
        return frame.iloc[self.start : self.stop]

    def span(self, frame: pd.DataFrame) -> tuple[pd.Timestamp, pd.Timestamp] | None:
        """Return the first and last timestamps of the segment in the frame, or None if it is empty."""
        if len(self) == 0:
            return None
        index = pd.DatetimeIndex(frame.index)
        return index[self.start], index[self.stop - 1]


@dataclass(frozen=True, slots=True)
class TimeSplit:
    """Train, validation and test segments in time order, separated by an embargo."""

    train: Segment
    validation: Segment
    test: Segment
    embargo_bars: int = 0

    def frames(self, frame: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
        """Return the (train, validation, test) frames."""
        return self.train.take(frame), self.validation.take(frame), self.test.take(frame)

    def describe(self, frame: pd.DataFrame) -> dict[str, dict[str, object]]:
        """Return each part's rows and first/last timestamps (ISO strings), for logs and model cards."""
        result: dict[str, dict[str, object]] = {}
        for name, segment in (("train", self.train), ("validation", self.validation), ("test", self.test)):
            span = segment.span(frame)
            result[name] = {
                "start": segment.start,
                "stop": segment.stop,
                "rows": len(segment),
                "first": None if span is None else span[0].isoformat(),
                "last": None if span is None else span[1].isoformat(),
            }
        return result


@dataclass(frozen=True, slots=True)
class Fold(TimeSplit):
    """One walk-forward fold: a TimeSplit with its position among the folds."""

    number: int = 0


def _rows(data: pd.DataFrame | int) -> int:
    if isinstance(data, int):
        if data < 0:
            raise ValueError(f"row count must be >= 0, was {data}")
        return data
    index = data.index
    if isinstance(index, pd.DatetimeIndex) and not index.is_monotonic_increasing:
        raise DataError("frame index must be sorted ascending in time to split it")
    return len(data)


def _check_embargo(embargo_bars: int) -> None:
    if embargo_bars < 0:
        raise ValueError(f"embargo_bars must be >= 0, was {embargo_bars}")


def split_by_fraction(
    data: pd.DataFrame | int,
    train: float = 0.7,
    validation: float = 0.15,
    test: float = 0.15,
    *,
    embargo_bars: int = 0,
    min_rows: int = 1,
) -> TimeSplit:
    """Split rows into consecutive train/validation/test parts by fraction (they must sum to 1).

    The embargo rows come out of the total before the fractions apply. A validation fraction of 0 gives
    an empty validation segment and a single embargo between train and test.
    """
    n = _rows(data)
    _check_embargo(embargo_bars)
    for name, value in (("train", train), ("validation", validation), ("test", test)):
        if not math.isfinite(value) or value < 0 or value > 1:
            raise ValueError(f"{name} fraction must be in [0, 1], was {value}")
    if train <= 0 or test <= 0:
        raise ValueError(f"train and test fractions must be > 0, were train={train} test={test}")
    total = train + validation + test
    if abs(total - 1.0) > 1e-9:
        raise ValueError(f"fractions must sum to 1, got {train} + {validation} + {test} = {total:g}")
    embargoes = 2 if validation > 0 else 1
    usable = n - embargoes * embargo_bars
    n_train = math.floor(usable * train)
    n_validation = math.floor(usable * validation)
    n_test = usable - n_train - n_validation
    sizes = {"train": n_train, "test": n_test}
    if validation > 0:
        sizes["validation"] = n_validation
    short = {name: size for name, size in sizes.items() if size < min_rows}
    if usable <= 0 or short:
        raise DataError(
            f"{n} rows are too few to split {train}/{validation}/{test} with embargo_bars={embargo_bars}: "
            f"parts would get {sizes}, each needs at least {min_rows}"
        )
    train_seg = Segment(0, n_train)
    if validation > 0:
        validation_seg = Segment(n_train + embargo_bars, n_train + embargo_bars + n_validation)
        test_start = validation_seg.stop + embargo_bars
    else:
        validation_seg = Segment(n_train, n_train)
        test_start = n_train + embargo_bars
    return TimeSplit(train_seg, validation_seg, Segment(test_start, n), embargo_bars)


def split_by_date(
    frame: pd.DataFrame,
    validation_start: str | datetime | pd.Timestamp,
    test_start: str | datetime | pd.Timestamp,
    *,
    embargo_bars: int = 0,
    min_rows: int = 1,
) -> TimeSplit:
    """Split a frame at two dates: train before `validation_start`, validation before `test_start`, test after.

    Dates without a timezone are UTC. Each part loses its first `embargo_bars` rows to the embargo
    (validation and test), so no part starts right after the previous one ends.
    """
    _check_embargo(embargo_bars)
    index = frame.index
    if not isinstance(index, pd.DatetimeIndex):
        raise DataError(f"split_by_date needs a DatetimeIndex, got {type(index).__name__}")
    if not index.is_monotonic_increasing:
        raise DataError("frame index must be sorted ascending in time to split it")
    if index.tz is None:
        index = index.tz_localize("UTC")  # naive times are UTC throughout the project
    if len(index) == 0:
        raise DataError("cannot split an empty frame")
    bounds = {"validation_start": _utc(validation_start), "test_start": _utc(test_start)}
    first, last = index[0], index[-1]
    for name, when in bounds.items():
        if not first < when <= last:
            raise DataError(f"{name} {when} is outside the data: it must be after {first} and at or before {last}")
    if bounds["validation_start"] >= bounds["test_start"]:
        raise DataError(
            f"validation_start {bounds['validation_start']} must be before test_start {bounds['test_start']}"
        )
    v = int(index.searchsorted(bounds["validation_start"], side="left"))
    t = int(index.searchsorted(bounds["test_start"], side="left"))
    n = len(index)
    split = TimeSplit(
        Segment(0, v),
        Segment(min(v + embargo_bars, t), t),
        Segment(min(t + embargo_bars, n), n),
        embargo_bars,
    )
    sizes = {"train": len(split.train), "validation": len(split.validation), "test": len(split.test)}
    short = {name: size for name, size in sizes.items() if size < min_rows}
    if short:
        raise DataError(
            f"split at validation_start={bounds['validation_start']} test_start={bounds['test_start']} "
            f"with embargo_bars={embargo_bars} leaves too few rows: {sizes}, each needs at least {min_rows}"
        )
    return split


def _utc(when: str | datetime | pd.Timestamp) -> pd.Timestamp:
    try:
        stamp = pd.Timestamp(when)
    except (TypeError, ValueError) as e:
        raise DataError(f"cannot parse date {when!r}: {e}") from e
    if pd.isna(stamp):
        raise DataError(f"date {when!r} is not a time")
    return stamp.tz_localize("UTC") if stamp.tzinfo is None else stamp.tz_convert("UTC")


def walk_forward(
    data: pd.DataFrame | int,
    n_folds: int,
    *,
    test_bars: int,
    validation_bars: int,
    train_bars: int | None = None,
    embargo_bars: int = 0,
    expanding: bool = False,
) -> list[Fold]:
    """Return `n_folds` walk-forward folds whose test segments tile the end of the data in order.

    `train_bars` is the rolling train window; None uses the largest window that fits the first fold
    (so fold 0 starts at row 0). With `expanding=True` every fold trains from row 0 and `train_bars`
    is only the first fold's minimum.
    """
    n = _rows(data)
    _check_embargo(embargo_bars)
    if n_folds < 1:
        raise ValueError(f"n_folds must be >= 1, was {n_folds}")
    if test_bars < 1:
        raise ValueError(f"test_bars must be >= 1, was {test_bars}")
    if validation_bars < 0:
        raise ValueError(f"validation_bars must be >= 0, was {validation_bars}")
    if train_bars is not None and train_bars < 1:
        raise ValueError(f"train_bars must be >= 1, was {train_bars}")
    embargoes = 2 if validation_bars > 0 else 1
    tail = n_folds * test_bars + validation_bars + embargoes * embargo_bars
    room = n - tail  # rows left for the first fold's train window
    needed = train_bars or 1
    if room < needed:
        raise DataError(
            f"{n} rows are too few for {n_folds} folds of test_bars={test_bars}, validation_bars={validation_bars}, "
            f"embargo_bars={embargo_bars} and train_bars={train_bars}: need at least {tail + needed}"
        )
    window = room if train_bars is None else train_bars
    folds: list[Fold] = []
    first_test = n - n_folds * test_bars
    for k in range(n_folds):
        test_start = first_test + k * test_bars
        if validation_bars > 0:
            validation_stop = test_start - embargo_bars
            validation_start = validation_stop - validation_bars
            train_stop = validation_start - embargo_bars
        else:
            validation_start = validation_stop = train_stop = test_start - embargo_bars
        train_start = 0 if expanding else train_stop - window
        folds.append(
            Fold(
                train=Segment(train_start, train_stop),
                validation=Segment(validation_start, validation_stop),
                test=Segment(test_start, test_start + test_bars),
                embargo_bars=embargo_bars,
                number=k,
            )
        )
    return folds
