"""monitoring.progress: a tqdm bar with rate and ETA on a terminal, a handful of log lines elsewhere."""

from __future__ import annotations

import io

import pytest
from structlog.testing import capture_logs

from monitoring.progress import Progress


def test_off_a_terminal_it_logs_each_quarter_and_the_end_never_each_item() -> None:
    with capture_logs() as logs, Progress(1000, desc="backtest", unit="candle", stream=io.StringIO()) as progress:
        for _ in range(1000):
            progress.update()
    events = [e for e in logs if e["event"].startswith("progress")]
    assert [e["done"] for e in events] == [250, 500, 750, 1000]
    assert events[-1]["event"] == "progress_done" and events[-1]["total"] == 1000
    assert all(e["task"] == "backtest" and e["unit"] == "candle" and e["per_s"] > 0 for e in events)
    assert events[0]["eta_s"] is not None and events[0]["eta_s"] >= 0


def test_on_a_terminal_it_draws_a_bar_with_rate_and_eta() -> None:
    stream = io.StringIO()
    with capture_logs() as logs, Progress(40, desc="download", unit="bar", bar=True, stream=stream) as progress:
        for _ in range(40):
            progress.update()
    text = stream.getvalue()
    assert "download: 100%" in text and "/40" in text and "bar/s" in text and "<00:00" in text  # elapsed<ETA
    assert not [e for e in logs if e["event"].startswith("progress")]


def test_failed_work_logs_no_done_line() -> None:
    with capture_logs() as logs, pytest.raises(RuntimeError), Progress(10, desc="sweep", stream=io.StringIO()) as p:
        p.update(3)
        raise RuntimeError("trial failed")
    assert [e["event"] for e in logs if e["event"].startswith("progress")] == ["progress"]
