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

from .model import Evidence, Server, User

# The longest timeout or max-age that makes sense (100 years): beyond it, deadlines
# fall off the calendar (datetime ends in year 9999) and no decision could be made.
MAX_SECONDS = 100 * 365 * 86400


def _deadline(start: datetime, seconds: float) -> datetime | None:
    """``start + seconds``, or None (never) when that is past the end of the calendar."""
    try:
        return start + timedelta(seconds=seconds)
    except OverflowError:
        return None


class Cause(enum.Enum):
    """Which condition decided a verdict: a metric label and an audit field, so a fixed set."""

    # culls
    IDLE = "idle"  # idle for the timeout
    MAX_AGE = "max-age"  # running (a user: existing) for max_age
    ARBITER = "arbiter"  # the cull_arbiter_hook said so
    BUSY_TIMEOUT = "busy-timeout"  # a busy kernel, and nothing else, for busy_timeout
    # keeps
    ACTIVE = "active"  # not idle long enough yet
    PENDING = "pending"  # the Hub is busy with it (spawn, stop, check, rename)
    NOT_READY = "not-ready"
    EXCLUDED = "excluded"  # its kind (default/named servers, users) is not culled
    NO_DATA = "no-data"  # no time to judge by
    BUSY = "busy"  # a kernel is busy (--check-kernels)
    CPU = "cpu"  # CPU in use (--check-kernels with --cpu-threshold)
    RUNNING = "running"  # a user with servers not confirmed stopped
    ADMIN = "admin"  # admins are spared
    STOPS_LOST = "stops-lost"  # stopped max_attempts times without effect: left to an operator


class ActivitySource(enum.Enum):
    """Where the activity a verdict rests on came from."""

    HUB = "hub"  # the Hub's last_activity (the proxy, the server's own reports)
    PROBE = "probe"  # the server itself, asked by --check-kernels


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
        if not 0 < self.timeout <= MAX_SECONDS:
            raise ValueError(
                f"timeout must be a positive number of seconds up to {MAX_SECONDS}, "
                f"not {self.timeout!r}"
            )
        if not 0 <= self.max_age <= MAX_SECONDS:
            raise ValueError(
                f"max_age must be 0 (off) or positive, up to {MAX_SECONDS}, not {self.max_age!r}"
            )


_VERBS = {
    Action.KEEP: "keep",
    Action.STOP: "stop server",
    Action.REMOVE: "remove server",
    Action.DELETE_USER: "delete user",
}


@dataclass(frozen=True, slots=True)
class Verdict:
    action: Action
    cause: Cause
    subject: str  # "alice/" (default server), "alice/gpu" (named server) or "alice" (a user)
    reason: str  # the evidence in words, for the log and --dry-run
    # When the subject becomes due for culling under the current evidence
    # (already past when action culls); None when no rule would ever cull it as seen.
    due_at: datetime | None = None
    inactive: timedelta | None = None
    age: timedelta | None = None
    # The activity the verdict counted from, and who reported it.
    last_activity: datetime | None = None
    source: ActivitySource = ActivitySource.HUB

    @property
    def culls(self) -> bool:
        return self.action.culls

    def describe(self) -> str:
        """``stop server alice/: idle for 2h 03m (timeout 1h 00m)``"""
        return f"{_VERBS[self.action]} {self.subject}: {self.reason}"


def arbiter_applies(server: Server, rules: Rules) -> bool:
    """Whether a cull_arbiter_hook gets a say on this server (as in the incumbent)."""
    if server.pending or not server.ready:
        return False
    if not (rules.cull_default_servers if server.is_default else rules.cull_named_servers):
        return False
    return server.activity_ref is not None


