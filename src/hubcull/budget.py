"""How many Hub reads deadline checks may spend (``--deadline-checks=budget``).

A deadline check re-reads the user before stopping (activity may have moved since the
last pass): one small request per server that becomes due between passes. A culler
that only lists every ``cull_every`` (jupyterhub-idle-culler) pays nothing for that,
and stops the server up to ``cull_every`` late. Some operators want a hard promise
instead: *never more Hub requests than that culler at the same settings*.

This module keeps that promise. The reference is what such a culler reads per
interval: one request for the Hub's version and one page per ``page`` users of each
list it walks (the page the operator set, or the Hub's default of 50). Reads accrue
at that rate, up to one interval's worth; every read hubcull makes (passes, deadline
checks, retries) is paid from it, and a deadline check only goes ahead when it can
be paid. hubcull's own pass costs less than the reference when its pages are larger
(it asks for 200 in this mode); the difference is what buys deadline checks. When
many servers become due at once, one listing checks them all; when even that cannot
be paid, they wait, at worst until the next full pass, which is the reference
culler's precision.

Pure: callers pass the time (seconds, any monotonic origin).
"""

from __future__ import annotations

import math
from collections.abc import Iterable

# What jupyterhub-idle-culler asks besides its pages, every pass: GET /hub/api/ (version).
REFERENCE_EXTRA_PER_PASS = 1


def reference_pass_cost(list_totals: Iterable[int], page: int) -> int:
    """Requests of one pass of a culler that lists ``list_totals`` users (one total per
    list walked: active, and inactive with --cull-users) in pages of ``page``."""
    if page < 1:
        raise ValueError("page must be at least 1")
    return REFERENCE_EXTRA_PER_PASS + sum(max(1, math.ceil(t / page)) for t in list_totals)


class ReadBudget:
    """Reads accrue at ``allowance`` per ``window`` seconds, banked up to one window's worth.

    Full passes always run and are always charged (the balance may go below zero);
    optional reads (deadline checks) are made only when :meth:`affordable` says so.
    Over any stretch of time, reads made <= reads accrued + one pass.
    """

    def __init__(self, window: float, allowance: float = 0.0):
        if window <= 0:
            raise ValueError("window must be positive")
        self.window = window
        self.allowance = max(0.0, allowance)
        self.balance = 0.0
        self._at: float | None = None

    def _accrue(self, now: float) -> None:
        if self._at is not None and now > self._at:
            earned = (now - self._at) * self.allowance / self.window
            self.balance = min(self.allowance, self.balance + earned)
        if self._at is None or now > self._at:
            self._at = now

    def set_allowance(self, allowance: float, now: float) -> None:
        """A new reference cost per window (the Hub grew or shrank); from now on."""
        self._accrue(now)
        self.allowance = max(0.0, allowance)
        self.balance = min(self.balance, self.allowance)

    def charge(self, reads: int, now: float) -> None:
        self._accrue(now)
        self.balance -= reads

    def affordable(self, now: float) -> int:
        """How many reads can be made now."""
        self._accrue(now)
        return max(0, math.floor(self.balance + 1e-9))

    def seconds_until(self, reads: int, now: float) -> float | None:
        """When ``reads`` can be paid; None if never (they exceed what the bank holds)."""
        self._accrue(now)
        missing = reads - self.balance
        if missing <= 1e-9:
            return 0.0
        if reads > self.allowance or self.allowance <= 0:
            return None
        return missing * self.window / self.allowance
