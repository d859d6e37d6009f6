"""The whole-run token scan's tally, shared by the conftest that scans and the one that reports.

tests/integration/conftest.py scans everything hubcull printed in a session for the test
Hubs' tokens. Under pytest-xdist that happens in each worker, but only the controller
can report the run and fail it, and the controller never loads tests/integration's
conftest (it collects nothing). So the scans are handed over in ``workeroutput`` and
added up by the hooks in tests/conftest.py, which every process loads.
"""

from __future__ import annotations

import pytest

SCANS: pytest.StashKey[list[dict[str, int]]] = pytest.StashKey()


def add(config: pytest.Config, scan: dict[str, int]) -> None:
    config.stash.setdefault(SCANS, []).append(scan)


def report(session: pytest.Session) -> None:
    """Say what the run's scans found, and fail the run on a leak."""
    scans = session.config.stash.get(SCANS, [])
    if not scans:
        return
    total = {key: sum(s.get(key, 0) for s in scans) for key in ("lines", "tokens", "leaked")}
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    if reporter is not None and total["lines"]:
        reporter.write_line(
            f"token scan: {total['lines']} lines of hubcull output (DEBUG) checked against "
            f"{total['tokens']} tokens: {'LEAKED' if total['leaked'] else 'none found'}"
        )
    if total["leaked"]:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
