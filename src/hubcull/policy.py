"""The culling decision: pure, with ``now`` as an argument.

Nothing here reads a clock, the environment or the network. Every function takes
what the Hub reported, the moment to judge at and the operator's rules, and
returns a :class:`Verdict` that says what to do, which rule decided, in words,
and when the server (or user) becomes due. Tests pass any time they like, and a
decision can be replayed from a log line.

The rules, each one condition:

- a server is never touched while the Hub is busy with it (pending spawn/stop/...),
  nor when it is not ready, nor when its kind (default/named) is excluded;
- a server is culled when it has been idle for ``timeout`` (or when a custom
  arbiter says so), or when it has run for ``max_age``;
- a user is deleted only when none of their servers is left running, they are not
  a spared admin, and they have been inactive for ``timeout`` or exist for ``max_age``.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import datetime, timedelta

from .model import Server, User


class Action(enum.Enum):
    KEEP = "keep"
    STOP = "stop"  # stop the server, keep its record
    REMOVE = "remove"  # stop a named server and delete it for good
    DELETE_USER = "delete-user"

    @property
    def culls(self) -> bool:
        return self is not Action.KEEP


@dataclass(frozen=True, slots=True)
class Rules:
    """The operator's culling rules, as plain values (the app builds this from config)."""

    timeout: float  # seconds of inactivity before a server (or user) is culled
    max_age: float = 0  # seconds a server may run (a user may exist) whatever its activity; 0: off
    cull_users: bool = False
    cull_admin_users: bool = True
    cull_default_servers: bool = True
    cull_named_servers: bool = True
    remove_named_servers: bool = False

    def __post_init__(self) -> None:
        if not self.timeout > 0:
            raise ValueError(f"timeout must be a positive number of seconds, not {self.timeout!r}")
        if self.max_age < 0:
            raise ValueError(f"max_age must be 0 (off) or positive, not {self.max_age!r}")


@dataclass(frozen=True, slots=True)
class Verdict:
    action: Action
    rule: str  # short machine-friendly name: idle, max-age, arbiter, pending, not-ready, ...
    reason: str  # the decision in words, for the log and --dry-run
    # When the subject becomes due for culling under the current evidence
    # (already past when action culls); None when no rule would ever cull it as seen.
    due_at: datetime | None = None
    inactive: timedelta | None = None
    age: timedelta | None = None

    @property
    def culls(self) -> bool:
        return self.action.culls


def format_duration(td: timedelta | float | None) -> str:
    """A duration as people read it: ``45s``, ``12m 05s``, ``3h 02m``, ``2d 4h``."""
    if td is None:
        return "unknown"
    seconds = td.total_seconds() if isinstance(td, timedelta) else float(td)
    sign = "-" if seconds < 0 else ""
    s = int(abs(seconds))
    days, s = divmod(s, 86400)
    hours, s = divmod(s, 3600)
    minutes, s = divmod(s, 60)
    if days:
        return f"{sign}{days}d {hours}h"
    if hours:
        return f"{sign}{hours}h {minutes:02d}m"
    if minutes:
        return f"{sign}{minutes}m {s:02d}s"
    return f"{sign}{s}s"


def _earliest(*times: datetime | None) -> datetime | None:
    present = [t for t in times if t is not None]
    return min(present) if present else None


def server_inactivity(server: Server, now: datetime) -> timedelta | None:
    """Time since the server's last recorded activity (its start when it has none yet)."""
    ref = server.last_activity or server.started
    return None if ref is None else now - ref


