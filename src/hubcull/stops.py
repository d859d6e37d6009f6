"""What hubcull asked the Hub to stop, and whether it really stopped.

The Hub's answer to a stop proves little: 202 means "still stopping", and even 204
can hide a failure (JupyterHub swallows errors while it removes a server's proxy
route, then answers 204 with the server still running). A culler that believes
the answer leaves servers running and paid for (jupyterhub-idle-culler#77).

So every stop is written in a ledger, and every later sighting of that server is
judged against it: gone (confirmed), still stopping (stuck after a while), running
as if never stopped (the stop failed: stop it again, loudly), or started anew by
its user after our stop (not ours any more). Pure bookkeeping: no I/O, no clock.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import datetime, timedelta

from .model import Server


class Sighting(enum.Enum):
    GONE = "gone"  # the stop took effect
    STOPPING = "stopping"  # the Hub is still stopping it
    STUCK = "stuck"  # still stopping long after we asked: say so, once
    FAILED = "failed"  # running as if never stopped: the stop was lost
    RESTARTED = "restarted"  # its user started it again after our stop: not ours


@dataclass
class StopRecord:
    user: str
    server: str
    remove: bool
    first_at: datetime
    last_at: datetime
    attempts: int = 1
    stuck_reported: bool = False
    operator_alerted: bool = False  # stopped max_attempts times without effect: said so

    @property
    def subject(self) -> str:
        return f"{self.user}/{self.server}"


class StopLedger:
    """Stops awaiting confirmation; bounded by the stops in flight, not by the Hub's size."""

    def __init__(self, max_attempts: int = 3, stuck_after: float = 300.0):
        self.max_attempts = max_attempts
        self.stuck_after = timedelta(seconds=stuck_after)
        self._records: dict[tuple[str, str], StopRecord] = {}

    def records(self) -> list[StopRecord]:
        return list(self._records.values())

    def get(self, user: str, server: str) -> StopRecord | None:
        return self._records.get((user, server))

    def record(self, user: str, server: str, remove: bool, now: datetime) -> StopRecord:
        """A stop was sent (and answered 202 or 204)."""
        rec = self._records.get((user, server))
        if rec is None:
            rec = self._records[(user, server)] = StopRecord(user, server, remove, now, now)
        else:
            rec.attempts += 1
            rec.last_at = now
            rec.remove = rec.remove or remove
        return rec

    def forget(self, user: str, server: str) -> None:
        self._records.pop((user, server), None)

    def judge(self, rec: StopRecord, server: Server | None, now: datetime) -> Sighting:
        """What a fresh look at a server we stopped means (None: it is not listed)."""
        if server is None:
            return Sighting.GONE
        if server.pending == "stop":
            if now - rec.first_at >= self.stuck_after and not rec.stuck_reported:
                return Sighting.STUCK
            return Sighting.STOPPING
        if server.pending:
            # Spawning (or renamed) since: its user wants it.
            return Sighting.RESTARTED
        if server.started is not None and server.started > rec.last_at:
            return Sighting.RESTARTED
        if server.ready:
            return Sighting.FAILED
        return Sighting.STOPPING

    def exhausted(self, rec: StopRecord) -> bool:
        return rec.attempts >= self.max_attempts

    def retain(self, listed: set[tuple[str, str]], since: datetime) -> None:
        """After a complete listing that began at ``since``: a stopped server it did not
        list is gone, so its stop is confirmed. A stop sent after the listing began
        stays: the listing may have read that user before the stop."""
        self._records = {
            key: rec for key, rec in self._records.items() if key in listed or rec.last_at >= since
        }
