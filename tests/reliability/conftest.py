"""The reliability suite's summary table: scenario, runs, failures, printed at the end of the session."""

from __future__ import annotations

import pytest

from tests.reliability.report import RESULTS, record, table

SELF_RECORDING = ("test_random_kills.py", "test_storage_faults.py")
"""Modules that record their own scenarios (several per test, or with their own names)."""


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    """Count every other reliability test as one scenario run: a failure in setup or the call is a failure."""
    path, _, name = report.nodeid.partition("::")
    if not path.startswith("tests/reliability/") or path.endswith(SELF_RECORDING):
        return
    if (report.when == "call") or (report.when == "setup" and report.failed):
        module = path.rsplit("/", 1)[-1].removeprefix("test_").removesuffix(".py").replace("_", " ")
        record(f"{module}: {name.removeprefix('test_').replace('_', ' ')}", failed=report.failed)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """Print the table after the test results (CI's log shows it)."""
    if RESULTS:
        terminalreporter.section("reliability summary")
        terminalreporter.write_line(table())
