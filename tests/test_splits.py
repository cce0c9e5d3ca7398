"""Time splits and walk-forward folds never overlap, never look ahead, and refuse impossible requests."""

from __future__ import annotations

import itertools
from pathlib import Path

import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from adapters.data.ohlcv import load_ohlcv
from adapters.data.sample import sample_path
from adapters.data.splits import Segment, TimeSplit, split_by_date, split_by_fraction, walk_forward
from adapters.errors import DataError


@pytest.fixture(scope="module")
def btc_1h() -> pd.DataFrame:
    """Return the bundled real BTC/USDT 1h candles."""
    return load_ohlcv(sample_path("BTC/USDT-1h"))


def assert_ordered(split: TimeSplit, n: int) -> None:
    """Check train < validation < test, separated by exactly the embargo, inside [0, n)."""
    parts = [split.train, split.validation, split.test]
    non_empty = [p for p in parts if len(p)]
    assert all(0 <= p.start <= p.stop <= n for p in parts)
    for earlier, later in itertools.pairwise(non_empty):
        assert later.start - earlier.stop == split.embargo_bars
    assert len(split.train) > 0 and len(split.test) > 0


def test_fraction_split_on_real_candles_has_no_overlap_or_look_ahead(btc_1h: pd.DataFrame) -> None:
    split = split_by_fraction(btc_1h, 0.7, 0.15, 0.15, embargo_bars=24)
    n = len(btc_1h)
    assert_ordered(split, n)
    assert split.train.start == 0 and split.test.stop == n
    assert len(split.train) + len(split.validation) + len(split.test) + 2 * 24 == n
    assert len(split.train) == int((n - 48) * 0.7)
    train, validation, test = split.frames(btc_1h)
    assert train.index[-1] < validation.index[0] and validation.index[-1] < test.index[0]
    # 24 embargoed bars between the parts (the real data has gaps, so count rows, not hours).
    assert btc_1h.index.get_loc(validation.index[0]) - btc_1h.index.get_loc(train.index[-1]) == 25
    described = split.describe(btc_1h)
    assert described["test"]["last"] == "2025-11-30T23:00:00+00:00"
    assert described["train"]["rows"] == len(train)


def test_fraction_split_without_validation() -> None:
    split = split_by_fraction(100, 0.8, 0.0, 0.2, embargo_bars=5)
    assert split.train == Segment(0, 76) and len(split.validation) == 0 and split.test == Segment(81, 100)


@pytest.mark.parametrize(
    ("args", "kwargs", "error", "message"),
    [
        ((100, 0.7, 0.2, 0.2), {}, ValueError, r"fractions must sum to 1, got 0.7 \+ 0.2 \+ 0.2 = 1.1"),
        ((100, 1.2, -0.1, -0.1), {}, ValueError, r"train fraction must be in \[0, 1\], was 1.2"),
        ((100, 0.0, 0.5, 0.5), {}, ValueError, "train and test fractions must be > 0"),
        ((100, 0.7, 0.15, 0.15), {"embargo_bars": -1}, ValueError, "embargo_bars must be >= 0"),
        ((5, 0.7, 0.15, 0.15), {}, DataError, r"5 rows are too few.*'validation': 0"),
        ((100, 0.7, 0.15, 0.15), {"embargo_bars": 50}, DataError, "100 rows are too few"),
    ],
)
def test_fraction_split_rejects_bad_arguments(
    args: tuple[int, float, float, float], kwargs: dict[str, int], error: type[Exception], message: str
) -> None:
    with pytest.raises(error, match=message):
        split_by_fraction(*args, **kwargs)


def test_date_split_on_real_candles(btc_1h: pd.DataFrame) -> None:
    split = split_by_date(btc_1h, "2024-01-01", pd.Timestamp("2025-01-01", tz="UTC"), embargo_bars=3)
    train, validation, test = split.frames(btc_1h)
    assert train.index[-1] == pd.Timestamp("2023-12-31 23:00", tz="UTC")
    assert validation.index[0] == pd.Timestamp("2024-01-01 03:00", tz="UTC")
    assert validation.index[-1] == pd.Timestamp("2024-12-31 23:00", tz="UTC")
    assert test.index[0] == pd.Timestamp("2025-01-01 03:00", tz="UTC")
    assert test.index[-1] == btc_1h.index[-1]
    assert_ordered(split, len(btc_1h))


@pytest.mark.parametrize(
    ("validation_start", "test_start", "message"),
    [
        ("2010-01-01", "2025-01-01", r"validation_start 2010-01-01 00:00:00\+00:00 is outside the data"),
        ("2024-01-01", "2030-01-01", "test_start 2030-01-01 00:00:00\\+00:00 is outside the data"),
        ("2025-01-01", "2024-01-01", "validation_start .* must be before test_start"),
        ("2025-11-30 22:30", "2025-11-30 23:00", r"leaves too few rows: \{'train': \d+, 'validation': 0, 'test': 0\}"),
        ("not a date", "2025-01-01", "cannot parse date 'not a date'"),
    ],
)
def test_date_split_rejects_bad_dates(
    btc_1h: pd.DataFrame, validation_start: str, test_start: str, message: str
) -> None:
    with pytest.raises(DataError, match=message):
        split_by_date(btc_1h, validation_start, test_start, embargo_bars=1)


