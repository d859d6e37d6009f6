"""Keeping a server: a user says "I'm still using this", within the operator's limit.

A keep holds off culling for idleness until it ends (never past the server's max-age),
and ends with the server: a later start begins without it. Users keep their own
servers; admins may keep anyone's. hubcull acts with its own token: the requester's
identity comes from the Hub, and the server's state is read from the Hub, never taken
from the request.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from ..events import Emit, KeepChanged
from ..model import ModelError, Server, User, format_duration, parse_user, server_label
from ..rules import RuleSet
from ..state import Keep, StateStore
from .auth import Viewer

# The durations the page offers, up to each server's limit (which is offered too).
CHOICES = (1800, 3600, 2 * 3600, 4 * 3600, 8 * 3600, 86400, 3 * 86400, 7 * 86400)


class KeepError(Exception):
    """A keep refused: an HTTP status and a sentence for the person who asked."""

    def __init__(self, status: int, message: str) -> None:
        self.status = status
        self.message = message
        super().__init__(message)


@dataclass(frozen=True, slots=True)
class KeepResult:
    user: str
    server: str
    kept_until: datetime | None
    capped_by_max_age: bool = False


def label(seconds: float) -> str:
    """A button's words: ``30 min``, ``2 h``, ``1 day``, ``3 days`` (else ``1h 30m``)."""
    s = int(seconds)
    if s % 86400 == 0:
        days = s // 86400
        return f"{days} day" + ("s" if days > 1 else "")
    if s % 3600 == 0:
        return f"{s // 3600} h"
    if s % 60 == 0 and s < 3600:
        return f"{s // 60} min"
    return format_duration(s)


def choices(limit: float) -> list[int]:
    """The "Keep for ..." buttons for a server whose rule allows ``limit`` seconds."""
    picks = [c for c in CHOICES if c < limit]
    return [*picks, int(limit)] if limit else []


class KeepDesk:
    def __init__(
        self,
        lookup: Callable[[str], Awaitable[Any]],
        rules: RuleSet,
        store: StateStore,
        emit: Emit,
        clock: Callable[[], datetime],
        reconsider: Callable[[str, str], None],
    ) -> None:
        self.lookup = lookup  # a user's model, read with hubcull's own token
        self.rules = rules
        self.store = store
        self.emit = emit
        self.clock = clock
        self.reconsider = reconsider

    async def _running(self, viewer: Viewer, user: str, server: str) -> tuple[User, Server]:
        if user != viewer.name and not viewer.admin:
            raise KeepError(403, "you may keep only your own servers")
        raw = await self.lookup(user)
        try:
            owner = None if raw is None else parse_user(raw)
        except ModelError:
            owner = None
        found = None if owner is None else owner.servers.get(server)
        if owner is None or found is None or not found.ready or found.pending:
            raise KeepError(404, f"no running server {server_label(user, server)}")
        return owner, found

    async def keep(self, viewer: Viewer, user: str, server: str, seconds: Any) -> KeepResult:
        if not isinstance(seconds, (int, float)) or isinstance(seconds, bool) or seconds <= 0:
            raise KeepError(400, "'seconds' must be a positive number of seconds")
        owner, found = await self._running(viewer, user, server)
        rule = self.rules.for_server(owner, found)
        label = server_label(user, server)
        if not rule.max_keep:
            raise KeepError(403, f"keeping is turned off for {label} (rule {rule.name})")
        if seconds > rule.max_keep:
            raise KeepError(
                400,
                f"{label} may be kept at most {format_duration(rule.max_keep)} "
                f"(rule {rule.name}), not {format_duration(seconds)}",
            )
        now = self.clock()
        until = now + timedelta(seconds=seconds)
        capped = False
        if rule.max_age and found.started is not None:
            end = found.started + timedelta(seconds=rule.max_age)
            if end < until:
                until, capped = end, True
            if until <= now:
                raise KeepError(
                    400,
                    f"{label} has run its max-age ({format_duration(rule.max_age)}, "
                    f"rule {rule.name}): it cannot be kept",
                )
        self.store.keep((user, server), Keep(until, viewer.name, now, found.started))
        self.emit(KeepChanged(now, user, server, until, viewer.name))
        self.reconsider(user, server)
        return KeepResult(user, server, until, capped)

    async def cancel(self, viewer: Viewer, user: str, server: str) -> KeepResult:
        if user != viewer.name and not viewer.admin:
            raise KeepError(403, "you may change only your own servers' keeps")
        if self.store.forget_keep((user, server)):
            self.emit(KeepChanged(self.clock(), user, server, None, viewer.name))
            self.reconsider(user, server)
        return KeepResult(user, server, None)
