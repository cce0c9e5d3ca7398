"""The command-line plumbing the training tools share: exit codes, parse → configure logging → run → report errors."""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence

from monitoring.logging import configure_logging, report_error

EXIT_OK, EXIT_ERROR, EXIT_USAGE = 0, 1, 2


def print_error(prog: str, error: BaseException | str) -> None:
    """Report an expected failure once: `<prog>: <message>` on a terminal, one JSON error line when piped."""
    report_error(prog, error)


def run_tool(
    parser: argparse.ArgumentParser,
    argv: Sequence[str] | None,
    run: Callable[[argparse.Namespace], int],
    errors: tuple[type[Exception], ...],
) -> int:
    """Parse `argv`, configure logging from `--log-level` and return `run(args)`'s exit code.

    A usage error (or `--help`) returns argparse's exit code instead of raising SystemExit; one of `errors`
    is printed as `<prog>: <message>` and exits EXIT_ERROR.
    """
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:
        return int(e.code) if isinstance(e.code, int) else EXIT_USAGE
    configure_logging(args.log_level)
    try:
        return run(args)
    except errors as e:
        print_error(parser.prog, e)
        return EXIT_ERROR
