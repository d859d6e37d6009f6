"""How many stops to have in flight: as many as make the Hub go faster, and no more.

A stop costs the Hub about 16 ms of its single event loop, whatever the client's
concurrency, when the spawner itself is quick. Ten stops in flight then do not stop
servers any faster than one; they only make everyone else's requests (users' page
loads, the proxy, other services) wait behind a queue of ten. But with a slow spawner
(a Kubernetes pod takes seconds to go, and some take much longer than others), the Hub
mostly waits, and many stops in flight are what make a mass cull fast.

So the limit climbs a hill: throughput. By Little's law, with ``n`` stops always in
flight and a mean latency ``L``, stops complete at ``n / L`` per second. The limit
starts at one stop, measures that rate over a window of answers, and tries one more.
It keeps the step if the rate rose by at least 30 % of what a perfectly parallel
spawner would give (``n / (n - 1)``), and goes back otherwise. A Hub that queues
gains nothing from a second stop, so the limit returns to one and waits longer
before each new try. A Hub that waits on its spawners gains at every step, up to the
cap, however much the stop times of individual servers vary.

Latency alone (TCP Vegas: the fastest stop against the current ones) cannot tell a
queue from spawners whose stop times vary: on Kubernetes it would keep one stop in
flight. The rate can.
"""

from __future__ import annotations

import asyncio

MIN_WINDOW = 4  # answers at one level before judging it (and at least one per stop in flight)
GAIN = 0.3  # share of the ideal gain from one more stop in flight that justifies it
# After a try upwards that did not pay, wait this long (seconds of stopping) before the
# next, doubling up to the maximum: a Hub that queues sees a second stop only now and
# then, and a Hub whose spawners slowed down is found out again within seconds.
FIRST_HOLD = 0.5
MAX_HOLD = 16.0


class AdaptiveLimit:
    """A concurrency limit between ``floor`` and ``cap``, steered by throughput. Pure."""

    def __init__(self, cap: int, floor: int = 1):
        if cap < 1:
            raise ValueError("cap must be at least 1")
        self.cap = cap
        self.floor = max(1, min(floor, cap))
        # Start low and earn more: a Hub that queues never sees a burst of `cap` stops.
        self.limit = self.floor
        self._latencies: list[float] = []  # this window's answers, at the current limit
        self._rate: dict[int, float] = {}  # last measured stops per second at each level
        self._hold = 0.0  # seconds of stopping to wait before the next try upwards
        self._backoff = FIRST_HOLD  # the hold after the next failed try

    def rate(self, level: int) -> float | None:
        """Stops per second last measured with ``level`` in flight."""
        return self._rate.get(level)

    def observe(self, latency: float, in_flight: int) -> int:
        """Feed one completed stop: its latency (seconds), and how many were in flight
        when it was sent. Only answers sent at the current limit say what it yields."""
        if latency <= 0 or in_flight != self.limit:
            return self.limit
        self._latencies.append(latency)
        n = self.limit
        if len(self._latencies) < max(MIN_WINDOW, n):
            return n
        total = sum(self._latencies)
        rate = n * len(self._latencies) / total
        spent = total / n  # how long the window took, with n stops always in flight
        self._latencies = []
        self._rate[n] = rate
        below = self._rate.get(n - 1)
        if n > self.floor and below is not None and rate < below * (1 + GAIN / (n - 1)):
            # One stop fewer did as well: this one only queued. Step back, try later.
            self.limit = n - 1
            self._hold = self._backoff
            self._backoff = min(MAX_HOLD, 2 * self._backoff)
        elif self._hold > 0:
            self._hold -= spent
        elif n < self.cap:
            self.limit = n + 1
            if below is not None:
                self._backoff = FIRST_HOLD  # the last step up paid off: climb freely again
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
