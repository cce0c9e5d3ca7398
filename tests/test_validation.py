"""Every validation rule finds its problem by row and timestamp, and every policy does what it says."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import structlog

from adapters.data.cleaning import apply_policy
from adapters.data.ohlcv import load_ohlcv, load_ohlcv_checked, read_ohlcv_raw
from adapters.data.policy import Policy
from adapters.data.validation import validate_ohlcv
from adapters.errors import DataError

ROW = 40  # the row corrupted in each test (0-based, file order)


def need(root: Path, relative: str) -> Path:
    """Return a data file the project ships (tests/data/ or adapters/bundled/); fail if it is missing."""
    path = root / relative
    assert path.is_file(), f"{relative} is not shipped (see tests/data/README.md)"
    return path


@pytest.fixture
def table(shared_data: Path) -> pd.DataFrame:
    """Return 120 real ETH/BTC 5m candles as a raw table (`date` column, file order)."""
    frame = load_ohlcv(need(shared_data, "freqtrade/ETH_BTC-5m.feather")).iloc[2000:2120]
    return frame.reset_index()


def write(table: pd.DataFrame, tmp_path: Path, name: str = "ETH_BTC-5m.parquet") -> Path:
    """Write a raw table as parquet with epoch-ms dates, like the Binance files."""
    path = tmp_path / name
    table.assign(date=table["date"].dt.as_unit("ms").astype("int64")).to_parquet(path)
    return path


def corrupted(table: pd.DataFrame, change: Callable[[pd.DataFrame], None]) -> pd.DataFrame:
    """Return a copy of the table with `change` applied."""
    copy = table.copy()
    change(copy)
    return copy


def ts_of(table: pd.DataFrame, row: int) -> str:
    """Return a regex matching a row's timestamp as messages print it."""
    return re.escape(str(table["date"].iloc[row]))


# --- each rule: found by validation, refused by the default loader with row + timestamp -----------


def _set(column: str, value: float) -> Callable[[pd.DataFrame], None]:
    def change(frame: pd.DataFrame) -> None:
        frame.loc[ROW, column] = value

    return change


def _swap_high_low(frame: pd.DataFrame) -> None:
    frame.loc[ROW, ["high", "low"]] = frame.loc[ROW, ["low", "high"]].to_numpy() * [0.99, 1.01]


def _close_above_high(frame: pd.DataFrame) -> None:
    frame.loc[ROW, "close"] = frame.loc[ROW, "high"] * 1.05


def _open_below_low(frame: pd.DataFrame) -> None:
    frame.loc[ROW, "open"] = frame.loc[ROW, "low"] * 0.95


def _misalign(frame: pd.DataFrame) -> None:
    frame.loc[ROW, "date"] = frame.loc[ROW, "date"] + pd.Timedelta(minutes=1)


RULES = [
    ("non_finite", _set("high", np.nan), "high", "high is nan"),
    ("non_finite", _set("volume", np.inf), "volume", "volume is inf"),
    ("non_positive_price", _set("low", -0.5), "low", "low -0.5 is not positive"),
    ("non_positive_price", _set("open", 0.0), "open", "open 0.0 is not positive"),
    ("negative_volume", _set("volume", -3.0), "volume", "volume -3.0 is negative"),
    ("high_below_low", _swap_high_low, "high", "high .* < low"),
    ("close_outside_range", _close_above_high, "close", "close .* outside \\[low .*, high .*\\]"),
    ("open_outside_range", _open_below_low, "open", "open .* outside \\[low .*, high .*\\]"),
    ("misaligned", _misalign, "date", "timestamp is off the 5m grid"),
]


@pytest.mark.parametrize(("kind", "change", "column", "detail"), RULES, ids=[f"{r[0]}-{r[2]}" for r in RULES])
def test_rule_is_found_and_refused_naming_row_and_timestamp(
    table: pd.DataFrame, tmp_path: Path, kind: str, change: Callable[[pd.DataFrame], None], column: str, detail: str
) -> None:
    bad = corrupted(table, change)
    path = write(bad, tmp_path)
    report = validate_ohlcv(read_ohlcv_raw(path), source=str(path))
    hits = [f for f in report.findings if f.kind == kind]
    assert len(hits) == 1
    assert hits[0].row == ROW
    assert hits[0].column == column
    assert hits[0].timestamp == bad["date"].iloc[ROW]
    assert not report.ok and kind in {p.kind for p in report.errors}
    with pytest.raises(
        DataError, match=rf"(?s){path.name}.*{kind} x1 \(policy error\): row {ROW} \({ts_of(bad, ROW)}\): {detail}"
    ):
        load_ohlcv(path)


