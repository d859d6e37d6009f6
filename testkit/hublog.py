"""The Hub's own access log, read as requests: who asked what, when, and for how long.

The Hub writes one line per request it served, with its duration. Tests and
benchmarks read it to see what a culler did from the Hub's side: how many requests of
each kind, and how many were in the Hub's hands at once.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import unquote

from testkit.overlap import time_at_each_count

# --- the Hub's access log ----------------------------------------------------------------

_ACCESS = re.compile(
    r"^\[[A-Z] (?P<when>\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3}) JupyterHub log:\d+\] "
    r"(?P<status>\d{3}) (?P<method>[A-Z]+) (?P<uri>\S+) "
    r"\((?:(?P<who>[^@()\s]*)@)?[^()]*\) (?P<ms>[\d.]+)ms$"
)


# The Hub's word that a server is gone (also for a stop it answered 202 long before).
_STOPPED = re.compile(
    r"^\[[A-Z] (?P<when>\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3}) JupyterHub [a-z]+:\d+\] "
    r"User (?P<user>\S+) server took (?P<s>[\d.]+) seconds to stop$"
)


def _when(text: str) -> float:
    return datetime.strptime(text, "%Y-%m-%d %H:%M:%S.%f").timestamp()


@dataclass(frozen=True, slots=True)
class HubRequest:
    """One line of the Hub's access log: a request, when it ended, who sent it."""

    end: float  # wall clock (epoch seconds) when the Hub finished it
    ms: float  # how long the Hub took
    status: int
    method: str
    uri: str  # e.g. /hub/api/users/alice/server
    who: str  # the user or service the token belongs to ("" without a token)

    @property
    def start(self) -> float:
        return self.end - self.ms / 1000

    @property
    def path(self) -> str:
        return self.uri.split("?", 1)[0]

    @property
    def user(self) -> str:
        """The user a ``/hub/api/users/<name>/...`` request is about ("" for others)."""
        parts = self.path.split("/")
        return unquote(parts[4]) if len(parts) > 4 else ""

    @property
    def kind(self) -> str:
        """list / user / stop / activity / other: what a culler's request was for."""
        path = self.path
        if not path.startswith("/hub/api/users"):
            return "other"
        rest = path[len("/hub/api/users") :]
        if rest in ("", "/"):
            return "list"
        if self.method == "DELETE" and ("/server" in rest):
            return "stop"
        if rest.endswith("/activity"):
            return "activity"
        if self.method == "GET" and rest.count("/") == 1:
            return "user"
        return "other"


def parse_access_line(line: str) -> HubRequest | None:
    m = _ACCESS.match(line)
    if m is None:
        return None
    return HubRequest(
        end=_when(m["when"]),
        ms=float(m["ms"]),
        status=int(m["status"]),
        method=m["method"],
        uri=m["uri"],
        who=m["who"] or "",
    )


class HubLog:
    """Reads the Hub's log incrementally and keeps every API request it records."""

    def __init__(self, path: Path):
        self.path = path
        self._offset = 0
        self._partial = b""
        self.requests: list[HubRequest] = []
        self.stopped: list[tuple[float, str]] = []  # (when, user): a server gone

    def refresh(self) -> list[HubRequest]:
        try:
            with open(self.path, "rb") as f:
                f.seek(self._offset)
                chunk = f.read()
        except FileNotFoundError:
            return self.requests
        self._offset += len(chunk)
        data = self._partial + chunk
        lines = data.split(b"\n")
        self._partial = lines.pop()
        for raw in lines:
            if b" seconds to stop" in raw:
                m = _STOPPED.match(raw.decode(errors="replace").rstrip("\r"))
                if m is not None:
                    self.stopped.append((_when(m["when"]), m["user"]))
                continue
            if b" JupyterHub log:" not in raw:
                continue
            req = parse_access_line(raw.decode(errors="replace").rstrip("\r"))
            if req is not None:
                self.requests.append(req)
        return self.requests

    def gone(self, users: Iterable[str], since: float) -> dict[str, float]:
        """user -> when the Hub said their server was gone, for these users, since a
        wall-clock moment."""
        wanted = set(users)
        self.refresh()
        out: dict[str, float] = {}
        for when, user in self.stopped:
            if when >= since and user in wanted:
                out.setdefault(user, when)
        return out

    def mark(self) -> int:
        """An index into :attr:`requests`: pass it as ``since`` to look only at what follows."""
        return len(self.refresh())

    def by(self, who: str, since: int = 0) -> list[HubRequest]:
        return [r for r in self.refresh()[since:] if r.who == who]


def in_flight(requests: Sequence[HubRequest]) -> dict[str, Any]:
    """How many of these requests the Hub had in hand at once, from its log: the
    time-weighted mean while any was, the most, and the share of that time at each count."""
    spent = time_at_each_count((r.start, r.end) for r in requests)
    total = sum(spent.values())
    if not total:
        return {"mean": None, "max": 0, "share": {}}
    return {
        "mean": round(sum(k * v for k, v in spent.items()) / total, 2),
        "max": max(spent),
        "share": {k: round(v / total, 4) for k, v in sorted(spent.items())},
    }
