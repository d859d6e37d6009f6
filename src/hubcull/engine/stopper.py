"""Stopping servers, and making sure they stopped: send, follow 202s up, confirm, resend.

The Hub's answer to a stop proves little (see stops.py): 202 means "still stopping",
and 204 can hide a lost stop. The stopper owns the ledger of stops awaiting
confirmation, judges every later sighting of a stopped server against it, sends a lost
stop again (up to ``max_attempts``), and says when an operator must look.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from datetime import datetime

from ..events import (
    Culling,
    StopAnswered,
    StopConfirmed,
    StopFailed,
    StopLost,
    StopStuck,
    StopUnconfirmed,
)
from ..hub import HubAPI, HubAPIError
from ..model import Server, StopOutcome, User
from ..policy import Action, Cause, Verdict
from ..stops import Sighting, StopLedger, StopRecord
from .context import Clock, Key, PassContext

# Reads the active list once. Returns the servers of each wanted user it could settle
# (none listed: an empty dict; an unreadable record: left out), or None when the listing
# cannot prove absence (it did not see everyone).
Sweep = Callable[[set[str]], Awaitable[dict[str, dict[str, Server]] | None]]


class Stopper:
    def __init__(
        self,
        hub: HubAPI,
        clock: Clock,
        stopping: asyncio.Event,
        *,
        stop_wait: float = 60.0,
        poll_interval: float = 1.0,
        max_attempts: int = 3,
    ) -> None:
        self.hub = hub
        self.clock = clock
        self.stopping = stopping
        self.stop_wait = stop_wait
        self.poll_interval = poll_interval
        self.ledger = StopLedger(max_attempts=max_attempts, stuck_after=max(stop_wait, 60))

    async def stop(self, ctx: PassContext, user: User, server: Server, v: Verdict) -> bool:
        """Stop one server; True once it is stopped as far as the Hub says (or gone)."""
        ctx.emit(Culling(self.clock(), user, server, v, dry_run=False))
        outcome = await self._send(ctx, user.name, server.name, v.action is Action.REMOVE, v)
        if outcome is None:
            return False
        if outcome is StopOutcome.GONE:
            self.ledger.forget(user.name, server.name)
            return True
        if outcome is StopOutcome.STOPPED:
            return True
        # 202: the Hub's slow_stop_timeout passed; follow it up ourselves.
        if await self.confirm(ctx, user.name, server.name):
            return True
        ctx.emit(StopUnconfirmed(self.clock(), user.name, server.name, self.stop_wait, False))
        return False

    async def _send(
        self, ctx: PassContext, user: str, server: str, remove: bool, v: Verdict | None = None
    ) -> StopOutcome | None:
        rec = self.ledger.get(user, server)
        attempt = 1 if rec is None else rec.attempts + 1
        try:
            outcome = await self.hub.stop_server(user, server, remove=remove)
        except HubAPIError as e:
            ctx.emit(StopFailed(self.clock(), user, server, str(e)))
            return None
        if outcome is not StopOutcome.GONE:
            self.ledger.record(user, server, remove, self.clock())
        ctx.emit(StopAnswered(self.clock(), user, server, outcome, attempt, remove, v))
        return outcome

    def review(self, ctx: PassContext, user: User, server: Server, now: datetime) -> Verdict | None:
        """A server hubcull stopped before is listed again: did that stop work?

        Returns a verdict to keep it when hubcull must leave it alone (it was stopped
        max_attempts times without effect, and an operator has been told); None when
        it is to be decided as usual (a lost stop is then sent again).
        """
        rec = self.ledger.get(user.name, server.name)
        if rec is None:
            return None
        sighting = self.ledger.judge(rec, server, now)
        if sighting is Sighting.RESTARTED:
            self.ledger.forget(user.name, server.name)
        elif sighting is Sighting.STUCK:
            rec.stuck_reported = True
            ctx.emit(StopStuck(now, rec.user, rec.server, now - rec.first_at))
        elif sighting is Sighting.FAILED:
            self._lost(ctx, rec, now)
            if self.ledger.exhausted(rec):
                return Verdict(
                    Action.KEEP,
                    Cause.STOPS_LOST,
                    user.server_label(server.name),
                    f"stopped {rec.attempts} times without effect; left to an operator",
                )
        return None

    def _lost(self, ctx: PassContext, rec: StopRecord, now: datetime) -> None:
        exhausted = self.ledger.exhausted(rec)
        alert = exhausted and not rec.operator_alerted
        if alert:
            rec.operator_alerted = True
        ctx.emit(
            StopLost(
                now,
                rec.user,
                rec.server,
                rec.attempts,
                self.ledger.max_attempts,
                now - rec.last_at,
                exhausted,
                alert,
            )
        )

    async def confirm(self, ctx: PassContext, user: str, server: str) -> bool:
        """Look again until the Hub no longer lists the server; resend a stop that was lost."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.stop_wait
        while True:
            rec = self.ledger.get(user, server)
            if rec is None:
                return True
            raw = await self.hub.get_user(user)
            readable = True
            listed: Server | None = None
            if raw is not None:
                fresh = ctx.parse(raw, "confirming a stop")
                readable = fresh is not None  # never judge on what we cannot read: look again
                listed = None if fresh is None else fresh.servers.get(server)
            if readable:
                sighting = self.ledger.judge(rec, listed, self.clock())
                if sighting in (Sighting.GONE, Sighting.RESTARTED):
                    self.ledger.forget(user, server)
                    ctx.emit(StopConfirmed(self.clock(), user, server))
                    return True
                if sighting is Sighting.FAILED:
                    self._lost(ctx, rec, self.clock())
                    if self.ledger.exhausted(rec):
                        return False
                    if await self._send(ctx, user, server, rec.remove) is None:
                        return False
            if loop.time() >= deadline or self.stopping.is_set():
                return False
            await asyncio.sleep(self.poll_interval)

    async def verify(self, ctx: PassContext, sweep: Sweep | None) -> None:
        """With --once: confirm every stop of this pass before saying the pass is done.

        ``sweep`` (given when one listing costs less than looking at each) confirms
        many at once; what it cannot settle is looked at one by one.
        """
        records = self.ledger.records()
        if not records:
            return
        if sweep is not None:
            listed = await sweep({rec.user for rec in records})
            if listed is not None:
                now = self.clock()
                for rec in records:
                    if rec.user not in listed:
                        continue
                    server = listed[rec.user].get(rec.server)
                    if self.ledger.judge(rec, server, now) in (Sighting.GONE, Sighting.RESTARTED):
                        self.ledger.forget(rec.user, rec.server)
            records = self.ledger.records()
        results = await asyncio.gather(*(self.confirm(ctx, r.user, r.server) for r in records))
        for rec, ok in zip(records, results, strict=True):
            if not ok:
                ctx.emit(StopUnconfirmed(self.clock(), rec.user, rec.server, self.stop_wait, True))

    def retain(self, seen: set[Key], since: datetime) -> None:
        """After a complete pass: a stop whose server that pass did not list took effect
        (unless it was sent after the pass began, when the listing cannot tell)."""
        self.ledger.retain(seen, since)
