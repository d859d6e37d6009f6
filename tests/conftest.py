"""Shared hooks: the package is tested from the source tree's virtualenv.

The token scan's report lives here because this conftest is the one that a
pytest-xdist controller loads (see testkit/tokenscan.py).
"""

from __future__ import annotations

import pytest

from testkit import tokenscan


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node: object, error: object) -> None:
    """An xdist worker is done: keep its token scan for the run's report."""
    scan = getattr(node, "workeroutput", {}).get("token_scan")
    config = getattr(node, "config", None)
    if scan and config is not None:
        tokenscan.add(config, scan)


@pytest.hookimpl(trylast=True)
def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if getattr(session.config, "workeroutput", None) is None:  # not an xdist worker
        tokenscan.report(session)
