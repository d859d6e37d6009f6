"""What the pages show, computed from the status view at the moment of the request.

Pure: rows are built from :class:`~hubcull.observe.status.ServerStatus` and ``now``,
so "idle for" and "due in" are true when the page is rendered (the browser then keeps
the countdowns ticking). Times go out as ISO 8601 UTC; the page shows them in the
viewer's own time zone.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from ..model import format_duration, format_timestamp
from ..observe.status import ServerStatus
from ..policy import ActivitySource, Cause
from ..state import StateStore
from .keeps import choices, label

SORTS = ("due", "user", "idle", "rule")


@dataclass(frozen=True, slots=True)
class ServerRow:
    user: str
    server: str  # "" for the default server
    subject: str  # alice/ or alice/gpu
    profile: str | None
    rule: str
    state: str  # due, active, stopping, exempt, kept: a CSS class and a word
    headline: str  # "Stopped in 12m 05s", "Never stopped", ...
    why: str  # the reason in words
    idle_seconds: float | None
    idle: str  # "18m 02s"
    last_activity: str | None  # ISO 8601 UTC
    activity_source: str  # "the Hub" or "the server itself"
    due_at: str | None  # ISO 8601 UTC
    due_in: str  # "in 12m 05s", "now", "never"
    kept_until: str | None = None  # ISO 8601 UTC, while a keep holds
    kept_by: str | None = None
    keep_choices: tuple[tuple[int, str], ...] = ()  # (seconds, "2 h"): the page's buttons


def _iso(value: datetime | None) -> str | None:
    return None if value is None else format_timestamp(value)


def why(s: ServerStatus) -> str:
    """Why a server will be stopped when it will, or why it will not, in words."""
    v, rule = s.verdict, s.rule
    if s.stopping:
        return "hubcull asked the Hub to stop it; it is still stopping"
    if v.culls:
        return f"due now: {v.reason}"
    if v.cause is Cause.EXEMPT:
        return f"never stopped for idleness: exempt by rule {v.rule}"
    if v.cause is Cause.ACTIVE and rule is not None:
        text = f"stopped after {format_duration(rule.timeout)} without activity"
        if rule.max_age:
            text += f", or {format_duration(rule.max_age)} after it started"
        return f"{text} (rule {v.rule})"
    return v.reason


def server_row(s: ServerStatus, now: datetime, store: StateStore | None = None) -> ServerRow:
    v = s.verdict
    last = s.last_activity
    idle_seconds = None if last is None else max(0.0, (now - last).total_seconds())
    due = v.due_at
    if s.stopping:
        state, headline = "stopping", "Being stopped"
    elif v.culls:
        state, headline = "due", "Due now"
    elif v.cause in (Cause.EXEMPT, Cause.EXCLUDED):
        state, headline = "exempt", "Never stopped for idleness"
    elif due is None:
        state, headline = "kept", "Not due"
    else:
        state, headline = "active", "Will be stopped"
    if due is None:
        due_in = "never"
    elif due <= now:
        due_in = "now"
    else:
        due_in = "in " + format_duration(due - now)
    keep = None if store is None else store.keeps.get((s.user, s.server))
    if keep is not None and (keep.started != s.started or keep.kept_until <= now):
        keep = None  # a keep of an earlier run of the server, or one that has ended
    limit = 0.0 if s.rule is None or not s.rule.cull else s.rule.max_keep
    if keep is not None and state in ("active", "kept"):
        state, headline = "kept", "Kept"
    return ServerRow(
        user=s.user,
        server=s.server,
        subject=s.subject,
        profile=s.profile,
        rule=v.rule,
        state=state,
        headline=headline,
        why=why(s),
        idle_seconds=idle_seconds,
        idle="unknown" if idle_seconds is None else format_duration(idle_seconds),
        last_activity=_iso(last),
        activity_source="the server itself"
        if s.activity_source is ActivitySource.PROBE
        else "the Hub",
        due_at=_iso(due),
        due_in=due_in,
        kept_until=None if keep is None else _iso(keep.kept_until),
        kept_by=None if keep is None else keep.kept_by,
        keep_choices=tuple((c, label(c)) for c in choices(limit)),
    )


def rows(
    statuses: list[ServerStatus],
    now: datetime,
    sort: str = "due",
    store: StateStore | None = None,
) -> list[ServerRow]:
    """Rows, sorted: by when they become due (never last), by user, by idleness (most
    idle first) or by rule."""
    out = [server_row(s, now, store) for s in statuses]
    far = "9999"
    if sort == "user":
        out.sort(key=lambda r: (r.user, r.server))
    elif sort == "idle":
        out.sort(key=lambda r: (r.idle_seconds is None, -(r.idle_seconds or 0), r.user))
    elif sort == "rule":
        out.sort(key=lambda r: (r.rule, r.due_at or far, r.user))
    else:
        out.sort(key=lambda r: (r.due_at is None, r.due_at or far, r.user, r.server))
    return out
