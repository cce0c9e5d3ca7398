"""The reliability suite's summary table: scenario, runs, failures, printed at the end of the session."""

from __future__ import annotations

import pytest

from tests.reliability.report import RESULTS, table


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """Print the table after the test results (CI's log shows it)."""
    if RESULTS:
        terminalreporter.section("reliability summary")
        terminalreporter.write_line(table())
