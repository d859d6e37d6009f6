"""Shared fixtures: the package is tested from the source tree's virtualenv.

Also the order in which test modules run. ``make test`` runs two pytest-xdist workers that
take modules (and classes) in collection order (``--no-loadscope-reorder``: by default
xdist puts the modules with the most tests first, i.e. the quick unit tests, which left
the long integration modules for the end), one at a time. A long module taken last
runs alone while the other worker idles, so the longest go first (longest processing
time first); the quick unit tests come last and fill the gaps. The order inside a module
is never changed, and no test depends on another module's.
"""

from __future__ import annotations

import pytest

# Longest first, by what each took on a loaded 2-core machine (pytest --durations).
LONGEST_FIRST = (
    "tests/integration/test_reliability.py",
    "tests/integration/test_warnings.py",
    "tests/integration/test_benchmarks_smoke.py::TestCompleteness",
    "tests/integration/test_docs.py",
    "tests/integration/test_kernels.py",
    "tests/integration/test_benchmarks_smoke.py::TestSlowSpawners",
    "tests/integration/test_deadlines.py",
    "tests/integration/test_stop_limit.py",
    "tests/integration/test_benchmarks_smoke.py::TestScanCost",
    "tests/integration/test_benchmarks_smoke.py::TestMassCull",
    "tests/integration/test_web.py",
    "tests/integration/test_pass.py",
)


def _rank(nodeid: str) -> int:
    for i, prefix in enumerate(LONGEST_FIRST):
        if nodeid.startswith(prefix):
            return i
    if nodeid.startswith("tests/integration/"):
        return len(LONGEST_FIRST)
    return len(LONGEST_FIRST) + 1


def pytest_collection_modifyitems(
    session: pytest.Session, config: pytest.Config, items: list[pytest.Item]
) -> None:
    # A stable sort: collection order within each rank (and each module) is kept.
    items.sort(key=lambda item: _rank(item.nodeid))
