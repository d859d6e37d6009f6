"""The last culls, for the admin page: what went, when, by which rule, and why."""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from ..events import StopAnswered, StopLost, UserDeleted
from ..model import StopOutcome, server_label


@dataclass(frozen=True, slots=True)
class Cull:
    at: datetime
    user: str
    server: str | None  # None: the user was deleted
    action: str  # stop, remove, delete-user, stop-lost
    rule: str | None
    reason: str
    hub_status: int | None

    @property
    def subject(self) -> str:
        return self.user if self.server is None else server_label(self.user, self.server)


class RecentCulls:
    """A bounded memory of the latest culls, newest first."""

    def __init__(self, size: int = 100) -> None:
        self._culls: deque[Cull] = deque(maxlen=size)

    def __iter__(self) -> Any:
        return iter(reversed(self._culls))

    def __len__(self) -> int:
        return len(self._culls)

    def handlers(self) -> dict[type, Callable[[Any], None]]:
        return {StopAnswered: self._answered, UserDeleted: self._deleted, StopLost: self._lost}

    def _answered(self, e: StopAnswered) -> None:
        v = e.verdict
        if v is None or e.outcome is StopOutcome.GONE:
            return
        status = e.outcome.status
        self._culls.append(Cull(e.at, e.user, e.server, v.action.value, v.rule, v.reason, status))

    def _deleted(self, e: UserDeleted) -> None:
        v = e.verdict
        self._culls.append(Cull(e.at, e.user.name, None, "delete-user", v.rule, v.reason, 204))

    def _lost(self, e: StopLost) -> None:
        reason = f"still running after the Hub accepted {e.attempts} stop(s)"
        self._culls.append(Cull(e.at, e.user, e.server, "stop-lost", None, reason, None))
