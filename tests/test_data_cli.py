"""`python -m adapters.data.cli`: check reports real files and exits by severity; download parses and delegates."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from adapters.data.cli import main
from adapters.data.ohlcv import load_ohlcv
from adapters.data.sample import sample_path
from tests.support.binance_server import BinanceServer

ROOT = Path(__file__).resolve().parents[1]


def need(root: Path, relative: str) -> Path:
    """Return a data file the project ships (tests/data/ or adapters/bundled/); fail if it is missing."""
    path = root / relative
    assert path.is_file(), f"{relative} is not shipped (see tests/data/README.md)"
    return path


def run_json(capsys: pytest.CaptureFixture[str], argv: list[str]) -> tuple[int, dict[str, Any]]:
    """Run the CLI with --json and return the exit code and the parsed stdout."""
    code = main([*argv, "--json"])
    return code, json.loads(capsys.readouterr().out)


def test_check_real_1h_file_fails_on_gaps_error_and_passes_by_default(
    shared_data: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = need(shared_data, "binance/BTC_USDT-1h.parquet")
    assert main(["check", str(path), "--gaps", "error"]) == 1
    table = capsys.readouterr().out
    assert str(path) in table
    assert "72,540" in table and "2017-08-17 04:00 → 2025-11-30 23:00" in table
    assert "ERROR     gap" in table and "33 bar(s) missing after 2018-02-08 00:00:00+00:00" in table
    # The file is the bundled one (the shared_data fixture links it): its known zero-volume hours are information.
    assert "info      zero_volume" in table and "(known, see adapters/bundled/README.md)" in table
    assert table.rstrip().endswith("1 file(s) checked: 0 ok, 1 with errors")

    code, data = run_json(capsys, ["check", str(path)])  # the loader's default, gaps=allow
    assert code == 0 and data["ok"] is True
    (entry,) = data["files"]
    assert entry["rows"] == 72_540 and entry["timeframe"] == "1h"
    assert entry["first"] == "2017-08-17T04:00:00+00:00" and entry["last"] == "2025-11-30T23:00:00+00:00"
    assert entry["gaps"]["count"] == 28 and entry["gaps"]["missing_bars"] == 128
    assert {p["kind"]: p["severity"] for p in entry["problems"]} == {"gap": "warning", "zero_volume": "warning"}


def test_check_several_real_files_and_a_trades_file(shared_data: Path, capsys: pytest.CaptureFixture[str]) -> None:
    eth = need(shared_data, "freqtrade/ETH_BTC-5m.feather")
    ada = need(shared_data, "freqtrade/ADA_BTC-5m.feather")
    trades = need(shared_data, "freqtrade/XRP_ETH-trades.json.gz")
    code, data = run_json(capsys, ["check", str(eth), str(ada), "--gaps", "error"])
    assert code == 1
    by_name = {Path(f["source"]).name: f for f in data["files"]}
    assert by_name["ETH_BTC-5m.feather"]["ok"] is True and by_name["ETH_BTC-5m.feather"]["problems"] == []
    assert by_name["ADA_BTC-5m.feather"]["ok"] is False
    assert by_name["ADA_BTC-5m.feather"]["gaps"]["missing_bars"] == 40
    assert main(["check", str(eth)]) == 0
    capsys.readouterr()
    code, data = run_json(capsys, ["check", str(trades)])
    assert code == 1 and "not OHLCV candles" in data["files"][0]["error"]


def test_check_corrupted_file_names_the_row_and_lists_what_a_policy_changed(
    shared_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    frame = load_ohlcv(need(shared_data, "freqtrade/LTC_BTC-5m.feather")).iloc[:200].reset_index()
    frame.loc[17, "close"] = np.nan
    frame.loc[90, "high"] = frame.loc[90, "low"] / 2
    path = tmp_path / "LTC_BTC-5m.csv"
    frame.to_csv(path, index=False)
    assert main(["check", str(path)]) == 1
    out = capsys.readouterr().out
    assert "ERROR     non_finite" in out and "row 17 (2018-01-10 06:20:00+00:00): close is nan" in out
    assert "ERROR     high_below_low" in out and "row 90 (2018-01-10 12:25:00+00:00): high" in out

    code, data = run_json(capsys, ["check", str(path), "--invalid", "drop", "--gaps", "ffill"])
    assert code == 0
    entry = data["files"][0]
    assert [(a["kind"], a["action"], a["row"]) for a in entry["actions"] if a["action"] == "dropped"] == [
        ("non_finite", "dropped", 17),
        ("high_below_low", "dropped", 90),
    ]
    assert sum(a["count"] for a in entry["actions"] if a["action"] == "filled") == 2
    assert entry["output_rows"] == 200


def test_bad_arguments_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 2
    assert main(["check"]) == 2
    assert main(["check", "x.parquet", "--gaps", "fill"]) == 2
    assert main(["check", "x.parquet", "--timeframe", "1M"]) == 2
    assert main(["download", "--symbol", "BTC/USDT", "--since", "yesterday-ish", "--out", "x.parquet"]) == 2
    assert (
        main(
            ["download", "--symbol", "BTC/USDT", "--since", "2024-01-01", "--out", "x.parquet", "--until", "2023-12-31"]
        )
        == 2
    )
    err = capsys.readouterr().err
    assert "invalid choice: 'fill'" in err
    assert "not a date or ISO-8601 time: 'yesterday-ish'" in err
    assert "--until 2023-12-31T00:00:00+00:00 must be after --since 2024-01-01T00:00:00+00:00" in err
    assert main(["--help"]) == 0


@pytest.mark.integration
async def test_download_command_against_the_local_exchange(
    binance_server: BinanceServer,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The whole command, through real ccxt, against the local Binance-format server; then a resume."""
    out = tmp_path / "BTC_USDT-1h.parquet"
    argv = ["download", "--exchange", "binance", "--symbol", "BTC/USDT", "--timeframe", "1h", "--since", "2024-01-01"]
    argv += ["--until", "2024-01-03T02:00:00+02:00", "--out", str(out), "--no-progress"]
    argv += ["--api-url", binance_server.url]
    # main() runs its own event loop (asyncio.run); the server lives in this test's loop, so run it in a thread.
    assert await asyncio.to_thread(main, argv) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["rows"] == 48 and summary["new_rows"] == 48 and summary["resumed_from"] is None
    assert (summary["first"], summary["last"]) == ("2024-01-01T00:00:00+00:00", "2024-01-02T23:00:00+00:00")
    frame = load_ohlcv(out)
    bundled = load_ohlcv(sample_path()).loc["2024-01-01":"2024-01-02 23:00"]
    pd.testing.assert_frame_equal(frame, bundled, check_freq=False)

    argv[argv.index("--until") + 1] = "2024-01-04"
    assert await asyncio.to_thread(main, argv) == 0
    summary = json.loads(capsys.readouterr().out)
    assert (summary["rows"], summary["new_rows"]) == (72, 24)
    assert summary["resumed_from"] is not None


