"""load_ohlcv reads every real candle format into the canonical frame, and refuses bad files clearly."""

from __future__ import annotations

import gzip
import json
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import structlog
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from adapters.data import ohlcv
from adapters.data.frame import infer_timeframe, timedelta_to_timeframe, timeframe_to_timedelta
from adapters.data.ohlcv import load_ohlcv, load_ohlcv_checked, read_ohlcv_raw
from adapters.data.sample import sample_path
from adapters.errors import DataError

COLUMNS = ["open", "high", "low", "close", "volume"]


def need(root: Path, relative: str) -> Path:
    """Return a data file the project ships (tests/data/ or adapters/bundled/); fail if it is missing."""
    path = root / relative
    assert path.is_file(), f"{relative} is not shipped (see tests/data/README.md)"
    return path


def assert_canonical(frame: pd.DataFrame) -> None:
    """Check the project's canonical candle frame contract."""
    assert isinstance(frame.index, pd.DatetimeIndex)
    assert frame.index.name == "date"
    assert str(frame.index.tz) == "UTC"
    assert frame.index.is_monotonic_increasing
    assert frame.index.is_unique
    assert list(frame.columns) == COLUMNS
    assert all(dtype == np.float64 for dtype in frame.dtypes)


# (file, rows, first, last, timeframe, gaps, missing bars) — rows/spans from shared/data/README.md for the whole
# files, measured once for the slices shipped under tests/data/ (tests/data/README.md); gap counts cross-checked
# against the README's narrative.
REAL_FILES = [
    ("binance/BTC_USDT-1h.parquet", 72_540, "2017-08-17 04:00", "2025-11-30 23:00", "1h", 28, 128),
    ("binance/BTC_USDT-5m.parquet", 1500, "2021-06-11 16:25", "2021-06-16 21:20", "5m", 0, 0),
    ("binance/BTCUSDT-1m-2025-09-to-11-klines.parquet", 360, "2025-09-01 00:00", "2025-09-01 05:59", "1m", 0, 0),
    ("freqtrade/ETH_BTC-5m.feather", 5760, "2018-01-10 04:55", "2018-01-30 04:50", "5m", 0, 0),
    ("freqtrade/LTC_BTC-5m.feather", 5760, "2018-01-10 04:55", "2018-01-30 04:50", "5m", 0, 0),
    ("freqtrade/ADA_BTC-5m.feather", 680, "2018-01-14 12:00", "2018-01-16 23:55", "5m", 5, 40),
    ("freqtrade/XRP_ETH-1m.feather", 2469, "2019-10-11 00:00", "2019-10-13 11:19", "1m", 676, 3560 - 2469),
    ("freqtrade/XRP_ETH-5m.feather", 706, "2019-10-11 00:00", "2019-10-13 11:15", "5m", 6, 6),
    ("freqtrade/UNITTEST_BTC-1m.json", 1000, "2017-11-04 23:02", "2017-11-05 19:58", "1m", 151, 257),
    ("freqtrade/futures/XRP_USDT_USDT-1h-futures.json.gz", 100, "2021-11-17 01:00", "2021-11-21 04:00", "1h", 0, 0),
    ("freqtrade/futures/XRP_USDT_USDT-5m-futures.feather", 1999, "2021-11-15 00:00", "2021-11-21 22:30", "5m", 0, 0),
]


@pytest.mark.parametrize(("relative", "rows", "first", "last", "timeframe", "gaps", "missing"), REAL_FILES)
def test_real_file_loads_with_default_policies(
    shared_data: Path, relative: str, rows: int, first: str, last: str, timeframe: str, gaps: int, missing: int
) -> None:
    path = need(shared_data, relative)
    result = load_ohlcv_checked(path)
    frame, report = result.frame, result.report
    assert_canonical(frame)
    assert len(frame) == rows == report.rows == report.output_rows
    assert frame.index[0] == pd.Timestamp(first, tz="UTC") == report.first
    assert frame.index[-1] == pd.Timestamp(last, tz="UTC") == report.last
    assert report.timeframe == timeframe == frame.attrs["timeframe"]
    assert frame.attrs["source"] == str(path)
    assert len(report.gaps) == gaps
    assert report.missing_bars == missing
    assert report.actions == ()
    assert (frame["high"] >= frame["low"]).all()


