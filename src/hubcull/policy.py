"""The culling decision: pure, with ``now`` as an argument.

Nothing here reads a clock, the environment or the network. Every function takes
what the Hub reported, the moment to judge at and the operator's rules, and
returns a :class:`Verdict` that says what to do, which rule decided, in words,
and when the server (or user) becomes due. Tests pass any time they like, and a
decision can be replayed from a log line.

Which settings apply (the operator's rule for this server or user, flags filled
in) is resolved before, by rules.py; here each decision is one condition:

- a server is never touched while the Hub is busy with it (pending spawn/stop/...),
  nor when it is not ready, nor when its rule exempts it (or its kind is excluded);
- a server is culled when it has been idle for its rule's ``timeout`` (or when a
  custom arbiter says so), or when it has run for its rule's ``max_age``;
- a user is deleted only when none of their servers is left running, they are not
  exempt or a spared admin, and they have been inactive for their rule's user
  timeout or exist for ``max_age``.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import datetime, timedelta

from .model import Evidence, Server, User, format_duration
from .rules import MAX_SECONDS, ServerRule, UserRule

__all__ = ["MAX_SECONDS", "format_duration"]  # re-exported: the app and tests use them here


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
    EXEMPT = "exempt"  # an operator's rule says never (cull: false)
    NO_DATA = "no-data"  # no time to judge by
    BUSY = "busy"  # a kernel is busy (--check-kernels)
    CPU = "cpu"  # CPU in use (--check-kernels with --cpu-threshold)
    RUNNING = "running"  # a user with servers not confirmed stopped
    ADMIN = "admin"  # admins are spared
    STOPS_LOST = "stops-lost"  # stopped max_attempts times without effect: left to an operator
    KEPT = "kept"  # its user asked to keep it, until a moment
    WARNED = "warned"  # due, but its warning came too recently (min_warning)


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
    rule: str = "default"  # the operator's rule that applied (rules.py)
    # When its user is to be warned of the coming cull (None: no warning due, or sent).
    warn_at: datetime | None = None

    @property
    def wake_at(self) -> datetime | None:
        """The next moment this verdict may change by itself: a warning, or the cull."""
        return _earliest(self.warn_at, self.due_at)

    @property
    def culls(self) -> bool:
        return self.action.culls

    def describe(self) -> str:
        """``stop server alice/: idle for 2h 03m (timeout 1h 00m)``"""
        return f"{_VERBS[self.action]} {self.subject}: {self.reason}"


def arbiter_applies(server: Server, rule: ServerRule) -> bool:
    """Whether a cull_arbiter_hook gets a say on this server (as in the incumbent)."""
    if server.pending or not server.ready or not rule.cull:
        return False
    return server.activity_ref is not None


def _earliest(*times: datetime | None) -> datetime | None:
    present = [t for t in times if t is not None]
    return min(present) if present else None


def _rule_says(rule: ServerRule | UserRule, what: str, seconds: float) -> str:
    """``rule gpu: timeout 30m 00s``: which rule, and the setting that decided."""
    return f"rule {rule.name}: {what} {format_duration(seconds)}"


@dataclass(frozen=True, slots=True)
class Marks:
    """What hubcull remembers of a server beyond the Hub's record (state.py)."""

    warned_cull_at: datetime | None = None  # the cull the last warning announced
    warned_at: datetime | None = None
    kept_until: datetime | None = None  # a user's keep, for this run of the server
    kept_by: str | None = None


NO_MARKS = Marks()
# A warning announced a cull at a moment; a cull moved later than that (new activity, a
# keep) is a new idle spell and gets a warning of its own. Less than this is the same.
SPELL_SLACK = timedelta(seconds=1)


def _when(at: datetime) -> str:
    return at.strftime("%Y-%m-%d %H:%M:%S UTC")