def format_duration(td: timedelta | float | None) -> str:
    """A duration as people read it: ``45s``, ``12m 05s``, ``3h 02m``, ``2d 4h``."""
    if td is None:
        return "unknown"
    seconds = td.total_seconds() if isinstance(td, timedelta) else float(td)
    s = int(abs(seconds))
    sign = "-" if seconds < 0 and s else ""
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
    subject = user.server_label(server.name)

    def keep(cause: Cause, reason: str, **evidence: object) -> Verdict:
        return Verdict(Action.KEEP, cause, subject, reason, **evidence)  # type: ignore[arg-type]

    if server.pending:
        return keep(Cause.PENDING, f"pending '{server.pending}': the Hub is busy with it")
    if not server.ready:
        return keep(Cause.NOT_READY, "neither ready nor pending")
    if server.is_default and not rules.cull_default_servers:
        return keep(Cause.EXCLUDED, "default servers are not culled (cull_default_servers=False)")
    if not server.is_default and not rules.cull_named_servers:
        return keep(Cause.EXCLUDED, "named servers are not culled (cull_named_servers=False)")

    ref = server.activity_ref
    if ref is None:
        # Without any time we cannot judge idleness, and max-age needs 'started'.
        return keep(Cause.NO_DATA, "no activity or start time recorded")
    inactive = now - ref
    age = None if server.started is None else now - server.started
    idle_due_at = _deadline(ref, rules.timeout)
    age_due_at = (
        _deadline(server.started, rules.max_age)
        if rules.max_age and server.started is not None
        else None
    )
    action = (
        Action.REMOVE if (rules.remove_named_servers and not server.is_default) else Action.STOP
    )

    if arbiter_says_idle is None and idle_due_at is not None and now >= idle_due_at:
        return Verdict(
            action,
            Cause.IDLE,
            subject,
            f"idle for {format_duration(inactive)} (timeout {format_duration(rules.timeout)})",
            idle_due_at,
            inactive,
            age,
            ref,
        )
    if arbiter_says_idle:
        return Verdict(
            action,
            Cause.ARBITER,
            subject,
            f"idle for {format_duration(inactive)}; cull_arbiter_hook said cull",
            now,
            inactive,
            age,
            ref,
        )
    if age_due_at is not None and now >= age_due_at:
        return Verdict(
            action,
            Cause.MAX_AGE,
            subject,
            f"running for {format_duration(age)} (max-age {format_duration(rules.max_age)}), "
            f"idle for {format_duration(inactive)}",
            age_due_at,
            inactive,
            age,
            ref,
        )
    # With an arbiter, the idle deadline is the arbiter's to know: only max-age is certain.
    due_at = _earliest(idle_due_at if arbiter_says_idle is None else None, age_due_at)
    return keep(
        Cause.ACTIVE,
        f"idle for {format_duration(inactive)}"
        + ("" if due_at is None else f", due in {format_duration(due_at - now)}"),
        due_at=due_at,
        inactive=inactive,
        age=age,
        last_activity=ref,
    )


def decide_user(user: User, now: datetime, rules: Rules, servers_running: int) -> Verdict:
    """Decide whether to delete a user (``--cull-users``).

    ``servers_running`` is how many of the user's servers are not confirmed stopped;
    the caller judges the user on the snapshot taken *before* it stopped any of
    them, because the Hub stamps "now" as the user's activity when a server stops.
    """
    subject = user.name

    def keep(cause: Cause, reason: str, **evidence: object) -> Verdict:
        return Verdict(Action.KEEP, cause, subject, reason, **evidence)  # type: ignore[arg-type]

    if not rules.cull_users:
        return keep(Cause.EXCLUDED, "users are not culled (cull_users=False)")
    if servers_running:
        return keep(Cause.RUNNING, f"{servers_running} server(s) not confirmed stopped")
    if not rules.cull_admin_users:
        if user.admin is None:
            return keep(Cause.NO_DATA, "cannot tell whether this user is an admin")
        if user.admin:
            return keep(Cause.ADMIN, "admins are spared (cull_admin_users=False)")
    ref = user.activity_ref
    if ref is None:
        return keep(Cause.NO_DATA, "no activity or creation time recorded")
    inactive = now - ref
    age = None if user.created is None else now - user.created
    idle_due_at = _deadline(ref, rules.timeout)
    age_due_at = (
        _deadline(user.created, rules.max_age)
        if rules.max_age and user.created is not None
        else None
    )
    if idle_due_at is not None and now >= idle_due_at:
        return Verdict(
            Action.DELETE_USER,
            Cause.IDLE,
            subject,
            f"inactive for {format_duration(inactive)} (timeout {format_duration(rules.timeout)})",
            idle_due_at,
            inactive,
            age,
            ref,
        )
    if age_due_at is not None and now >= age_due_at:
        return Verdict(
            Action.DELETE_USER,
            Cause.MAX_AGE,
            subject,
            f"created {format_duration(age)} ago (max-age {format_duration(rules.max_age)}), "
            f"inactive for {format_duration(inactive)}",
            age_due_at,
            inactive,
            age,
            ref,
        )
    due_at = _earliest(idle_due_at, age_due_at)
    return keep(
        Cause.ACTIVE,
        f"inactive for {format_duration(inactive)}"
        + ("" if due_at is None else f", due in {format_duration(due_at - now)}"),
        due_at=due_at,
        inactive=inactive,
        age=age,
        last_activity=ref,
    )


