"""Between passes: wake at each server's deadline, re-read that user, cull what is still due.

The incumbent looks every ``cull_every`` seconds, so an idle server runs on for up to
that long past its deadline. A full pass already knows every kept server's deadline;
this checker keeps those that fall before the pass after next (``horizon``), wakes at
each, re-reads just that user (activity may have moved) and hands them to the same
flow as a pass. When many come due at once, one full listing is cheaper than their
reads: it asks the runner for a pass instead of running one itself, so two passes
never overlap.

With ``--deadline-checks=budget`` every read is paid from a :class:`ReadBudget`:
a check waits until it can be paid, at the latest until the next pass.
"""

from __future__ import annotations

import asyncio
import enum
from datetime import datetime, timedelta

from ..budget import ReadBudget, reference_pass_cost
from ..events import (
    BudgetSettled,
    DeadlineCheckFinished,
    DeadlineMode,
    DeadlinesBatched,
    DeadlinesDeferred,
    Emit,
    UserFailed,
    UserGone,
)
from ..hub import HubAPI, HubError
from ..policy import Verdict
from ..schedule import DeadlineQueue
from .claims import UserClaims
from .context import Clock, Key, PassContext
from .cost import ListingCost
from .flow import UserFlow

# A user the pass is handling when their deadline comes is looked at again this soon.
CLAIMED_RETRY = 1.0


class Checked(enum.Enum):
    """What a deadline check came to."""

    NOTHING = "nothing"  # nothing due (or nothing the budget can pay for yet)
    DONE = "done"  # the due users were re-read and handled
    NEED_PASS = "need-pass"  # one listing reads them for less: run a pass
    AFTER_PASS = "after-pass"  # a listing is cheaper, and a pass is running: look after it