@pytest.mark.parametrize(("kind", "change", "column", "detail"), RULES, ids=[f"{r[0]}-{r[2]}" for r in RULES])
def test_drop_policy_removes_exactly_the_bad_row_and_records_it(
    table: pd.DataFrame, tmp_path: Path, kind: str, change: Callable[[pd.DataFrame], None], column: str, detail: str
) -> None:
    bad = corrupted(table, change)
    path = write(bad, tmp_path)
    with structlog.testing.capture_logs() as logs:
        result = load_ohlcv_checked(path, invalid="drop")
    assert len(result.frame) == len(table) - 1
    assert bad["date"].iloc[ROW] not in result.frame.index
    dropped = [a for a in result.actions if a.action == "dropped"]
    assert [(a.kind, a.row, a.timestamp) for a in dropped] == [(kind, ROW, bad["date"].iloc[ROW])]
    assert result.report.actions == result.actions
    events = [e for e in logs if e["event"] == "ohlcv_rows_dropped"]
    assert len(events) == 1 and events[0]["kind"] == kind and events[0]["where"][0]["row"] == ROW
    # The rest is untouched.
    expected = table.drop(index=ROW).set_index("date")
    np.testing.assert_array_equal(result.frame.to_numpy(), expected.to_numpy())


def test_dropping_a_row_that_opens_a_gap_is_refused_under_gaps_error(table: pd.DataFrame, tmp_path: Path) -> None:
    path = write(corrupted(table, _set("close", np.nan)), tmp_path)
    report = validate_ohlcv(read_ohlcv_raw(path), source=str(path), policy=Policy(non_finite="drop"))
    assert report.ok
    with pytest.raises(
        DataError,
        match=rf"opened 1 gap\(s\) \(policy gaps=error\): 1 bar\(s\) missing after {ts_of(table, ROW - 1)}",
    ):
        apply_policy(read_ohlcv_raw(path), report)
    filled = apply_policy(
        read_ohlcv_raw(path),
        validate_ohlcv(read_ohlcv_raw(path), source=str(path), policy=Policy(non_finite="drop", gaps="ffill")),
    )
    assert len(filled.frame) == len(table)
    assert filled.frame["volume"].iloc[ROW] == 0
    assert filled.frame["close"].iloc[ROW] == table["close"].iloc[ROW - 1]
    assert [a.action for a in filled.actions] == ["dropped", "filled"]


def test_zero_volume_is_a_warning_by_default_and_follows_its_policy(table: pd.DataFrame, tmp_path: Path) -> None:
    path = write(corrupted(table, _set("volume", 0.0)), tmp_path)
    raw = read_ohlcv_raw(path)
    report = validate_ohlcv(raw, source=str(path))
    (problem,) = report.problems
    assert (problem.kind, problem.severity, problem.policy, problem.count) == ("zero_volume", "warning", "ignore", 1)
    assert report.ok
    assert len(load_ohlcv(path)) == len(table)
    with pytest.raises(
        DataError, match=rf"zero_volume x1 \(policy error\): row {ROW} \({ts_of(table, ROW)}\): volume is 0"
    ):
        load_ohlcv(path, zero_volume="error")
    dropped = load_ohlcv_checked(path, zero_volume="drop", gaps="allow")
    assert len(dropped.frame) == len(table) - 1
    assert [(a.kind, a.row) for a in dropped.actions] == [("zero_volume", ROW)]


def test_identical_duplicates_are_reported_and_dropped_keeping_the_first(table: pd.DataFrame, tmp_path: Path) -> None:
    bad = pd.concat([table, table.iloc[[ROW]]], ignore_index=True)
    path = write(bad, tmp_path)
    report = validate_ohlcv(read_ohlcv_raw(path), source=str(path))
    (dup,) = report.duplicates
    assert (dup.timestamp, dup.rows, dup.identical) == (table["date"].iloc[ROW], (ROW, len(table)), True)
    assert report.input_sorted is False
    with pytest.raises(
        DataError,
        match=rf"duplicate x1 \(policy error\): 2 identical rows \[{ROW}, {len(table)}\] at {ts_of(table, ROW)}",
    ):
        load_ohlcv(path)
    result = load_ohlcv_checked(path, duplicates="drop")
    pd.testing.assert_frame_equal(result.frame, table.set_index("date"), check_freq=False)
    assert [(a.kind, a.row, a.detail) for a in result.actions] == [
        ("duplicate", len(table), f"identical repeat of row {ROW}")
    ]


def test_conflicting_duplicates_are_all_dropped(table: pd.DataFrame, tmp_path: Path) -> None:
    extra = table.iloc[[ROW]].copy()
    extra["close"] = extra["low"]
    bad = pd.concat([table.iloc[:10], extra, table.iloc[10:]], ignore_index=True)
    path = write(bad, tmp_path)
    report = validate_ohlcv(read_ohlcv_raw(path), source=str(path))
    (dup,) = report.duplicates
    assert dup.identical is False and dup.rows == (10, ROW + 1)
    with pytest.raises(DataError, match=rf"2 conflicting rows \[10, {ROW + 1}\] at {ts_of(table, ROW)}"):
        load_ohlcv(path)
    result = load_ohlcv_checked(path, duplicates="drop", gaps="allow")
    assert table["date"].iloc[ROW] not in result.frame.index
    assert len(result.frame) == len(table) - 1
    assert sorted(a.row for a in result.actions if a.row is not None) == [10, ROW + 1]


