"""How many stops to have in flight: as many as make the Hub go faster, and no more.

A stop costs the Hub about 16 ms of its single event loop, whatever the client's
concurrency, when the spawner itself is quick. Ten stops in flight then do not stop
servers any faster than two; they only make everyone else's requests (users'
page loads, the proxy, other services) wait behind a queue of ten. But with a slow
spawner (a Kubernetes pod takes seconds to go), the Hub mostly waits, and many
stops in flight are what make a mass cull fast.

So the limit adapts, the way TCP Vegas sizes its window. It starts at one stop and
grows by one for each answer that shows no queue. From the fastest recent
stop (the Hub's own cost, no queue) and the current one, estimate how many of ours
wait in the Hub's queue; keep that between ALPHA and BETA. A Hub that queues gets
fewer stops at once; a Hub that waits on its spawners gets more, up to the cap.
"""

from __future__ import annotations

import asyncio
from collections import deque

ALPHA = 0.3  # fewer of our stops than this queued in the Hub: room for one more
BETA = 0.6  # more than this: take one away


class AdaptiveLimit:
    """A concurrency limit between ``floor`` and ``cap``, steered by latency samples. Pure."""

    def __init__(self, cap: int, floor: int = 1, window: int = 100):
        if cap < 1:
            raise ValueError("cap must be at least 1")
        self.cap = cap
        self.floor = max(1, min(floor, cap))
        # Start low and earn more: a Hub that queues never sees a burst of `cap` stops.
        self.limit = self.floor
        self._recent: deque[float] = deque(maxlen=window)
        self._smoothed: float | None = None  # recent latency, smoothed (EWMA)

    @property
    def base(self) -> float | None:
        """The fastest recent stop: what one costs with nobody ahead of it."""
        return min(self._recent) if self._recent else None

    def observe(self, latency: float, in_flight: int) -> int:
        """Feed one completed stop's latency (seconds) and how many were in flight with it."""
        if latency <= 0:
            return self.limit
        self._recent.append(latency)
        base = self.base
        assert base is not None
        # One lucky stop says little: steer on the smoothed latency.
        self._smoothed = latency if self._smoothed is None else 0.8 * self._smoothed + 0.2 * latency
        queued = in_flight * (1.0 - base / self._smoothed)
        if queued > BETA:
            self.limit = max(self.floor, self.limit - 1)
        elif queued < ALPHA and in_flight >= self.limit:
            # Only grow when the limit is what holds us back.
            self.limit = min(self.cap, self.limit + 1)
        return self.limit


class AdaptiveGate:
    """An async semaphore whose size follows an :class:`AdaptiveLimit`."""

    def __init__(self, limit: AdaptiveLimit):
        self.limit = limit
        self.in_flight = 0
        self._changed = asyncio.Condition()

    async def acquire(self) -> int:
        async with self._changed:
            await self._changed.wait_for(lambda: self.in_flight < self.limit.limit)
            self.in_flight += 1
            return self.in_flight

    async def release(self, latency: float | None, in_flight: int) -> None:
        async with self._changed:
            self.in_flight -= 1
            if latency is not None:
                self.limit.observe(latency, in_flight)
            self._changed.notify_all()