def decide_server(
    user: User,
    server: Server,
    now: datetime,
    rule: ServerRule,
    arbiter_says_idle: bool | None = None,
    marks: Marks = NO_MARKS,
) -> Verdict:
    """Decide one server under the settings of the rule that applies to it.

    ``arbiter_says_idle`` is the answer of a configured ``cull_arbiter_hook``
    (``None`` when there is none): it replaces the plain ``idle >= timeout``
    comparison, exactly as in jupyterhub-idle-culler; ``max_age`` still applies.

    ``marks``: a user's keep holds off a cull for idleness until it ends (never past
    max_age); with warnings on (``rule.warn_before``), no cull comes sooner than
    ``rule.min_warning`` after the warning that announced it, and the verdict's
    ``warn_at`` says when that warning is due.
    """
    subject = user.server_label(server.name)
    # The evidence, as far as the Hub gave it: every verdict carries it (explain and the
    # pages show how idle an exempt or pending server is, too).
    ref = server.activity_ref
    inactive = None if ref is None else now - ref
    age = None if server.started is None else now - server.started

    def keep(
        cause: Cause, reason: str, due_at: datetime | None = None, warn_at: datetime | None = None
    ) -> Verdict:
        return Verdict(
            Action.KEEP,
            cause,
            subject,
            reason,
            due_at,
            inactive,
            age,
            ref,
            rule=rule.name,
            warn_at=warn_at,
        )

    if server.pending:
        return keep(Cause.PENDING, f"pending '{server.pending}': the Hub is busy with it")
    if not server.ready:
        return keep(Cause.NOT_READY, "neither ready nor pending")
    if not rule.cull:
        cause = Cause.EXEMPT if rule.exempt_by_rule else Cause.EXCLUDED
        return keep(cause, rule.exempt_reason)
    if ref is None or inactive is None:
        # Without any time we cannot judge idleness, and max-age needs 'started'.
        return keep(Cause.NO_DATA, "no activity or start time recorded")
    kept = marks.kept_until if marks.kept_until is not None and marks.kept_until > now else None
    idle_due_at = _deadline(ref, rule.timeout)
    if kept is not None:
        # A keep holds off idleness (the arbiter's too) until it ends.
        arbiter_says_idle = None if arbiter_says_idle is None else False
        idle_due_at = None if idle_due_at is None else max(idle_due_at, kept)
    age_due_at = (
        _deadline(server.started, rule.max_age)
        if rule.max_age and server.started is not None
        else None
    )
    action = Action.REMOVE if rule.remove_named else Action.STOP
    idle = format_duration(inactive)
    kept_words = "" if kept is None else f"; kept until {_when(kept)} by {marks.kept_by}"

    def cull(cause: Cause, reason: str, due_at: datetime | None) -> Verdict:
        return Verdict(action, cause, subject, reason, due_at, inactive, age, ref, rule=rule.name)

    # Which cull comes, and when; None when it is not due yet.
    due: Verdict | None = None
    if arbiter_says_idle is None and idle_due_at is not None and now >= idle_due_at:
        due = cull(
            Cause.IDLE,
            f"idle for {idle} ({_rule_says(rule, 'timeout', rule.timeout)}){kept_words}",
            idle_due_at,
        )
    elif arbiter_says_idle:
        due = cull(
            Cause.ARBITER, f"idle for {idle}; cull_arbiter_hook said cull (rule {rule.name})", now
        )
    elif age_due_at is not None and now >= age_due_at:
        due = cull(
            Cause.MAX_AGE,
            f"running for {format_duration(age)} ({_rule_says(rule, 'max-age', rule.max_age)}), "
            f"idle for {idle}",
            age_due_at,
        )
    # With an arbiter, the idle deadline is the arbiter's to know: only a keep's end and
    # max-age are certain.
    idle_next = idle_due_at if arbiter_says_idle is None else kept
    next_due = due.due_at if due is not None else _earliest(idle_next, age_due_at)

    warn_at = None
    if rule.warn_before and next_due is not None:
        warned = marks.warned_cull_at is not None and marks.warned_cull_at + SPELL_SLACK >= next_due
        if warned:
            assert marks.warned_at is not None
            earliest = marks.warned_at + timedelta(seconds=rule.min_warning)
        else:
            warn_at = next_due - timedelta(seconds=rule.warn_before)
            earliest = max(warn_at, now) + timedelta(seconds=rule.min_warning)
        if due is not None and now < earliest:
            # People always get their warning, and time to act on it.
            when = "" if warned else "a warning first; "
            return keep(
                Cause.WARNED,
                f"{when}due, but culled no sooner than {format_duration(rule.min_warning)} "
                f"after its warning: at {_when(earliest)} ({due.reason})",
                earliest,
                warn_at,
            )
        if due is None:
            next_due = max(next_due, earliest)
    if due is not None:
        return due
    if kept is not None:
        reason = f"kept until {_when(kept)} by {marks.kept_by}; idle for {idle}"
        if next_due is not None and next_due < kept:
            reason += f"; its max-age comes first, in {format_duration(next_due - now)}"
        return keep(Cause.KEPT, reason, next_due, warn_at)
    return keep(
        Cause.ACTIVE,
        f"idle for {idle}"
        + ("" if next_due is None else f", due in {format_duration(next_due - now)}"),
        next_due,
        warn_at,
    )


