"""When each running server becomes due: so hubcull wakes at the deadline, not a pass later.

The incumbent looks every ``cull_every`` seconds, so an idle server runs on for up to
``cull_every`` past its deadline (half an hour at the common defaults). A full pass
already computes every kept server's deadline (``last_activity + timeout``,
``started + max_age``, or the busy cap); this queue keeps those that fall before the
next full pass, and the engine wakes at each one, re-reads just that user and culls if
the server is still due. Servers due later are left to the next pass, which computes
their deadlines afresh, so the queue stays small: the servers due within one interval.

Pure bookkeeping, no clock: callers pass the times.
"""

from __future__ import annotations

import heapq
import itertools
from datetime import datetime

Key = tuple[str, str]  # (user, server name), or (user, USER) for the user's own deadline
# The "server" of a user's own deadline (their deletion with --cull-users): no server
# name can hold a NUL character.
USER = "\0"


class DeadlineQueue:
    """Deadlines earliest first; a server has at most one live entry."""

    def __init__(self) -> None:
        self._heap: list[tuple[datetime, int, Key]] = []
        self._live: dict[Key, datetime] = {}
        self._pushed: dict[Key, datetime] = {}  # when each live entry was last pushed
        self._seq = itertools.count()

    def __len__(self) -> int:
        return len(self._live)

    def push(self, key: Key, due_at: datetime, now: datetime) -> None:
        self._pushed[key] = now
        if self._live.get(key) == due_at:
            return
        self._live[key] = due_at
        heapq.heappush(self._heap, (due_at, next(self._seq), key))

    def discard(self, key: Key) -> None:
        self._live.pop(key, None)
        self._pushed.pop(key, None)

    def retain(self, listed: set[Key], since: datetime) -> None:
        """After a complete listing that began at ``since``: forget the deadlines of
        servers it did not list (they stopped), except those pushed after it began."""
        for key in [k for k, at in self._pushed.items() if k not in listed and at < since]:
            self.discard(key)

    def _drop_stale(self) -> None:
        while self._heap:
            due_at, _, key = self._heap[0]
            if self._live.get(key) == due_at:
                return
            heapq.heappop(self._heap)

    def next_due(self) -> datetime | None:
        self._drop_stale()
        return self._heap[0][0] if self._heap else None

    def due(self, now: datetime) -> list[Key]:
        """Every server whose deadline has come, earliest first; they stay queued."""
        return [key for at, key in sorted((at, key) for key, at in self._live.items() if at <= now)]
