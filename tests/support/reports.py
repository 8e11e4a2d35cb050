"""Figures a test run reports rather than asserts (a refusal rate, a size): kept during the run and printed in
pytest's terminal summary, whatever the order the tests ran in."""

from __future__ import annotations

import pytest

_REPORTS = pytest.StashKey[list[str]]()


def report(config: pytest.Config, *lines: str) -> None:
    """Keep `lines` for the end-of-run summary."""
    config.stash.setdefault(_REPORTS, []).extend(lines)


def print_reports(terminalreporter: pytest.TerminalReporter) -> None:
    """The `pytest_terminal_summary` half: one section with every line reported in this run, if any."""
    lines = terminalreporter.config.stash.get(_REPORTS, [])
    if lines:
        terminalreporter.section("reported figures")
        for line in lines:
            terminalreporter.write_line(line)