def decide_server(
    user: User,
    server: Server,
    now: datetime,
    rules: Rules,
    arbiter_says_idle: bool | None = None,
) -> Verdict:
    """Decide one server.

    ``arbiter_says_idle`` is the answer of a configured ``cull_arbiter_hook``
    (``None`` when there is none): it replaces the plain ``idle >= timeout``
    comparison, exactly as in jupyterhub-idle-culler; ``max_age`` still applies.
    """
    label = user.server_label(server.name)
    if server.pending:
        return Verdict(
            Action.KEEP, "pending", f"{label} is pending '{server.pending}': the Hub is busy with it"
        )
    if not server.ready:
        return Verdict(Action.KEEP, "not-ready", f"{label} is neither ready nor pending")
    if server.is_default and not rules.cull_default_servers:
        return Verdict(Action.KEEP, "excluded", f"{label}: default servers are not culled")
    if not server.is_default and not rules.cull_named_servers:
        return Verdict(Action.KEEP, "excluded", f"{label}: named servers are not culled")

    inactive = server_inactivity(server, now)
    age = None if server.started is None else now - server.started
    ref = server.last_activity or server.started
    idle_due_at = None if ref is None else ref + timedelta(seconds=rules.timeout)
    age_due_at = (
        server.started + timedelta(seconds=rules.max_age)
        if rules.max_age and server.started is not None
        else None
    )
    action = Action.REMOVE if (rules.remove_named_servers and not server.is_default) else Action.STOP
    verb = "remove" if action is Action.REMOVE else "stop"

    if inactive is None:
        # Without any time we cannot judge idleness; max-age needs 'started', which is absent too.
        return Verdict(Action.KEEP, "no-data", f"{label} has no activity or start time recorded")

    if arbiter_says_idle is None:
        idle = idle_due_at is not None and now >= idle_due_at
        idle_rule = "idle"
    else:
        idle = bool(arbiter_says_idle)
        idle_rule = "arbiter"
    if idle:
        why = (
            f"idle for {format_duration(inactive)} (timeout {format_duration(rules.timeout)})"
            if idle_rule == "idle"
            else f"idle for {format_duration(inactive)}, cull_arbiter_hook said cull"
        )
        return Verdict(
            action, idle_rule, f"{verb} {label}: {why}", idle_due_at, inactive, age
        )
    if age_due_at is not None and now >= age_due_at:
        return Verdict(
            action,
            "max-age",
            f"{verb} {label}: running for {format_duration(age)} "
            f"(max-age {format_duration(rules.max_age)}), idle for {format_duration(inactive)}",
            age_due_at,
            inactive,
            age,
        )
    # With an arbiter the idle deadline is the arbiter's secret: only max-age is known.
    due_at = _earliest(idle_due_at if arbiter_says_idle is None else None, age_due_at)
    return Verdict(
        Action.KEEP,
        "active",
        f"{label} idle for {format_duration(inactive)}"
        + ("" if due_at is None else f", due in {format_duration(due_at - now)}"),
        due_at,
        inactive,
        age,
    )


def decide_user(user: User, now: datetime, rules: Rules, servers_running: int) -> Verdict:
    """Decide whether to delete a user (``--cull-users``).

    ``servers_running`` is how many of the user's servers are not confirmed stopped;
    the caller judges the user on the snapshot taken *before* it stopped any of
    them, because the Hub stamps "now" as the user's activity when a server stops.
    """
    name = user.name
    if not rules.cull_users:
        return Verdict(Action.KEEP, "excluded", f"user {name}: users are not culled")
    if servers_running:
        return Verdict(
            Action.KEEP, "running", f"user {name} has {servers_running} server(s) not stopped"
        )
    if not rules.cull_admin_users:
        if user.admin is None:
            return Verdict(
                Action.KEEP, "no-data", f"user {name}: cannot tell whether this user is an admin"
            )
        if user.admin:
            return Verdict(Action.KEEP, "admin", f"user {name} is an admin: admins are spared")
    ref = user.last_activity or user.created
    inactive = None if ref is None else now - ref
    age = None if user.created is None else now - user.created
    idle_due_at = None if ref is None else ref + timedelta(seconds=rules.timeout)
    age_due_at = (
        user.created + timedelta(seconds=rules.max_age)
        if rules.max_age and user.created is not None
        else None
    )
    if idle_due_at is not None and now >= idle_due_at:
        return Verdict(
            Action.DELETE_USER,
            "idle",
            f"delete user {name}: inactive for {format_duration(inactive)} "
            f"(timeout {format_duration(rules.timeout)})",
            idle_due_at,
            inactive,
            age,
        )
    if age_due_at is not None and now >= age_due_at:
        return Verdict(
            Action.DELETE_USER,
            "max-age",
            f"delete user {name}: created {format_duration(age)} ago "
            f"(max-age {format_duration(rules.max_age)}), inactive for {format_duration(inactive)}",
            age_due_at,
            inactive,
            age,
        )
    if ref is None:
        return Verdict(Action.KEEP, "no-data", f"user {name} has no activity or creation time")
    due_at = _earliest(idle_due_at, age_due_at)
    return Verdict(
        Action.KEEP,
        "active",
        f"user {name} inactive for {format_duration(inactive)}",
        due_at,
        inactive,
        age,
    )