def test_rolling_walk_forward_tiles_the_end_with_equal_windows(btc_1h: pd.DataFrame) -> None:
    n = len(btc_1h)
    folds = walk_forward(btc_1h, 5, test_bars=2000, validation_bars=1000, embargo_bars=10)
    assert [f.number for f in folds] == [0, 1, 2, 3, 4]
    assert folds[0].train.start == 0
    assert folds[-1].test.stop == n
    for fold in folds:
        assert_ordered(fold, n)
        assert len(fold.train) == len(folds[0].train) and len(fold.test) == 2000 and len(fold.validation) == 1000
    for earlier, later in itertools.pairwise(folds):
        assert later.test.start == earlier.test.stop  # consecutive, non-overlapping test windows
        assert later.train.start == earlier.train.start + 2000
    # No look-ahead: every training row is before its fold's validation and test rows.
    for fold in folds:
        train, validation, test = fold.frames(btc_1h)
        assert train.index.max() < validation.index.min() <= validation.index.max() < test.index.min()


def test_expanding_walk_forward_trains_from_the_start() -> None:
    folds = walk_forward(1000, 4, test_bars=100, validation_bars=50, train_bars=300, embargo_bars=2, expanding=True)
    assert all(f.train.start == 0 for f in folds)
    assert [len(f.train) for f in folds] == [546, 646, 746, 846]
    assert [f.test.start for f in folds] == [600, 700, 800, 900]


def test_walk_forward_with_fixed_train_window_and_no_validation() -> None:
    folds = walk_forward(1000, 3, test_bars=100, validation_bars=0, train_bars=200)
    assert [(f.train.start, f.train.stop, f.test.start, f.test.stop) for f in folds] == [
        (500, 700, 700, 800),
        (600, 800, 800, 900),
        (700, 900, 900, 1000),
    ]
    assert all(len(f.validation) == 0 for f in folds)


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"n_folds": 0, "test_bars": 10, "validation_bars": 5}, ValueError, "n_folds must be >= 1"),
        ({"n_folds": 2, "test_bars": 0, "validation_bars": 5}, ValueError, "test_bars must be >= 1"),
        ({"n_folds": 2, "test_bars": 10, "validation_bars": -1}, ValueError, "validation_bars must be >= 0"),
        ({"n_folds": 2, "test_bars": 10, "validation_bars": 5, "train_bars": 0}, ValueError, "train_bars must be >= 1"),
        (
            {"n_folds": 10, "test_bars": 10, "validation_bars": 5, "train_bars": 10},
            DataError,
            r"100 rows are too few for 10 folds.*need at least 115",
        ),
    ],
)
def test_walk_forward_rejects_bad_arguments(kwargs: dict[str, int], error: type[Exception], message: str) -> None:
    with pytest.raises(error, match=message):
        walk_forward(100, **kwargs)


def test_unsorted_frame_is_refused(btc_1h: pd.DataFrame) -> None:
    shuffled = btc_1h.iloc[::-1]
    with pytest.raises(DataError, match="sorted ascending"):
        split_by_fraction(shuffled)
    with pytest.raises(DataError, match="sorted ascending"):
        walk_forward(shuffled, 2, test_bars=10, validation_bars=10)


@settings(max_examples=200, deadline=None)
@given(
    n=st.integers(0, 500),
    n_folds=st.integers(1, 6),
    test_bars=st.integers(1, 60),
    validation_bars=st.integers(0, 40),
    train_bars=st.none() | st.integers(1, 200),
    embargo_bars=st.integers(0, 10),
    expanding=st.booleans(),
)
def test_walk_forward_invariants(
    n: int,
    n_folds: int,
    test_bars: int,
    validation_bars: int,
    train_bars: int | None,
    embargo_bars: int,
    expanding: bool,
) -> None:
    try:
        folds = walk_forward(
            n,
            n_folds,
            test_bars=test_bars,
            validation_bars=validation_bars,
            train_bars=train_bars,
            embargo_bars=embargo_bars,
            expanding=expanding,
        )
    except DataError:
        assert n < n_folds * test_bars + validation_bars + (2 if validation_bars else 1) * embargo_bars + (
            train_bars or 1
        )
        return
    assert len(folds) == n_folds
    assert folds[-1].test.stop == n
    for fold in folds:
        assert_ordered(fold, n)
        assert len(fold.validation) == validation_bars
        if train_bars is not None:
            assert len(fold.train) >= train_bars
    covered = [row for fold in folds for row in range(fold.test.start, fold.test.stop)]
    assert covered == list(range(n - n_folds * test_bars, n))


@settings(max_examples=200, deadline=None)
@given(
    n=st.integers(0, 1000),
    train=st.integers(1, 98),
    validation=st.integers(0, 98),
    embargo_bars=st.integers(0, 20),
)
def test_fraction_split_invariants(n: int, train: int, validation: int, embargo_bars: int) -> None:
    if train + validation >= 100:
        return
    test = 100 - train - validation
    try:
        split = split_by_fraction(n, train / 100, validation / 100, test / 100, embargo_bars=embargo_bars)
    except DataError:
        return
    assert_ordered(split, n)
    embargoes = 2 if validation else 1
    assert len(split.train) + len(split.validation) + len(split.test) + embargoes * embargo_bars == n


def test_segment_rejects_reversed_range(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"0 <= start <= stop, was \[5, 3\)"):
        Segment(5, 3)