def test_bundled_sample_loads_out_of_the_box_and_keeps_real_gaps(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ohlcv, "_known_shown", set())
    with structlog.testing.capture_logs() as logs:
        frame = load_ohlcv(sample_path("BTC/USDT-1h"))
        load_ohlcv(sample_path("BTC/USDT-1h"))  # a second load in the same process (the quickstart's backtest)
    assert_canonical(frame)
    assert len(frame) == 72_540
    # Known highs from shared/data/README.md.
    assert frame.loc["2017-12-17", "high"].max() == 19_798.68
    assert frame.loc["2021-11-10", "high"].max() == 69_000.00
    assert frame.loc["2024-03-14", "high"].max() == 73_777.00
    # Its documented outages and zero-volume hours: information, once per process, never a warning.
    assert not [e for e in logs if e["log_level"] == "warning"]
    known = [e for e in logs if e["event"] == "ohlcv_known_problem"]
    assert sorted((e["kind"], e["count"], e["log_level"]) for e in known) == [
        ("gap", 28, "info"),
        ("zero_volume", 4, "info"),
    ]
    eth = load_ohlcv(sample_path("ETH/BTC-5m"))
    assert len(eth) == 5760


def test_gap_policies_on_real_file(shared_data: Path) -> None:
    path = need(shared_data, "freqtrade/ADA_BTC-5m.feather")
    with pytest.raises(DataError, match=r"(?s)ADA_BTC-5m\.feather.*gap x5.*33 bar\(s\) missing after 2018-01-15 11:55"):
        load_ohlcv(path, gaps="error")
    filled = load_ohlcv_checked(path, gaps="ffill")
    assert_canonical(filled.frame)
    assert len(filled.frame) == 720  # the shipped 2.5 days: 680 candles + 40 missing
    assert filled.frame.attrs["filled_bars"] == 40
    assert sum(a.count for a in filled.actions if a.action == "filled") == 40
    inserted = filled.frame.loc["2018-01-15 12:00":"2018-01-15 14:40"]
    assert len(inserted) == 33
    assert (inserted["volume"] == 0).all()
    close_before = filled.frame.loc["2018-01-15 11:55", "close"]
    assert (inserted[["open", "high", "low", "close"]] == close_before).all().all()
    longest = load_ohlcv_checked(path, gaps="drop")
    assert longest.frame.index[0] == pd.Timestamp("2018-01-15 14:45", tz="UTC")
    assert len(longest.frame) == 720 - (
        longest.frame.index[0] - pd.Timestamp("2018-01-14 12:00", tz="UTC")
    ) // pd.Timedelta("5min")
    assert sum(a.count for a in longest.actions) == 680 - len(longest.frame)


@pytest.mark.parametrize(
    ("relative", "message"),
    [
        ("freqtrade/XRP_ETH-trades.json.gz", "trades file"),
        ("freqtrade/futures/XRP_USDT_USDT-8h-funding_rate.feather", "funding-rate file"),
    ],
)
def test_non_candle_files_are_refused_by_name(shared_data: Path, relative: str, message: str) -> None:
    path = need(shared_data, relative)
    with pytest.raises(DataError, match=message) as info:
        load_ohlcv(path)
    assert str(path) in str(info.value)


