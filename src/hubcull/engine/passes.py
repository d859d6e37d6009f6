"""A full pass: walk every list backward, page by page, and hand each user to the flow.

The walk (paging.py) keeps the listing complete while servers stop under it; users
stream from the pages through a bounded queue to a few workers, so memory stays
bounded by a page whatever the number of users. At the end of a complete pass, the
parts that remember servers across passes forget those it no longer listed.

One pass at a time: only the runner starts passes (a deadline check that wants a
listing asks the runner), and :meth:`Passes.run` refuses to be entered twice.
"""

from __future__ import annotations

import asyncio
from datetime import datetime
from functools import partial
from typing import Any

from ..events import (
    DeadlineMode,
    Emit,
    ListShifting,
    PassAborted,
    PassFinished,
    PassReport,
    PassStarted,
    PassTrigger,
    UserFailed,
)
from ..hub import HubAPI, HubError
from ..model import Server, User
from ..paging import BackwardWalk, WalkError
from .claims import UserClaims
from .context import Clock, PassContext
from .cost import ListingCost
from .deadlines import DeadlineChecker
from .flow import UserFlow
from .marks import MarksBook
from .probes import SecondOpinion
from .stopper import Stopper

# Page size asked for when --api-page-size is 0: JupyterHub's api_page_default_limit.
HUB_DEFAULT_PAGE = 50
# Pages asked for under a read budget (the Hub caps them at its api_page_max_limit).
BUDGET_PAGE = 200


def record_names(items: list[Any]) -> list[str | None]:
    """The user names of a page, None where a record has no readable name."""
    return [
        it.get("name") if isinstance(it, dict) and isinstance(it.get("name"), str) else None
        for it in items
    ]


