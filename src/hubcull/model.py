"""Typed snapshots of the Hub's user and server JSON.

Everything hubcull decides rests on these records, so parsing is strict: a record
that cannot be read with confidence becomes a :class:`ModelError` for that one
record, and the caller skips it. Nothing is ever culled on the strength of a
guessed field. All timestamps become aware UTC datetimes here, in one place.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any

# Pending states the Hub reports ('spawn', 'stop', 'check' on start-up, 'rename' on 6.x).
# Any non-null value means "the Hub is busy with this server": never touch it.
KNOWN_PENDING = frozenset({"spawn", "stop", "check", "rename"})

_ISO_RE = re.compile(
    r"^(\d{4})-(\d{2})-(\d{2})[T ](\d{2}):(\d{2}):(\d{2})(\.\d{1,9})?(Z|[+-]\d{2}:?\d{2})?$",
    re.ASCII,
)


class ModelError(ValueError):
    """One record from the Hub could not be read; skip it, never guess."""


def parse_timestamp(value: Any, what: str = "timestamp") -> datetime | None:
    """Parse the Hub's ISO 8601 timestamps into aware UTC datetimes.

    The Hub writes UTC with a ``Z`` suffix and sometimes without microseconds;
    older Hubs and proxies may write ``+00:00`` or no zone at all (then it is UTC).
    ``None`` stays ``None`` (a server with no recorded activity yet).
    """
    if value is None:
        return None
    if not isinstance(value, str):
        raise ModelError(f"{what} is not a string: {type(value).__name__}")
    m = _ISO_RE.match(value.strip())
    if not m:
        raise ModelError(f"{what} is not an ISO 8601 time: {value[:40]!r}")
    year, month, day, hour, minute, second, frac, zone = m.groups()
    micro = int((frac[1:] + "000000")[:6]) if frac else 0
    try:
        dt = datetime(
            int(year),
            int(month),
            int(day),
            int(hour),
            int(minute),
            int(second),
            micro,
            tzinfo=timezone.utc,
        )
    except ValueError as e:
        raise ModelError(f"{what} is not a valid date: {value[:40]!r} ({e})") from None
    if zone and zone != "Z":
        digits = zone[1:].replace(":", "")
        hours, minutes = int(digits[:2]), int(digits[2:])
        if hours > 23 or minutes > 59:
            raise ModelError(f"{what} has an impossible UTC offset: {value[:40]!r}")
        offset = (1 if zone[0] == "+" else -1) * (hours * 60 + minutes)
        try:
            dt = dt - timedelta(minutes=offset)
        except OverflowError:
            raise ModelError(f"{what} is out of range in UTC: {value[:40]!r}") from None
    return dt


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


def format_timestamp(dt: datetime) -> str:
    """The Hub's own timestamp form (UTC, ``Z``), for logs and for the test Hub."""
    return dt.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@dataclass(frozen=True, slots=True)
class Server:
    """One server of a user, as the Hub saw it when it was listed."""

    name: str  # "" is the default server
    ready: bool
    pending: str | None
    started: datetime | None
    last_activity: datetime | None
    url: str | None = None
    # What the user chose at spawn: KubeSpawner's profile_list stores the profile's slug
    # as "profile" and the profile's options as further keys. Empty when the Hub says
    # nothing (or something that is not an object: it never decides a cull on its own).
    user_options: Mapping[str, Any] = field(default_factory=dict, compare=False)
    # The Hub's own JSON for this server: handed unchanged to a cull_arbiter_hook,
    # which was written against the raw model.
    raw: Mapping[str, Any] = field(default_factory=dict, compare=False, repr=False)

    @property
    def is_default(self) -> bool:
        return self.name == ""

    @property
    def activity_ref(self) -> datetime | None:
        """The moment idleness counts from: the last activity, or the start when there
        has been none yet (the Hub sets both at spawn; older records may lack one)."""
        return self.last_activity or self.started

    @property
    def profile(self) -> str | None:
        value = self.user_options.get("profile")
        return value if isinstance(value, str) else None


@dataclass(frozen=True, slots=True)
class User:
    """One user, with the servers the Hub reported as active (pending or ready)."""

    name: str
    # None when the token may not see the field: then any rule that needs it abstains.
    admin: bool | None
    created: datetime | None
    last_activity: datetime | None
    groups: tuple[str, ...] | None
    servers: Mapping[str, Server]
    raw: Mapping[str, Any] = field(default_factory=dict, compare=False, repr=False)

    @property
    def activity_ref(self) -> datetime | None:
        """The moment a user's inactivity counts from: their last activity, else their creation."""
        return self.last_activity or self.created

    def server_label(self, server_name: str) -> str:
        """How logs name a server: ``alice/`` for the default one, ``alice/gpu`` for a named one."""
        return server_label(self.name, server_name)


def server_label(user: str, server: str) -> str:
    """``alice/`` for a user's default server, ``alice/gpu`` for a named one."""
    return f"{user}/{server}"