@dataclass(frozen=True, slots=True)
class ProbeRules:
    """How a server's own evidence weighs (``--check-kernels``)."""

    # Longest a busy kernel with no other activity keeps a server alive; 0: no cap.
    busy_timeout: float = 86400
    # CPU use (jupyter-resource-usage) at or above which the server counts as in use; None: off.
    cpu_threshold: float | None = None


def decide_with_evidence(
    user: User,
    server: Server,
    now: datetime,
    rules: Rules,
    probe_rules: ProbeRules,
    evidence: Evidence,
    hub_activity: datetime | None,
    by_arbiter: bool = False,
) -> Verdict:
    """Decide a server the Hub's view found idle, on what the server itself says.

    One condition, as in jupyter_server's kernel culler: the server is culled when it
    is idle for the timeout AND no kernel is busy (unless busy past ``busy_timeout``)
    AND its CPU is under the threshold. Any activity the server knows of that the Hub
    does not (kernel messages, terminals, API calls) counts.
    """
    subject = user.server_label(server.name)
    action = (
        Action.REMOVE if (rules.remove_named_servers and not server.is_default) else Action.STOP
    )
    seen = evidence.describe()
    own = evidence.newest_activity()
    newest = _latest(hub_activity, own)
    inactive = None if newest is None else now - newest
    age = None if server.started is None else now - server.started

    # The server's own time counts when it is the newer one.
    source = (
        ActivitySource.PROBE
        if own is not None and (hub_activity is None or own > hub_activity)
        else ActivitySource.HUB
    )

    def verdict(action: Action, cause: Cause, reason: str, due_at: datetime | None) -> Verdict:
        return Verdict(action, cause, subject, reason, due_at, inactive, age, newest, source)

    def keep(cause: Cause, reason: str, due_at: datetime | None = None) -> Verdict:
        return verdict(Action.KEEP, cause, reason, due_at)

    threshold = probe_rules.cpu_threshold
    if threshold is not None and evidence.cpu_percent is not None:
        if evidence.cpu_percent >= threshold:
            return keep(
                Cause.CPU, f"in use: CPU {evidence.cpu_percent:.0f}% >= {threshold:g}% ({seen})"
            )
    if newest is None:
        return keep(Cause.NO_DATA, f"no activity time from the Hub or the server ({seen})")
    busy = evidence.busy_kernels
    if busy:
        names = ", ".join(sorted({k.name for k in busy}))
        if not probe_rules.busy_timeout:
            return keep(Cause.BUSY, f"kernel busy ({names}), no cap on busy kernels ({seen})")
        cap_at = _deadline(newest, probe_rules.busy_timeout)
        if cap_at is None or now < cap_at:
            return keep(
                Cause.BUSY,
                f"kernel busy ({names}), no other activity for {format_duration(inactive)}; "
                f"kept up to busy-timeout {format_duration(probe_rules.busy_timeout)} ({seen})",
                cap_at,
            )
        return verdict(
            action,
            Cause.BUSY_TIMEOUT,
            f"kernel busy ({names}) with no other activity for {format_duration(inactive)}: "
            f"past busy-timeout {format_duration(probe_rules.busy_timeout)} ({seen})",
            cap_at,
        )
    if own is not None and hub_activity is not None and own > hub_activity:
        newer = f"the server reports activity {format_duration(now - own)} ago"
    else:
        newer = ""
    if by_arbiter:
        if newer:
            return keep(Cause.ACTIVE, f"{newer}, after the Hub's view the arbiter judged ({seen})")
        return verdict(
            action,
            Cause.ARBITER,
            f"idle for {format_duration(inactive)}; cull_arbiter_hook said cull; "
            f"server confirms ({seen})",
            now,
        )
    due_at = _deadline(newest, rules.timeout)
    if due_at is None or now < due_at:
        return keep(
            Cause.ACTIVE,
            f"{newer or 'active'}: idle for {format_duration(inactive)} only ({seen})",
            due_at,
        )
    return verdict(
        action,
        Cause.IDLE,
        f"idle for {format_duration(inactive)} (timeout {format_duration(rules.timeout)}); "
        f"server confirms: {seen}",
        due_at,
    )


def _latest(*times: datetime | None) -> datetime | None:
    present = [t for t in times if t is not None]
    return max(present) if present else None
