"""The audit log (``--audit-log=PATH``): one JSON line per cull, user deletion and lost stop.

It answers "why was my server stopped at 14:02?" long after the fact: who, which
server, what hubcull did, under which rule, why in words, the activity it counted from
and who reported it, the deadline, and what the Hub answered. Append-only; safe with
logrotate: the file is reopened when it is moved or removed (the standard library's
WatchedFileHandler checks before every line). Nothing here ever holds a token: the
lines are built from the events' fields, which hold none.
"""

from __future__ import annotations

import json
import logging
import logging.handlers
from collections.abc import Callable
from datetime import datetime
from typing import Any

from .. import __version__
from ..events import Culling, KeepChanged, StopAnswered, StopLost, UserDeleted
from ..model import StopOutcome, format_timestamp
from ..policy import Verdict

KEYS = (
    "time",
    "user",
    "server",
    "action",
    "rule",
    "reason",
    "last_activity",
    "activity_source",
    "due_at",
    "hub_status",
    "version",
    "dry_run",
)


def _ts(value: datetime | None) -> str | None:
    return None if value is None else format_timestamp(value)


def audit_line(
    at: datetime,
    user: str,
    server: str | None,
    action: str,
    verdict: Verdict | None,
    hub_status: int | None,
    dry_run: bool,
    reason: str | None = None,
) -> dict[str, Any]:
    """One audit record; every key is always there (null when unknown)."""
    return {
        "time": _ts(at),
        "user": user,
        "server": server,
        "action": action,
        "rule": None if verdict is None else verdict.rule,
        "reason": reason if reason is not None else (None if verdict is None else verdict.reason),
        "last_activity": None if verdict is None else _ts(verdict.last_activity),
        "activity_source": None if verdict is None else verdict.source.value,
        "due_at": None if verdict is None else _ts(verdict.due_at),
        "hub_status": hub_status,
        "version": __version__,
        "dry_run": dry_run,
    }


class AuditLog:
    """Writes audit lines to a file, reopening it after a rotation."""

    def __init__(self, path: str) -> None:
        # A logger of its own, never propagated: the audit file holds audit lines only.
        self._log = logging.getLogger(f"hubcull.audit.{id(self)}")
        self._log.propagate = False
        self._log.setLevel(logging.INFO)
        self._handler = logging.handlers.WatchedFileHandler(path, encoding="utf-8")
        self._handler.setFormatter(logging.Formatter("%(message)s"))
        self._log.addHandler(self._handler)

    def close(self) -> None:
        self._log.removeHandler(self._handler)
        self._handler.close()

    def handlers(self) -> dict[type, Callable[[Any], None]]:
        return {
            StopAnswered: self._answered,
            Culling: self._dry_run,
            UserDeleted: self._deleted,
            StopLost: self._lost,
            KeepChanged: self._keep,
        }

    def write(self, record: dict[str, Any]) -> None:
        self._log.info("%s", json.dumps(record, sort_keys=False))

    def _answered(self, e: StopAnswered) -> None:
        if e.verdict is None or e.outcome is StopOutcome.GONE:
            return  # a stop sent again is recorded by its StopLost; a gone server was not culled
        status = e.outcome.status
        self.write(
            audit_line(e.at, e.user, e.server, e.verdict.action.value, e.verdict, status, False)
        )

    def _dry_run(self, e: Culling) -> None:
        if not e.dry_run:
            return  # recorded when the Hub answers
        server = None if e.server is None else e.server.name
        action = e.verdict.action.value
        self.write(audit_line(e.at, e.user.name, server, action, e.verdict, None, True))

    def _deleted(self, e: UserDeleted) -> None:
        self.write(audit_line(e.at, e.user.name, None, "delete-user", e.verdict, 204, False))

    def _keep(self, e: KeepChanged) -> None:
        if e.kept_until is None:
            action, reason = "keep-cancelled", f"keep cancelled by {e.by}"
        else:
            action, reason = "keep", f"kept until {_ts(e.kept_until)} by {e.by}"
        record = audit_line(e.at, e.user, e.server, action, None, None, False, reason)
        record["due_at"] = _ts(e.kept_until)
        self.write(record)

    def _lost(self, e: StopLost) -> None:
        what = "left to an operator" if e.exhausted else "sent again"
        reason = f"still running after the Hub accepted {e.attempts} stop(s); {what}"
        self.write(audit_line(e.at, e.user, e.server, "stop-lost", None, None, False, reason))