def test_unsorted_input_is_reported_but_not_a_problem(table: pd.DataFrame, tmp_path: Path) -> None:
    path = write(table.iloc[::-1], tmp_path)
    report = validate_ohlcv(read_ohlcv_raw(path), source=str(path))
    assert report.input_sorted is False
    assert report.problems == ()
    assert report.first == table["date"].iloc[0] and report.last == table["date"].iloc[-1]


def test_bad_timestamp_and_empty_input(table: pd.DataFrame) -> None:
    raw = table.copy()
    raw.loc[3, "date"] = pd.NaT
    report = validate_ohlcv(raw, source="frame")
    assert [(f.kind, f.row) for f in report.findings] == [("bad_timestamp", 3)]
    assert report.errors[0].kind == "bad_timestamp"
    empty = validate_ohlcv(table.iloc[:0], source="nothing.csv")
    assert empty.rows == 0 and [p.kind for p in empty.errors] == ["empty"]
    with pytest.raises(DataError, match=r"nothing\.csv: 1 data problem"):
        empty.raise_for_errors()


def test_validate_accepts_a_canonical_frame(table: pd.DataFrame) -> None:
    canonical = table.set_index("date")
    report = validate_ohlcv(canonical, source="canonical", timeframe="5m")
    assert report.ok and report.rows == len(table) and report.timeframe == "5m"
    with pytest.raises(DataError, match=r"canonical: missing column\(s\) \['volume'\]"):
        validate_ohlcv(canonical.drop(columns="volume"), source="canonical")


def test_gaps_on_real_files_are_listed_with_where_and_size(shared_data: Path) -> None:
    path = need(shared_data, "freqtrade/ADA_BTC-5m.feather")
    report = validate_ohlcv(read_ohlcv_raw(path), source=str(path))
    assert [(str(g.after), g.missing_bars) for g in report.gaps] == [
        ("2018-01-15 10:05:00+00:00", 1),
        ("2018-01-15 10:25:00+00:00", 1),
        ("2018-01-15 11:05:00+00:00", 4),
        ("2018-01-15 11:40:00+00:00", 1),
        ("2018-01-15 11:55:00+00:00", 33),
    ]
    assert report.missing_bars == 40
    assert [(p.kind, p.severity) for p in report.problems] == [("gap", "error")]
    assert [
        (p.kind, p.severity)
        for p in validate_ohlcv(read_ohlcv_raw(path), source=str(path), policy=Policy(gaps="allow")).problems
    ] == [("gap", "warning")]


def test_real_binance_1h_report(shared_data: Path) -> None:
    path = need(shared_data, "binance/BTC_USDT-1h.parquet")
    report = validate_ohlcv(read_ohlcv_raw(path), source=str(path))
    assert report.rows == 72_540 and report.timeframe == "1h" and report.input_sorted
    largest = report.largest_gap
    assert largest is not None and str(largest.after) == "2018-02-08 00:00:00+00:00" and largest.missing_bars == 33
    assert any(str(g.after).startswith("2019-05-15") for g in report.gaps)
    assert report.counts() == {"zero_volume": 4, "gap": 28}
    data = report.to_dict()
    json.dumps(data)  # serialisable
    assert data["gaps"]["count"] == 28 and data["gaps"]["missing_bars"] == 128
    assert data["gaps"]["largest"] == {"after": "2018-02-08T00:00:00+00:00", "missing_bars": 33}
    assert data["ok"] is False and data["duplicates"]["count"] == 0


def test_sparse_xrp_eth_1m(shared_data: Path) -> None:
    path = need(shared_data, "freqtrade/XRP_ETH-1m.feather")
    report = validate_ohlcv(read_ohlcv_raw(path), source=str(path))
    assert report.rows == 2469 and report.timeframe == "1m"
    assert report.rows + report.missing_bars == 3560
    filled = load_ohlcv(path, gaps="ffill")
    assert len(filled) == 3560 and filled.attrs["filled_bars"] == 1091
    assert int((filled["volume"] == 0).sum()) == 1091


def test_policy_rejects_unknown_choices() -> None:
    with pytest.raises(ValueError, match="policy gaps='fill' is not one of error, drop, ffill, allow"):
        Policy(gaps="fill")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="policy zero_volume='allow'"):
        Policy(zero_volume="allow")  # type: ignore[arg-type]
    assert Policy.rows("drop").high_low == "drop" and Policy.rows("drop").duplicates == "error"
