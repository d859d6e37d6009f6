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

Key = tuple[str, str]  # (user, server name)


class DeadlineQueue:
    """Deadlines earliest first; a server has at most one live entry."""

    def __init__(self) -> None:
        self._heap: list[tuple[datetime, int, Key]] = []
        self._live: dict[Key, datetime] = {}
        self._seq = itertools.count()
        self._touched: set[Key] = set()

    def __len__(self) -> int:
        return len(self._live)

    def __contains__(self, key: Key) -> bool:
        return key in self._live

    def push(self, key: Key, due_at: datetime) -> None:
        self._touched.add(key)
        if self._live.get(key) == due_at:
            return
        self._live[key] = due_at
        heapq.heappush(self._heap, (due_at, next(self._seq), key))

    def discard(self, key: Key) -> None:
        self._live.pop(key, None)

    def begin_pass(self) -> None:
        self._touched.clear()

    def end_pass(self) -> int:
        """After a complete pass: forget deadlines of servers that pass no longer listed."""
        stale = [key for key in self._live if key not in self._touched]
        for key in stale:
            del self._live[key]
        return len(stale)

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

    def pop_due(self, now: datetime) -> list[Key]:
        """Every server whose deadline has come, earliest first."""
        out: list[Key] = []
        while True:
            self._drop_stale()
            if not self._heap or self._heap[0][0] > now:
                return out
            _, _, key = heapq.heappop(self._heap)
            del self._live[key]
            out.append(key)

    def clear(self) -> None:
        self._heap.clear()
        self._live.clear()