def decide_user(user: User, now: datetime, rule: UserRule, servers_running: int) -> Verdict:
    """Decide whether to delete a user (``--cull-users``), under the rule that applies to them.

    ``servers_running`` is how many of the user's servers are not confirmed stopped;
    the caller judges the user on the snapshot taken *before* it stopped any of
    them, because the Hub stamps "now" as the user's activity when a server stops.
    """
    subject = user.name
    ref = user.activity_ref
    inactive = None if ref is None else now - ref
    age = None if user.created is None else now - user.created

    def keep(cause: Cause, reason: str, due_at: datetime | None = None) -> Verdict:
        return Verdict(
            Action.KEEP, cause, subject, reason, due_at, inactive, age, ref, rule=rule.name
        )

    if not rule.cull_users:
        return keep(Cause.EXCLUDED, "users are not culled (cull_users=False)")
    if servers_running:
        return keep(Cause.RUNNING, f"{servers_running} server(s) not confirmed stopped")
    if rule.exempt:
        return keep(Cause.EXEMPT, f"exempt by rule {rule.name}")
    if not rule.cull_admin_users:
        if user.admin is None:
            return keep(Cause.NO_DATA, "cannot tell whether this user is an admin")
        if user.admin:
            return keep(Cause.ADMIN, "admins are spared (cull_admin_users=False)")
    if ref is None or inactive is None:
        return keep(Cause.NO_DATA, "no activity or creation time recorded")
    idle_due_at = _deadline(ref, rule.timeout)
    age_due_at = (
        _deadline(user.created, rule.max_age) if rule.max_age and user.created is not None else None
    )
    idle = format_duration(inactive)

    def delete(cause: Cause, reason: str, due_at: datetime | None) -> Verdict:
        return Verdict(
            Action.DELETE_USER, cause, subject, reason, due_at, inactive, age, ref, rule=rule.name
        )

    if idle_due_at is not None and now >= idle_due_at:
        return delete(
            Cause.IDLE,
            f"inactive for {idle} ({_rule_says(rule, 'user-timeout', rule.timeout)})",
            idle_due_at,
        )
    if age_due_at is not None and now >= age_due_at:
        return delete(
            Cause.MAX_AGE,
            f"created {format_duration(age)} ago ({_rule_says(rule, 'max-age', rule.max_age)}), "
            f"inactive for {idle}",
            age_due_at,
        )
    due_at = _earliest(idle_due_at, age_due_at)
    return keep(
        Cause.ACTIVE,
        f"inactive for {idle}"
        + ("" if due_at is None else f", due in {format_duration(due_at - now)}"),
        due_at,
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
    rule: ServerRule,
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
    action = Action.REMOVE if rule.remove_named else Action.STOP
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
        return Verdict(
            action, cause, subject, reason, due_at, inactive, age, newest, source, rule.name
        )

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
            f"idle for {format_duration(inactive)}; cull_arbiter_hook said cull "
            f"(rule {rule.name}); server confirms ({seen})",
            now,
        )
    due_at = _deadline(newest, rule.timeout)
    if due_at is None or now < due_at:
        return keep(
            Cause.ACTIVE,
            f"{newer or 'active'}: idle for {format_duration(inactive)} only ({seen})",
            due_at,
        )
    return verdict(
        action,
        Cause.IDLE,
        f"idle for {format_duration(inactive)} ({_rule_says(rule, 'timeout', rule.timeout)}); "
        f"server confirms: {seen}",
        due_at,
    )


def _latest(*times: datetime | None) -> datetime | None:
    present = [t for t in times if t is not None]
    return max(present) if present else None
