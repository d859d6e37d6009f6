"""Everything done for one user, in the order that keeps them safe.

Decide every server on the snapshot, stop the due ones, confirm each stop (following
202s up), and only then, on the *pre-stop* snapshot, decide whether to delete the user:
the Hub stamps "now" as a user's activity when one of their servers stops, so a
re-read after the stops would make every user look freshly active. A pending server
is never sent a DELETE (on JupyterHub >= 5.1 that cancels its spawn).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import replace
from datetime import datetime

from ..events import (
    Culling,
    ServerJudged,
    UserDeleted,
    UserDeleteFailed,
    UserGone,
    UserJudged,
    UserSpared,
    Warned,
)
from ..hub import HubAPI, HubAPIError
from ..model import Server, User
from ..policy import NO_MARKS, Cause, Verdict, decide_server, decide_user
from ..rules import RuleSet, ServerRule
from ..schedule import USER
from .arbiter import Arbiter
from .context import Clock, PassContext
from .marks import MarksBook
from .probes import SecondOpinion
from .stopper import Stopper

# Told of every verdict, to wake at its deadline: (user, server or schedule.USER, verdict).
Schedule = Callable[[str, str, Verdict], None]


class UserFlow:
    def __init__(
        self,
        hub: HubAPI,
        rules: RuleSet,
        stopper: Stopper,
        clock: Clock,
        schedule: Schedule,
        *,
        dry_run: bool = False,
        probes: SecondOpinion | None = None,
        arbiter: Arbiter | None = None,
        marks: MarksBook | None = None,
    ) -> None:
        self.hub = hub
        self.rules = rules
        self.stopper = stopper
        self.clock = clock
        self.schedule = schedule
        self.dry_run = dry_run
        self.probes = probes
        self.arbiter = arbiter
        self.marks = marks

    async def handle(self, ctx: PassContext, user: User) -> bool:
        """Decide and act on one user; True when something was culled (or would be)."""
        now = self.clock()
        due: list[tuple[Server, Verdict]] = []
        for server in user.servers.values():
            v, hub_v, rule = await self._judge(ctx, user, server)
            ctx.emit(ServerJudged(now, user, server, v, hub_v, rule))
            if v.culls:
                due.append((server, v))
        stopped = await asyncio.gather(*(self._stop(ctx, user, s, v) for s, v in due))
        acted = bool(due)
        if self.rules.cull_users:
            not_stopped = (len(user.servers) - len(due)) + stopped.count(False)
            uv = decide_user(user, now, self.rules.for_user(user), servers_running=not_stopped)
            self.schedule(user.name, USER, uv)
            ctx.emit(UserJudged(now, user, uv))
            if uv.culls:
                deleted = await self._delete_user(ctx, user, uv, had_servers=bool(due))
                acted = deleted or acted
        return acted

    async def _judge(
        self, ctx: PassContext, user: User, server: Server
    ) -> tuple[Verdict, Verdict | None, ServerRule]:
        """The verdict, the Hub-view verdict when a probe of the server changed it, and the
        settings that applied."""
        now = self.clock()
        rule = self.rules.for_server(user, server)
        held = self.stopper.review(ctx, user, server, now)
        if held is not None:
            self.schedule(user.name, server.name, held)
            return replace(held, rule=rule.name), None, rule
        if self.probes is not None and server.ready:
            self.probes.check_address(ctx, server)
        judged = server if self.probes is None else self.probes.hub_view(user, server)
        says = (
            None if self.arbiter is None else await self.arbiter.ask(ctx, user, judged, rule, now)
        )
        marks = NO_MARKS if self.marks is None else self.marks.marks(user.name, server)
        v = decide_server(user, judged, now, rule, says, marks)
        if v.warn_at is not None and v.warn_at <= now and self.marks is not None:
            v = self._warn(ctx, user, server, v, now)
        hub_v = None
        if self.probes is not None and v.culls and v.cause in (Cause.IDLE, Cause.ARBITER):
            second = await self.probes.judge(ctx, user, judged, rule, v)
            v, hub_v = second, (None if second is v else v)
        self.schedule(user.name, server.name, v)
        return v, hub_v, rule

    def _warn(
        self, ctx: PassContext, user: User, server: Server, v: Verdict, now: datetime
    ) -> Verdict:
        """Warn of the cull at v.due_at (no sooner than min_warning from now), once per
        idle spell; a dry run decides, and warns nobody."""
        if self.dry_run or v.due_at is None:
            return v
        assert self.marks is not None
        self.marks.warned(user.name, server.name, v.due_at, now)
        ctx.emit(Warned(now, user, server, v, v.due_at))
        return replace(v, warn_at=None)

    async def _stop(self, ctx: PassContext, user: User, server: Server, v: Verdict) -> bool:
        if self.dry_run:
            ctx.emit(Culling(self.clock(), user, server, v, dry_run=True))
            return True
        return await self.stopper.stop(ctx, user, server, v)

    async def _delete_user(
        self, ctx: PassContext, user: User, v: Verdict, had_servers: bool
    ) -> bool:
        if self.dry_run:
            ctx.emit(Culling(self.clock(), user, None, v, dry_run=True))
            return True
        if had_servers:
            # Every server was confirmed stopped, but only a fresh look proves that
            # nothing else started meanwhile: the Hub's DELETE /users stops only the
            # default server and fails halfway with a named one still active.
            raw = await self.hub.get_user(user.name)
            if raw is None:
                ctx.emit(UserGone(self.clock(), user.name))
                return True
            fresh = ctx.parse(raw, f"before deleting user {user.name}")
            if fresh is None:
                return False
            if fresh.servers:
                ctx.emit(
                    UserSpared(
                        self.clock(), user.name, f"{len(fresh.servers)} server(s) active again"
                    )
                )
                return False
        ctx.emit(Culling(self.clock(), user, None, v, dry_run=False))
        try:
            deleted = await self.hub.delete_user(user.name)
        except HubAPIError as e:
            ctx.emit(UserDeleteFailed(self.clock(), user.name, str(e)))
            return False
        ctx.emit(
            UserDeleted(self.clock(), user, v) if deleted else UserGone(self.clock(), user.name)
        )
        return True