class StopOutcome(enum.Enum):
    """What the Hub answered to a stop."""

    STOPPED = "stopped"  # 204: the Hub says it is stopped
    STOPPING = "stopping"  # 202: still stopping after the Hub's slow_stop_timeout
    GONE = "gone"  # 404: the user or server no longer exists

    @property
    def status(self) -> int:
        """The HTTP status the Hub answered."""
        return {"stopped": 204, "stopping": 202, "gone": 404}[self.value]


def _opt_str(obj: Mapping[str, Any], key: str, what: str) -> str | None:
    value = obj.get(key)
    if value is None or isinstance(value, str):
        return value
    raise ModelError(f"{what}.{key} is not a string: {type(value).__name__}")


def parse_server(name: Any, obj: Any, owner: str = "?") -> Server:
    """Read one entry of a user model's ``servers`` dict."""
    what = f"server {owner}/{name}"
    if not isinstance(name, str):
        raise ModelError(f"server name of {owner} is not a string")
    if not isinstance(obj, Mapping):
        raise ModelError(f"{what} is not an object: {type(obj).__name__}")
    pending = obj.get("pending")
    if pending is not None and not isinstance(pending, str):
        raise ModelError(f"{what}.pending is not a string: {type(pending).__name__}")
    if "ready" in obj:
        ready = obj["ready"]
        if not isinstance(ready, bool):
            raise ModelError(f"{what}.ready is not a boolean: {type(ready).__name__}")
    else:
        # Hubs before 0.9 signalled readiness by a url alone; anything that old
        # is out of scope, so a missing 'ready' means we cannot tell: not ready.
        ready = False
    return Server(
        name=name,
        ready=ready,
        pending=pending or None,
        started=parse_timestamp(obj.get("started"), f"{what}.started"),
        last_activity=parse_timestamp(obj.get("last_activity"), f"{what}.last_activity"),
        url=_opt_str(obj, "url", what),
        user_options=opts if isinstance(opts := obj.get("user_options"), Mapping) else {},
        raw=obj,
    )


def parse_user(obj: Any) -> User:
    """Read one user model from ``GET /users`` or ``GET /users/{name}``.

    ``servers`` must be present (the token needs ``read:servers``); without it we
    could not tell a running server from none at all, so the record is refused.
    """
    if not isinstance(obj, Mapping):
        raise ModelError(f"user record is not an object: {type(obj).__name__}")
    name = obj.get("name")
    if not isinstance(name, str) or not name:
        raise ModelError("user record has no name")
    what = f"user {name}"
    admin = obj.get("admin")
    if admin is not None and not isinstance(admin, bool):
        raise ModelError(f"{what}.admin is not a boolean: {type(admin).__name__}")
    groups_raw = obj.get("groups")
    groups: tuple[str, ...] | None
    if groups_raw is None:
        groups = None
    elif isinstance(groups_raw, list) and all(isinstance(g, str) for g in groups_raw):
        groups = tuple(groups_raw)
    else:
        raise ModelError(f"{what}.groups is not a list of names")
    servers_raw = obj.get("servers")
    if servers_raw is None:
        raise ModelError(f"{what} has no 'servers' (does the token have read:servers?)")
    if not isinstance(servers_raw, Mapping):
        raise ModelError(f"{what}.servers is not an object: {type(servers_raw).__name__}")
    servers = {sname: parse_server(sname, sobj, owner=name) for sname, sobj in servers_raw.items()}
    return User(
        name=name,
        admin=admin,
        created=parse_timestamp(obj.get("created"), f"{what}.created"),
        last_activity=parse_timestamp(obj.get("last_activity"), f"{what}.last_activity"),
        groups=groups,
        servers=servers,
        raw=obj,
    )


# --- what a single-user server says about itself (--check-kernels) ---------------


@dataclass(frozen=True, slots=True)
class KernelState:
    name: str
    execution_state: str
    last_activity: datetime | None
    connections: int

    @property
    def busy(self) -> bool:
        return self.execution_state == "busy"


@dataclass(frozen=True, slots=True)
class Evidence:
    """What one server said about itself when we asked."""

    probed_at: datetime
    last_activity: datetime | None  # the server's own view (jupyter_server's last_activity())
    kernels: tuple[KernelState, ...] = ()
    terminals: tuple[datetime | None, ...] = ()
    cpu_percent: float | None = None

    @property
    def busy_kernels(self) -> tuple[KernelState, ...]:
        return tuple(k for k in self.kernels if k.busy)

    def newest_activity(self) -> datetime | None:
        times = [self.last_activity, *(k.last_activity for k in self.kernels), *self.terminals]
        present = [t for t in times if t is not None]
        return max(present) if present else None

    def describe(self) -> str:
        """``2 kernels (1 busy), 1 terminal, own activity 3m ago`` style summary."""
        parts = []
        if self.kernels:
            busy = len(self.busy_kernels)
            parts.append(
                f"{len(self.kernels)} kernel{'s' if len(self.kernels) != 1 else ''}"
                + (f" ({busy} busy)" if busy else ", all idle")
            )
        else:
            parts.append("no kernels")
        if self.terminals:
            parts.append(f"{len(self.terminals)} terminal{'s' if len(self.terminals) != 1 else ''}")
        if self.cpu_percent is not None:
            parts.append(f"CPU {self.cpu_percent:.0f}%")
        return ", ".join(parts)