def test_download_without_the_downloader_module_fails_cleanly(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(sys.modules, "adapters.data.download", None)  # makes the import fail
    assert main(["download", "--symbol", "BTC/USDT", "--since", "2024-01-01", "--out", "x.parquet"]) == 1
    assert "download is unavailable" in capsys.readouterr().err


@pytest.mark.integration
def test_module_entry_point_prints_only_json_on_stdout(shared_data: Path) -> None:
    path = need(shared_data, "freqtrade/XRP_ETH-5m.feather")
    proc = subprocess.run(
        [sys.executable, "-m", "adapters.data.cli", "check", str(path), "--json", "--gaps", "allow"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    assert data["files"][0]["rows"] == 706 and data["files"][0]["gaps"]["count"] == 6


def _data_cli(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, "-m", "bot.cli", "data", *args], capture_output=True, text=True, timeout=120, env=env
    )


def test_check_of_the_file_the_quickstart_trains_on_passes_with_its_known_problems_as_information() -> None:
    result = _data_cli("check", str(sample_path()))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "info      gap                        28  allow   (known" in result.stdout
    assert "info      zero_volume" in result.stdout and "warning" not in result.stdout
    assert result.stdout.rstrip().endswith("1 file(s) checked: 1 ok, 0 with errors")
    strict = _data_cli("check", str(sample_path()), "--gaps", "error")
    assert strict.returncode == 1 and "ERROR     gap" in strict.stdout
    usage = _data_cli("--help").stdout
    assert usage.startswith("usage: ai-trading data ") and "adapters.data.cli" not in usage.splitlines()[0]


def test_synthetic_writes_a_reproducible_market_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "markets" / "walk.parquet"
    assert main(["synthetic", "--market", "random-walk", "--bars", "600", "--seed", "4", "--out", str(out)]) == 0
    line = capsys.readouterr().out
    assert f"ai-trading train data.path={out}" in line and "600 1h candles of a random-walk market" in line
    frame = load_ohlcv(out, gaps="error")
    assert len(frame) == 600 and frame.index[0] == pd.Timestamp("2020-01-01", tz="UTC")
    # Same seed, same market: the file is a reproducible input.
    again = tmp_path / "again.parquet"
    assert main(["synthetic", "--market", "random-walk", "--bars", "600", "--seed", "4", "--out", str(again)]) == 0
    pd.testing.assert_frame_equal(load_ohlcv(again), frame)


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["--bars", "1"], 2, "synthetic market needs at least 2 bars, was 1"),
        (["--signal", "1.5"], 2, "synthetic signal must be in [0, 1), was 1.5"),
        (["--market", "trend"], 2, "invalid choice: 'trend'"),
    ],
)
def test_synthetic_refuses_a_bad_spec_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str], code: int, message: str
) -> None:
    out = tmp_path / "m.parquet"
    assert main(["synthetic", *args, "--out", str(out)]) == code
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not out.exists()
    assert main(["synthetic", "--out", str(tmp_path / "m.csv")]) == 2
    assert ".parquet or .feather" in capsys.readouterr().err
