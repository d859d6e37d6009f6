"""The engine: passes, deadline checks and stops, built from parts with one job each.

=============  ==========================================================
``context``    one pass (or deadline check): its counts and what it saw
``claims``     which user is being handled right now, by whom
``flow``       everything done for one user, in the safe order
``stopper``    send stops, follow 202s, confirm, resend lost ones
``probes``     --check-kernels: ask the server, see through our probes
``arbiter``    the operator's cull_arbiter_hook
``passes``     a full pass: the backward walk and its workers
``deadlines``  between passes: re-read and cull each server at its deadline
``runner``     the long-running schedule of both
=============  ==========================================================

The engine decides nothing itself (policy.py does) and speaks to no observer: it emits
events (events.py), and whoever built it decided who listens.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from datetime import datetime, timezone

from ..activity import Prober
from ..events import DeadlineMode, Emit, PassReport, PassTrigger
from ..hub import HubAPI
from ..policy import ProbeRules
from ..rules import RuleSet
from .arbiter import Arbiter, Hook
from .claims import UserClaims
from .context import Clock
from .cost import ListingCost
from .deadlines import DeadlineChecker
from .flow import UserFlow
from .marks import MarksBook
from .passes import Passes
from .probes import SecondOpinion
from .runner import run_scheduled
from .stopper import Stopper


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


@dataclass(frozen=True, slots=True)
class EngineOptions:
    """How the engine runs (what to cull is the rules' business: rules.RuleSet)."""

    dry_run: bool = False  # decide everything, stop nothing
    page_size: int = 0  # users per page; 0: the Hub's default (200 under a read budget)
    workers: int = 10  # users handled at once in a pass
    stop_wait: float = 60.0  # how long to follow up a stop answered 202
    poll_interval: float = 1.0  # between looks while following a stop up
    verify_stops: bool = False  # --once: confirm every stop before the pass ends
    max_stop_attempts: int = 3  # stops lost this often are left to an operator
    deadline_checks: DeadlineMode = DeadlineMode.ALWAYS


class Engine:
    """Runs passes, and deadline checks between them, against one Hub with one set of rules."""

    def __init__(
        self,
        hub: HubAPI,
        rules: RuleSet,
        emit: Emit,
        options: EngineOptions = EngineOptions(),
        *,
        arbiter: Hook | None = None,
        prober: Prober | None = None,
        probe_rules: ProbeRules | None = None,
        marks: MarksBook | None = None,
        clock: Clock = utcnow,
    ) -> None:
        self.clock = clock
        self.emit = emit
        # Set on SIGTERM: no new page, no new user; what is under way finishes.
        self.stopping = asyncio.Event()
        claims = UserClaims()
        cost = ListingCost()
        self.stopper = Stopper(
            hub,
            clock,
            self.stopping,
            stop_wait=options.stop_wait,
            poll_interval=options.poll_interval,
            max_attempts=options.max_stop_attempts,
        )
        probes = (
            None if prober is None else SecondOpinion(prober, probe_rules or ProbeRules(), clock)
        )
        self.deadlines = DeadlineChecker(
            options.deadline_checks,
            hub,
            claims,
            cost,
            emit,
            clock,
            self.stopping,
            dry_run=options.dry_run,
        )
        self.flow = UserFlow(
            hub,
            rules,
            self.stopper,
            clock,
            self.deadlines.note,
            dry_run=options.dry_run,
            probes=probes,
            arbiter=None if arbiter is None else Arbiter(arbiter),
            marks=marks,
        )
        self.passes = Passes(
            hub,
            self.flow,
            claims,
            self.stopper,
            self.deadlines,
            cost,
            emit,
            clock,
            self.stopping,
            probes=probes,
            marks=marks,
            page_size=options.page_size,
            workers=options.workers,
            cull_users=rules.cull_users,
            verify_stops=options.verify_stops,
            dry_run=options.dry_run,
        )

    async def run_pass(self, trigger: PassTrigger = PassTrigger.ONCE) -> PassReport:
        """One full pass (--once, --dry-run): never beside another."""
        return await self.passes.run(trigger)

    def reconsider(self, user: str, server: str) -> None:
        """Look at this server again now (its keep changed): a deadline check re-reads it."""
        self.deadlines.push((user, server), self.clock())

    async def run_forever(self, every: float) -> None:
        """Full passes every ``every`` seconds, deadline checks between, until ``stopping``."""
        await run_scheduled(
            self.passes, self.deadlines, self.flow, every, self.emit, self.clock, self.stopping
        )


__all__ = ["Engine", "EngineOptions", "utcnow"]