class Passes:
    def __init__(
        self,
        hub: HubAPI,
        flow: UserFlow,
        claims: UserClaims,
        stopper: Stopper,
        deadlines: DeadlineChecker,
        cost: ListingCost,
        emit: Emit,
        clock: Clock,
        stopping: asyncio.Event,
        *,
        probes: SecondOpinion | None = None,
        marks: MarksBook | None = None,
        page_size: int = 0,
        workers: int = 10,
        cull_users: bool = False,
        verify_stops: bool = False,
        dry_run: bool = False,
    ) -> None:
        self.hub = hub
        self.flow = flow
        self.claims = claims
        self.stopper = stopper
        self.deadlines = deadlines
        self.cost = cost
        self.emit = emit
        self.clock = clock
        self.stopping = stopping
        self.probes = probes
        self.marks = marks
        self.workers = max(1, workers)
        self.cull_users = cull_users
        # With --once there is no next pass to notice a lost stop: check before exiting.
        self.verify_stops = verify_stops
        self.dry_run = dry_run
        # Unset, the Hub's own default page. Larger pages mean fewer requests, but the
        # Hub builds each page in one go on its only event loop, holding every other
        # request meanwhile. Under a read budget, the requests saved pay for deadline checks.
        default = BUDGET_PAGE if deadlines.mode is DeadlineMode.BUDGET else HUB_DEFAULT_PAGE
        self.page_size = page_size or default
        # The page of the culler a read budget is measured against: the same page size
        # the operator set, or the Hub's default.
        self.reference_page = page_size or HUB_DEFAULT_PAGE
        self.list_hints: dict[str, int] = {}  # each list's length at the last pass
        self.last_started: datetime | None = None
        self.idle = asyncio.Event()  # set while no pass runs
        self.idle.set()

    @property
    def running(self) -> bool:
        return not self.idle.is_set()

    @property
    def states(self) -> tuple[str, ...]:
        # Users without any active server first: nothing we do in this part adds
        # anyone to that list while we walk it.
        return ("inactive", "active") if self.cull_users else ("active",)

    async def run(self, trigger: PassTrigger) -> PassReport:
        if self.running:
            raise RuntimeError("a pass is already running")
        self.idle.clear()
        ctx = PassContext(self.emit, self.clock, trigger, self.dry_run, self.hub.stats.total)
        self.last_started = ctx.started
        self.deadlines.pass_started(ctx.started)
        ctx.emit(PassStarted(ctx.started, trigger, self.dry_run))
        reads_before = self.hub.stats.reads
        try:
            for state in self.states:
                await self._walk(ctx, state)
            ctx.complete = not self.stopping.is_set()
            if ctx.complete:
                # What a full listing costs: the yardstick for reading users one by one.
                self.cost.reads = self.hub.stats.reads - reads_before
                for part in (self.stopper, self.deadlines, self.probes, self.marks):
                    if part is not None:
                        part.retain(ctx.seen, ctx.started)
            if self.verify_stops and not self.dry_run:
                cheaper = self.cost.cheaper_than(len(self.stopper.ledger.records()))
                await self.stopper.verify(ctx, partial(self._sweep, ctx) if cheaper else None)
        except (HubError, WalkError) as e:
            ctx.emit(PassAborted(self.clock(), str(e)))
        finally:
            self.idle.set()
            self.deadlines.settle(
                ctx.started,
                self.hub.stats.reads - reads_before,
                ctx.complete,
                [self.list_hints.get(state, 0) for state in self.states],
                self.reference_page,
            )
        report = ctx.report(self.hub.stats.total)
        self.emit(PassFinished(self.clock(), report))
        return report

    def _new_walk(self, state: str) -> BackwardWalk:
        return BackwardWalk(
            self.page_size, start_hint=self.list_hints.get(state, 0), max_climbs=100
        )

    async def _walk(self, ctx: PassContext, state: str) -> None:
        walk = self._new_walk(state)
        queue: asyncio.Queue[User] = asyncio.Queue(maxsize=walk.page_size)
        workers = [asyncio.create_task(self._serve(ctx, queue, walk)) for _ in range(self.workers)]
        try:
            while (req := walk.next_request()) is not None and not self.stopping.is_set():
                page = await self.hub.list_users_page(state, req.offset, req.limit)
                names = record_names(page.items)
                for i in walk.feed(req, page.limit, page.total, names):
                    if self.stopping.is_set():
                        break
                    user = ctx.parse(page.items[i], "listing users")
                    if user is not None:
                        ctx.read(user)
                        await queue.put(user)
            await self._drain(queue)
        finally:
            # Whatever is still queued (the walk failed, or we are stopping) is dropped:
            # the next pass or deadline will see it.
            _drop_queued(queue)
            for w in workers:
                w.cancel()
            await asyncio.gather(*workers, return_exceptions=True)
        if walk.total_seen is not None:
            self.list_hints[state] = walk.total_seen
        if walk.unconfirmed:
            self.emit(ListShifting(self.clock(), state, walk.unconfirmed))

    async def _drain(self, queue: asyncio.Queue[User]) -> None:
        """Wait for the queue; on shutdown, drop the users nobody has started on."""
        join = asyncio.ensure_future(queue.join())
        stop = asyncio.ensure_future(self.stopping.wait())
        try:
            await asyncio.wait({join, stop}, return_when=asyncio.FIRST_COMPLETED)
            if not join.done():
                _drop_queued(queue)
                await join
        finally:
            stop.cancel()
            join.cancel()

    async def _serve(
        self, ctx: PassContext, queue: asyncio.Queue[User], walk: BackwardWalk
    ) -> None:
        while True:
            user = await queue.get()
            try:
                if self.stopping.is_set():
                    continue  # shutting down: start no new user
                async with self.claims.claim(user.name) as mine:
                    if not mine:
                        continue  # a deadline check is handling this user right now
                    culled = await self.flow.handle(ctx, user)
                if self.dry_run or not culled:
                    walk.kept(user.name)  # still listed: a landmark for the pages below
            except HubError as e:
                ctx.emit(UserFailed(self.clock(), user.name, str(e)))
            except Exception as e:  # a bug must not stop the pass, nor hide
                ctx.emit(UserFailed(self.clock(), user.name, f"{type(e).__name__}: {e}", e))
            finally:
                queue.task_done()

    async def _sweep(
        self, ctx: PassContext, wanted: set[str]
    ) -> dict[str, dict[str, Server]] | None:
        """One listing of the active users, for the stops of ``--once``: each wanted user's
        servers (none: not listed), unreadable ones left out; None when the listing
        cannot prove absence (a list that shifted too fast, a record without a name)."""
        listed: dict[str, dict[str, Server]] = {}
        unreadable: set[str] = set()
        walk = self._new_walk("active")
        try:
            while (req := walk.next_request()) is not None:
                if self.stopping.is_set():
                    return None
                page = await self.hub.list_users_page("active", req.offset, req.limit)
                names = record_names(page.items)
                for i in walk.feed(req, page.limit, page.total, names):
                    name = names[i]
                    if name is None:
                        return None
                    walk.kept(name)
                    if name in wanted:
                        user = ctx.parse(page.items[i], "confirming stops by listing")
                        if user is None:
                            unreadable.add(name)
                        else:
                            listed[name] = dict(user.servers)
        except (HubError, WalkError):
            return None
        if walk.unconfirmed:
            return None
        return {name: listed.get(name, {}) for name in wanted - unreadable}


def _drop_queued(queue: asyncio.Queue[User]) -> None:
    while not queue.empty():
        queue.get_nowait()
        queue.task_done()