class DeadlineChecker:
    def __init__(
        self,
        mode: DeadlineMode,
        hub: HubAPI,
        claims: UserClaims,
        cost: ListingCost,
        emit: Emit,
        clock: Clock,
        stopping: asyncio.Event,
        *,
        dry_run: bool = False,
    ) -> None:
        self.mode = mode
        self.hub = hub
        self.claims = claims
        self.cost = cost
        self.emit = emit
        self.clock = clock
        self.stopping = stopping
        self.dry_run = dry_run
        self.queue = DeadlineQueue()
        self.every: float | None = None  # the runner's interval between full passes
        self.horizon: datetime | None = None  # deadlines later than this are left to a pass
        self.budget: ReadBudget | None = None
        self._not_before: datetime | None = None  # budget: no check before this
        self.changed = asyncio.Event()  # a deadline earlier than all others was noted

    def run_every(self, every: float) -> None:
        """Full passes every ``every`` seconds: deadlines are checked between them."""
        self.every = every
        if self.mode is DeadlineMode.BUDGET:
            self.budget = ReadBudget(window=every)

    def pass_started(self, started: datetime) -> None:
        if self.every is not None and self.mode is not DeadlineMode.OFF:
            # Deadlines up to one and a half intervals ahead: past the next pass's end.
            self.horizon = started + timedelta(seconds=1.5 * self.every)

    def note(self, user: str, server: str, v: Verdict) -> None:
        """A server was judged: wake at its deadline if that falls before the horizon."""
        key = (user, server)
        wake = v.wake_at  # a warning due, or the cull
        if v.culls or wake is None or self.horizon is None or wake > self.horizon:
            self.queue.discard(key)
            return
        self.push(key, wake)

    def push(self, key: Key, at: datetime) -> None:
        """Check this server (or user) at ``at``."""
        first = self.queue.next_due()
        self.queue.push(key, at, self.clock())
        if first is None or at < first:
            self.changed.set()

    def next_wake(self) -> datetime | None:
        """When the runner should next call :meth:`check`."""
        nxt = self.queue.next_due()
        if nxt is not None and self._not_before is not None:
            return max(nxt, self._not_before)
        return nxt

    def retain(self, listed: set[Key], since: datetime) -> None:
        self.queue.retain(listed, since)

    async def check(self, flow: UserFlow, pass_running: bool = False) -> Checked:
        """Re-read the users whose servers' deadlines have come, and cull what is still due.

        One small request per user, then the same flow as a pass. When one full listing
        would read them for less, the caller runs a pass instead (NEED_PASS); if a pass
        is running already, it may read them too late (it started before their
        deadline): the caller looks again once it is over (AFTER_PASS), when what it
        left due is due still. Under a read budget, only what can be paid now is
        checked; the rest waits.
        """
        now = self.clock()
        self._not_before = None
        due = self.queue.due(now)
        users = list(dict.fromkeys(user for user, _ in due))
        if not users:
            return Checked.NOTHING
        listing = self.cost.cheaper_than(len(users))
        if listing and pass_running:
            return Checked.AFTER_PASS
        if self.budget is not None:
            users, listing = self._affordable(users, listing, now)
            if not users:
                return Checked.NOTHING
        checked = set(users)
        for key in due:
            if key[0] in checked:
                self.queue.discard(key)
        if listing:
            self.emit(DeadlinesBatched(now, len(users)))
            return Checked.NEED_PASS
        ctx = PassContext(self.emit, self.clock, None, self.dry_run, self.hub.stats.total)
        reads_before = self.hub.stats.reads
        handled = await asyncio.gather(*(self._one(ctx, flow, name) for name in users))
        ctx.complete = True
        # Users someone else was handling: their deadlines are looked at again shortly.
        later = now + timedelta(seconds=CLAIMED_RETRY)
        for name, done in zip(users, handled, strict=True):
            if not done:
                for key in due:
                    if key[0] == name:
                        self.queue.push(key, later, now)
        if self.budget is not None:
            self.budget.charge(self.hub.stats.reads - reads_before, now.timestamp())
        if any(handled):
            report = ctx.report(self.hub.stats.total)
            self.emit(DeadlineCheckFinished(self.clock(), sum(handled), report))
        return Checked.DONE

    async def _one(self, ctx: PassContext, flow: UserFlow, name: str) -> bool:
        """Handle one due user; False when someone else holds them."""
        if self.stopping.is_set():
            return True  # shutting down: the next start looks again
        async with self.claims.claim(name) as mine:
            if not mine:
                return False  # a full pass is handling this user right now
            try:
                raw = await self.hub.get_user(name)
                if raw is None:
                    ctx.emit(UserGone(self.clock(), name))
                    return True
                user = ctx.parse(raw, "checking a deadline")
                if user is not None:
                    ctx.read(user)
                    await flow.handle(ctx, user)
            except HubError as e:
                ctx.emit(UserFailed(self.clock(), name, str(e)))
            return True

    def _affordable(self, users: list[str], listing: bool, now: datetime) -> tuple[list[str], bool]:
        """Under the read budget: the due users to check now (earliest first), and
        whether by one listing; the others stay due, and the runner wakes when the
        budget allows (at the latest, the next full pass handles them)."""
        assert self.budget is not None
        t = now.timestamp()
        can = self.budget.affordable(t)
        cost = self.cost.reads
        # A listing that costs more than the budget can ever bank is out of reach.
        listing = listing and self.budget.seconds_until(cost, t) is not None
        if listing and can >= cost:
            return users, True
        if not listing and can >= 1:
            return users[:can], False
        wait = self.budget.seconds_until(cost if listing else 1, t)
        if wait is None:
            # Not even one read can be paid (the reference culler's pass is no dearer
            # than ours): the next full pass decides, as it would without deadline checks.
            for key in self.queue.due(now):
                self.queue.discard(key)
            return [], False
        self._not_before = now + timedelta(seconds=max(wait, 0.05))
        self.emit(DeadlinesDeferred(now, len(users), wait))
        return [], False

    def settle(
        self, started: datetime, reads: int, complete: bool, totals: list[int], page: int
    ) -> None:
        """Pay for a pass's reads; after a whole one, re-price the reference culler."""
        if self.budget is None:
            return
        now = started.timestamp()
        self.budget.charge(reads, now)
        if complete:
            ref = reference_pass_cost(totals, page)
            self.budget.set_allowance(ref, now)
            self.emit(
                BudgetSettled(
                    self.clock(), ref, self.budget.window, reads, self.budget.affordable(now)
                )
            )
