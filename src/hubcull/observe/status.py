"""One picture of every running server: who, what profile, how idle, which verdict, when due.

Kept current from the events, and read by everything that shows hubcull's plans:
``--dry-run``, and the metrics, ``explain`` and the pages. None of them walks the
engine's private state. A server enters when a pass or a deadline check judges it,
changes with each new verdict, and leaves when it is stopped, when its user's record
no longer lists it, or when a complete pass no longer lists it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

from ..events import (
    ConfigProblem,
    HubDown,
    HubUp,
    PassFinished,
    PassReport,
    ServerJudged,
    StopAnswered,
    StopConfirmed,
    StopLost,
    UserDeleted,
    UserGone,
    UserJudged,
    UserRead,
)
from ..model import StopOutcome
from ..policy import ActivitySource, Verdict
from ..rules import ServerRule

Key = tuple[str, str]


@dataclass(frozen=True, slots=True)
class ServerStatus:
    user: str
    server: str  # "" for the default server
    admin: bool | None
    groups: tuple[str, ...] | None
    profile: str | None  # user_options["profile"] (KubeSpawner's profile_list slug)
    user_options: Mapping[str, Any]
    started: datetime | None
    last_activity: datetime | None  # the activity the verdict counted from
    activity_source: ActivitySource
    verdict: Verdict
    judged_at: datetime
    overruled: bool = False  # the Hub's view said cull; the server's own evidence said keep
    stopping: bool = False  # a stop was answered 202 and is not confirmed yet
    rule: ServerRule | None = None  # the settings that applied

    @property
    def subject(self) -> str:
        return self.verdict.subject

    @property
    def due_at(self) -> datetime | None:
        return self.verdict.due_at


@dataclass(frozen=True, slots=True)
class UserStatus:
    """--cull-users: a user's deletion verdict."""

    name: str
    verdict: Verdict
    judged_at: datetime


class StatusView:
    def __init__(self) -> None:
        self.servers: dict[Key, ServerStatus] = {}
        self.users: dict[str, UserStatus] = {}
        self.last_pass: PassReport | None = None
        self.last_success: datetime | None = None  # when the last complete, clean pass ended
        self.hub_down_since: datetime | None = None
        self.stops_lost = 0
        self.problems: dict[str, str] = {}  # settings that silently disable a feature

    def handlers(self) -> dict[type, Callable[[Any], None]]:
        return {
            ServerJudged: self._judged,
            UserJudged: self._user_judged,
            UserRead: self._read,
            UserGone: lambda e: self._forget_user(e.name),
            UserDeleted: lambda e: self._forget_user(e.user.name),
            StopAnswered: self._answered,
            StopConfirmed: lambda e: self.servers.pop((e.user, e.server), None),
            StopLost: self._lost,
            PassFinished: self._pass_finished,
            HubDown: self._down,
            HubUp: lambda e: setattr(self, "hub_down_since", None),
            ConfigProblem: lambda e: self.problems.__setitem__(e.key, e.message),
        }

    # --- reading -----------------------------------------------------------------

    def rows(self) -> list[ServerStatus]:
        """Every server, soonest due first (never due last), then by name."""
        far = datetime.max.replace(tzinfo=None)

        def order(s: ServerStatus) -> tuple[Any, ...]:
            due = s.due_at
            return (due is None, due.replace(tzinfo=None) if due else far, s.user, s.server)

        return sorted(self.servers.values(), key=order)

    def next_due(self) -> datetime | None:
        """The earliest deadline of a server still running (a cull that comes next)."""
        dues = [s.due_at for s in self.servers.values() if s.due_at and not s.stopping]
        return min(dues) if dues else None

    @property
    def hub_reachable(self) -> bool:
        return self.hub_down_since is None

    # --- events ------------------------------------------------------------------

    def _judged(self, e: ServerJudged) -> None:
        v, user, server = e.verdict, e.user, e.server
        self.servers[(user.name, server.name)] = ServerStatus(
            user=user.name,
            server=server.name,
            admin=user.admin,
            groups=user.groups,
            profile=server.profile,
            user_options=server.user_options,
            started=server.started,
            last_activity=v.last_activity or server.activity_ref,
            activity_source=v.source,
            verdict=v,
            judged_at=e.at,
            overruled=e.overruled,
            rule=e.rule,
        )

    def _user_judged(self, e: UserJudged) -> None:
        self.users[e.user.name] = UserStatus(e.user.name, e.verdict, e.at)

    def _read(self, e: UserRead) -> None:
        """A fresh record of a user: servers it no longer lists have stopped."""
        name, listed = e.user.name, e.user.servers
        for key in [k for k in self.servers if k[0] == name and k[1] not in listed]:
            del self.servers[key]
        if listed:
            self.users.pop(name, None)

    def _forget_user(self, name: str) -> None:
        for key in [k for k in self.servers if k[0] == name]:
            del self.servers[key]
        self.users.pop(name, None)

    def _answered(self, e: StopAnswered) -> None:
        key = (e.user, e.server)
        if e.outcome is StopOutcome.STOPPING:
            if key in self.servers:
                self.servers[key] = replace(self.servers[key], stopping=True)
        else:
            self.servers.pop(key, None)

    def _lost(self, e: StopLost) -> None:
        self.stops_lost += 1

    def _pass_finished(self, e: PassFinished) -> None:
        report = e.report
        self.last_pass = report
        if report.ok:
            self.last_success = report.finished
        if report.complete:
            # What this pass did not judge is no longer running (or no longer ours to see).
            start = report.started
            self.servers = {k: s for k, s in self.servers.items() if s.judged_at >= start}
            self.users = {k: u for k, u in self.users.items() if u.judged_at >= start}

    def _down(self, e: HubDown) -> None:
        if self.hub_down_since is None:
            self.hub_down_since = e.at