def test_trades_content_under_a_neutral_name_is_refused(shared_data: Path, tmp_path: Path) -> None:
    trades = need(shared_data, "freqtrade/XRP_ETH-trades.json.gz")
    copy = tmp_path / "xrp.json.gz"
    copy.write_bytes(trades.read_bytes())
    with pytest.raises(DataError, match=r"row 0: expected 6 fields.*looks like a trades file"):
        load_ohlcv(copy)
    rows = json.loads(gzip.decompress(trades.read_bytes()))[:50]
    table = pd.DataFrame(rows, columns=["timestamp", "id", "type", "side", "price", "amount", "cost"])
    table.to_parquet(tmp_path / "xrp.parquet")
    with pytest.raises(DataError, match=r"missing column\(s\).*looks like a trades file"):
        load_ohlcv(tmp_path / "xrp.parquet")


@pytest.fixture
def eth_slice(shared_data: Path) -> pd.DataFrame:
    """Return 300 real ETH/BTC 5m candles (canonical)."""
    return load_ohlcv(need(shared_data, "freqtrade/ETH_BTC-5m.feather")).iloc[1000:1300]


def _ms(frame: pd.DataFrame) -> np.ndarray:
    return frame.index.as_unit("ms").asi8


def test_csv_with_epoch_ms_seconds_and_iso_strings(eth_slice: pd.DataFrame, tmp_path: Path) -> None:
    ms = _ms(eth_slice)
    variants = {
        "ms.csv": pd.DataFrame({"timestamp": ms, **{c: eth_slice[c].to_numpy() for c in COLUMNS}}),
        "s.csv": pd.DataFrame({"date": ms // 1000, **{c: eth_slice[c].to_numpy() for c in COLUMNS}}),
        "iso.csv": pd.DataFrame(
            {
                "Date": eth_slice.index.strftime("%Y-%m-%dT%H:%M:%SZ"),
                **{c.upper(): eth_slice[c].to_numpy() for c in COLUMNS},
            }
        ),
        "naive.csv.gz": pd.DataFrame(
            {
                "open_time": eth_slice.index.strftime("%Y-%m-%d %H:%M:%S"),
                **{c: eth_slice[c].to_numpy() for c in COLUMNS},
            }
        ),
    }
    for name, table in variants.items():
        table.to_csv(tmp_path / name, index=False)
        loaded = load_ohlcv(tmp_path / name)
        pd.testing.assert_frame_equal(loaded, eth_slice, obj=name)
        assert loaded.attrs["timeframe"] == "5m"


def test_freqtrade_json_gz_and_kline_parquet_written_from_other_formats(
    eth_slice: pd.DataFrame, tmp_path: Path
) -> None:
    rows = [[int(t), *map(float, values)] for t, values in zip(_ms(eth_slice), eth_slice.to_numpy(), strict=True)]
    (tmp_path / "ETH_BTC-5m.json.gz").write_bytes(gzip.compress(json.dumps(rows).encode()))
    pd.testing.assert_frame_equal(load_ohlcv(tmp_path / "ETH_BTC-5m.json.gz"), eth_slice)

    ms = _ms(eth_slice)
    klines = pd.DataFrame(
        {
            "open_time": ms,
            **{c: eth_slice[c].to_numpy() for c in COLUMNS},
            "close_time": ms + 5 * 60_000 - 1,
            "quote_volume": eth_slice["volume"].to_numpy() * eth_slice["close"].to_numpy(),
            "trades": np.arange(len(ms)),
            "taker_buy_base": eth_slice["volume"].to_numpy() / 2,
            "taker_buy_quote": eth_slice["volume"].to_numpy(),
        }
    )
    klines.to_parquet(tmp_path / "ETHBTC-5m-klines.parquet")
    pd.testing.assert_frame_equal(load_ohlcv(tmp_path / "ETHBTC-5m-klines.parquet"), eth_slice)

    feather = eth_slice.reset_index()
    feather["date"] = feather["date"].dt.as_unit("ns")
    feather.to_feather(tmp_path / "slice.feather")
    pd.testing.assert_frame_equal(load_ohlcv(tmp_path / "slice.feather"), eth_slice)

    # A parquet with the time as a DatetimeIndex rather than a column.
    eth_slice.to_parquet(tmp_path / "indexed.parquet")
    pd.testing.assert_frame_equal(load_ohlcv(tmp_path / "indexed.parquet"), eth_slice)


def test_shuffled_copy_loads_identically(shared_data: Path, tmp_path: Path) -> None:
    path = need(shared_data, "binance/BTC_USDT-1h.parquet")
    original = load_ohlcv(path)
    table = pd.read_parquet(path)
    shuffled = table.sample(frac=1.0, random_state=7)
    assert not shuffled["date"].is_monotonic_increasing
    shuffled.to_parquet(tmp_path / "BTC_USDT-1h.parquet")
    result = load_ohlcv_checked(tmp_path / "BTC_USDT-1h.parquet")
    assert result.report.input_sorted is False
    pd.testing.assert_frame_equal(result.frame, original)


def test_shuffled_json_loads_identically(shared_data: Path, tmp_path: Path) -> None:
    path = need(shared_data, "freqtrade/UNITTEST_BTC-1m.json")
    rows = json.loads(path.read_text())
    rng = np.random.default_rng(3)
    shuffled = [rows[i] for i in rng.permutation(len(rows))]
    (tmp_path / "UNITTEST_BTC-1m.json").write_text(json.dumps(shuffled))
    pd.testing.assert_frame_equal(load_ohlcv(tmp_path / "UNITTEST_BTC-1m.json"), load_ohlcv(path))


@pytest.mark.parametrize("suffix", [".parquet", ".feather", ".json", ".json.gz", ".csv"])
def test_truncated_file_raises_data_error_naming_the_file(eth_slice: pd.DataFrame, tmp_path: Path, suffix: str) -> None:
    path = tmp_path / f"ETH_BTC-5m{suffix}"
    table = eth_slice.reset_index()
    if suffix == ".parquet":
        table.to_parquet(path)
    elif suffix == ".feather":
        table.to_feather(path)
    elif suffix == ".csv":
        table.to_csv(path, index=False)
    else:
        rows = [[int(t), *map(float, v)] for t, v in zip(_ms(eth_slice), eth_slice.to_numpy(), strict=True)]
        payload = json.dumps(rows).encode()
        path.write_bytes(gzip.compress(payload) if suffix.endswith("gz") else payload)
    data = path.read_bytes()
    cut = tmp_path / f"cut{suffix}"
    # Cut mid-row so the CSV's last line is incomplete too.
    cut.write_bytes(data[: len(data) // 2 + 7])
    with pytest.raises(DataError) as info:
        load_ohlcv(cut, timeframe="5m")
    assert str(cut) in str(info.value)
    assert "Traceback" not in str(info.value)


def test_truncated_csv_names_the_cut_row(eth_slice: pd.DataFrame, tmp_path: Path) -> None:
    path = tmp_path / "ETH_BTC-5m.csv"
    eth_slice.reset_index().to_csv(path, index=False)
    text = path.read_text()
    cut_at = text.index("\n", len(text) // 2) + 12  # a few characters into a row
    path.write_text(text[:cut_at])
    pattern = (
        r"(?s)ETH_BTC-5m\.csv.*bad_timestamp x1.*row (\d+) \(NaT\): timestamp '2018-01-1\d ' is missing, "
        r"unparseable or out of range.*non_finite.*row \1 \(NaT\): high is nan"
    )
    with pytest.raises(DataError, match=pattern):
        load_ohlcv(path)


def test_unreadable_inputs_raise_clear_data_errors(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no such file"):
        load_ohlcv(tmp_path / "missing.parquet")
    (tmp_path / "candles.xlsx").write_bytes(b"not a spreadsheet")
    with pytest.raises(DataError, match="unknown candle file format"):
        load_ohlcv(tmp_path / "candles.xlsx")
    pd.DataFrame({"ts": [1, 2], "open": [1.0, 1.0]}).to_csv(tmp_path / "x.csv", index=False)
    with pytest.raises(DataError, match=r"no time column.*\['ts', 'open'\]"):
        load_ohlcv(tmp_path / "x.csv")
    pd.DataFrame({"date": [1_600_000_000_000], "open": [1.0], "high": [1.0], "close": [1.0]}).to_csv(
        tmp_path / "y.csv", index=False
    )
    with pytest.raises(DataError, match=r"y\.csv: missing column\(s\) \['low', 'volume'\]"):
        load_ohlcv(tmp_path / "y.csv")
    (tmp_path / "z.json").write_text('{"open": 1}')
    with pytest.raises(DataError, match="expected a JSON list"):
        load_ohlcv(tmp_path / "z.json")
    (tmp_path / "w.json").write_text('[[1600000000000, 1, 1, 1, "1", 1]]')
    with pytest.raises(DataError, match=r"w\.json: row 0 field 4: expected a number, got '1'"):
        load_ohlcv(tmp_path / "w.json")
    (tmp_path / "empty.json").write_text("[]")
    with pytest.raises(DataError, match=r"(?s)empty\.json.*no candles"):
        load_ohlcv(tmp_path / "empty.json")


def test_timeframe_helpers(eth_slice: pd.DataFrame) -> None:
    assert timeframe_to_timedelta("1h") == pd.Timedelta(hours=1)
    assert timeframe_to_timedelta("5m") == pd.Timedelta(minutes=5)
    assert timeframe_to_timedelta("1w") == pd.Timedelta(days=7)
    for bad in ("", "1M", "0m", "h", "5 minutes", "-1h"):
        with pytest.raises(DataError, match="unknown timeframe"):
            timeframe_to_timedelta(bad)
    assert timedelta_to_timeframe(pd.Timedelta(minutes=90)) == "90m"
    assert timedelta_to_timeframe(pd.Timedelta(hours=24)) == "1d"
    assert infer_timeframe(eth_slice) == pd.Timedelta(minutes=5)
    sparse = eth_slice.iloc[[0, 1, 2, 5, 6, 20]]
    assert infer_timeframe(sparse) == pd.Timedelta(minutes=5)
    with pytest.raises(DataError, match="cannot infer a timeframe from 1"):
        infer_timeframe(eth_slice.iloc[:1])


def test_read_raw_keeps_file_order_and_row_numbers(eth_slice: pd.DataFrame, tmp_path: Path) -> None:
    table = eth_slice.reset_index().iloc[::-1]
    table.to_parquet(tmp_path / "rev.parquet")
    raw = read_ohlcv_raw(tmp_path / "rev.parquet")
    assert list(raw.columns) == ["date", *COLUMNS]
    assert list(raw.index) == list(range(len(eth_slice)))
    assert raw["date"].iloc[0] == eth_slice.index[-1]


# --- hypothesis: valid frames round-trip; invalid input only ever raises DataError -------------------

STEPS = {"1m": 60, "5m": 300, "1h": 3600, "1d": 86400}


@st.composite
def candle_frames(draw: st.DrawFn) -> tuple[pd.DataFrame, str]:
    """Draw a valid canonical frame on a timeframe grid (possibly with gaps)."""
    timeframe = draw(st.sampled_from(sorted(STEPS)))
    step_s = STEPS[timeframe]
    start = draw(st.integers(1_500_000_000 // step_s, 1_800_000_000 // step_s)) * step_s
    positions = draw(st.lists(st.integers(0, 400), min_size=1, max_size=40, unique=True))
    n = len(positions)
    price = st.floats(1e-6, 1e6, allow_nan=False, allow_infinity=False)
    unit = st.floats(0.0, 1.0, allow_nan=False)
    lows = np.array(draw(st.lists(price, min_size=n, max_size=n)))
    highs = lows * (1 + np.array(draw(st.lists(st.floats(0, 0.5), min_size=n, max_size=n))))
    opens = lows + (highs - lows) * np.array(draw(st.lists(unit, min_size=n, max_size=n)))
    closes = lows + (highs - lows) * np.array(draw(st.lists(unit, min_size=n, max_size=n)))
    opens, closes = np.clip(opens, lows, highs), np.clip(closes, lows, highs)
    volumes = np.array(draw(st.lists(st.floats(0, 1e9, allow_nan=False), min_size=n, max_size=n)))
    seconds = start + np.array(positions, dtype=np.int64) * step_s
    index = pd.DatetimeIndex(pd.to_datetime(seconds, unit="s", utc=True), name="date").as_unit("us")
    frame = pd.DataFrame(
        {"open": opens, "high": highs, "low": lows, "close": closes, "volume": volumes}, index=index
    ).sort_index()
    return frame, timeframe


def _write(frame: pd.DataFrame, path: Path) -> None:
    ms = frame.index.as_unit("ms").asi8
    if path.suffix == ".parquet":
        frame.reset_index().assign(date=ms).to_parquet(path)
    elif path.suffix == ".csv":
        frame.reset_index().to_csv(path, index=False)
    else:
        rows = [[int(t), *map(float, v)] for t, v in zip(ms, frame.to_numpy(), strict=True)]
        path.write_text(json.dumps(rows))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=candle_frames(), suffix=st.sampled_from([".parquet", ".csv", ".json"]), shuffle_seed=st.integers(0, 9))
def test_valid_frames_round_trip(data: tuple[pd.DataFrame, str], suffix: str, shuffle_seed: int) -> None:
    frame, timeframe = data
    shuffled = frame.sample(frac=1.0, random_state=shuffle_seed)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"candles{suffix}"
        _write(shuffled, path)
        loaded = load_ohlcv(path, timeframe=timeframe)
    assert_canonical(loaded)
    pd.testing.assert_frame_equal(loaded, frame)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=5),
    lambda children: st.lists(children, max_size=7),
    max_leaves=30,
)


@settings(max_examples=80, deadline=None)
@given(payload=json_values)
def test_arbitrary_json_raises_only_data_error(payload: object) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "candles.json"
        path.write_text(json.dumps(payload))
        _load_or_data_error(path)


@settings(max_examples=80, deadline=None)
@given(payload=st.binary(max_size=300), suffix=st.sampled_from([".parquet", ".feather", ".csv", ".json.gz", ".bin"]))
def test_arbitrary_bytes_raise_only_data_error(payload: bytes, suffix: str) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"candles{suffix}"
        path.write_bytes(payload)
        _load_or_data_error(path)


number = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.integers(-(10**20), 10**20).map(float),
    st.sampled_from([0.0, -1.0, 1.0, 2.0]),
)


@settings(max_examples=80, deadline=None)
@given(
    rows=st.lists(
        st.tuples(
            st.integers(-(2**62), 2**62) | st.sampled_from([1_600_000_000_000, 1_600_000_060_000]),
            number,
            number,
            number,
            number,
            number,
        ),
        min_size=0,
        max_size=12,
    )
)
def test_arbitrary_rows_load_as_valid_candles_or_raise_data_error(rows: list[tuple[int, ...]]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "candles.json"
        path.write_text(json.dumps([list(r) for r in rows]))
        frame = _load_or_data_error(path)
    if frame is not None:
        assert_canonical(frame)
        assert np.isfinite(frame.to_numpy()).all()
        assert (frame[["open", "high", "low", "close"]] > 0).all().all()
        assert (frame["high"] >= frame["low"]).all()
        assert (frame["volume"] >= 0).all()


def _load_or_data_error(path: Path) -> pd.DataFrame | None:
    try:
        return load_ohlcv(path)
    except DataError as e:
        assert str(path) in str(e)
        return None
