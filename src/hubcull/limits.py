"""How many stops to have in flight: as many as make the Hub go faster, and no more.

A stop costs the Hub a fixed slice of its single event loop, whatever the client's
concurrency, when the spawner itself is quick (docs/benchmarks.md, "Figures the design
rests on"). Ten stops in flight then do not stop
servers any faster than one; they only make everyone else's requests (users' page
loads, the proxy, other services) wait behind a queue of ten. But with a slow spawner
(a Kubernetes pod takes seconds to go, and some take much longer than others), the Hub
mostly waits, and many stops in flight are what make a mass cull fast.

So the limit climbs a hill: throughput. By Little's law, with ``n`` stops always in
flight and a mean latency ``L``, stops complete at ``n / L`` per second. The limit
starts at one stop, measures that rate over a window of answers, and tries more: twice
as many at first (1, 2, 4, 8: pods are reached in a few windows, not ten), one more
once a step has failed. It keeps a step if the rate rose by at least half of what
perfectly parallel stops would give (``n / m`` from ``m`` to ``n``), and goes back
otherwise. A Hub that queues
gains nothing from a second stop, so the limit returns to one and waits longer
before each new try. (On a machine whose cores are busy with other work, a second
stop does gain some, as the Hub then always has work when it gets a core; asking for
half the ideal gain keeps such gains from lifting the limit, docs/benchmarks.md says
by how much.) A Hub that waits on its
spawners gains at every step, up to the cap, however much the stop times of
individual servers vary.

A rate measured over a few answers is noisy on a loaded machine: a slow patch while
one stop was in flight makes two look like a gain. So the hill is walked both ways:
once settled, the limit also tries one stop fewer now and then, and stays there when
it stops servers as fast. A limit lifted by noise comes back down, and a cap earned
by slow pods is given up when the pods get quick. Tries that fail are spaced further
and further apart, until the settled level's own rate moves (by half or by double):
then the Hub has changed, and the limit tries again at once.

Latency alone (TCP Vegas: the fastest stop against the current ones) cannot tell a
queue from spawners whose stop times vary: on Kubernetes it would keep one stop in
flight. The rate can.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

# A level is judged on a window of answers: at least one per stop in flight and
# MIN_WINDOW in all (pods' stop times vary: 0.5 to 2.5 s), over at least MIN_WINDOW_S
# of stopping (quick stops on a loaded machine: a 50 ms hiccup must not decide).
MIN_WINDOW = 8
MIN_WINDOW_S = 0.12
GAIN = 0.5  # share of the ideal gain of a step, m to n in flight (n / m), that justifies it
# After a try (up or down) that did not pay, wait this long (seconds of stopping) before
# the next try that way, doubling up to the maximum. Each try up on a Hub that queues
# puts a second stop ahead of its users' requests, so they are rare; a change of pace
# (below) is what brings the next try at once when spawners slow down or speed up.
FIRST_HOLD = 2.0
MAX_HOLD = 64.0
# A settled level whose rate moved by this factor either way ends the hold at once.
SHIFT = 2.0
UP, DOWN = 1, -1


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
        self._from: int | None = None  # while a level is on trial: the level it left
        self._doubling = True  # each try up doubles the limit, until one does not pay
        self._next = UP  # which way the next try goes
        self._hold = 0.0  # seconds of stopping to wait before the next try
        self._backoff = {UP: FIRST_HOLD, DOWN: FIRST_HOLD}  # the hold after a failed try
        self._rate_when_held: float | None = None  # the settled level's rate at that time

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
        if not self._window_full(n):
            return n
        total = sum(self._latencies)
        spent = total / n  # how long the window took, with n stops always in flight
        self._rate[n] = n * len(self._latencies) / total
        self._latencies = []
        if self._from is not None:
            # A try: both rates are fresh, the window just before the step and this one.
            m = self._from
            way = UP if n > m else DOWN
            more_pays = self._pays(max(n, m), min(n, m))
            self._settle(way, kept=more_pays if way == UP else not more_pays, back=m)
        else:
            self._hold -= spent
            held = self._rate_when_held
            if held and not held / SHIFT < self._rate[n] < held * SHIFT:
                # The Hub or its spawners changed pace: what the failed tries taught
                # no longer holds (a pod-bound Hub whose stops got quick must come down
                # now, not after minutes of queued stops; pods that got slow are
                # climbed to by doubling again).
                self._hold = 0
                self._backoff = {UP: FIRST_HOLD, DOWN: FIRST_HOLD}
                self._doubling = True
            if self._hold <= 0:
                self._try()
        return self.limit

    def _window_full(self, n: int) -> bool:
        """Enough answers at this level to judge it: at least one per stop in flight,
        MIN_WINDOW in all, over MIN_WINDOW_S of stopping."""
        k = len(self._latencies)
        return k >= max(MIN_WINDOW, n) and sum(self._latencies) / n >= MIN_WINDOW_S

    def _pays(self, hi: int, lo: int) -> bool:
        """Whether ``hi`` in flight beat ``lo`` by enough to be worth its queue: by
        GAIN of what perfectly parallel stops would give (``hi / lo``)."""
        return self._rate[hi] >= self._rate[lo] * (1 + GAIN * (hi / lo - 1))

    def _settle(self, way: int, kept: bool, back: int) -> None:
        self._from = None
        if kept:
            # The step paid (up: more stops per second; down: as many with fewer in
            # flight): go on the same way at once, unless this is the end of the road
            # (then what the step taught holds for a while).
            self._backoff[way] = FIRST_HOLD
            if self._can(way):
                self._next = way
                self._try()
                return
        else:
            self.limit = back
            self._doubling = False
            self._backoff[way] = min(MAX_HOLD, 2 * self._backoff[way])
        # Settled: the next try goes the other way if it can, after that way's hold,
        # unless the pace at this level moves first.
        self._next = -way if self._can(-way) else way
        self._hold = self._backoff[self._next]
        self._rate_when_held = self._rate.get(self.limit)

    def _can(self, way: int) -> bool:
        return self.floor <= self.limit + way <= self.cap

    def _try(self) -> None:
        self._rate_when_held = None
        way = self._next if self._can(self._next) else -self._next
        if self._can(way):
            self._from = self.limit
            step = self.limit if way == UP and self._doubling else 1
            self.limit = min(self.cap, self.limit + step) if way == UP else self.limit - 1


@dataclass
class Slot:
    """A place in an :class:`AdaptiveGate`, held for one request."""

    in_flight: int  # places taken, this one included, when it was granted
    measured: bool  # a stop, whose latency feeds the limit (a page read is not)
    clean: bool  # nothing unmeasured was in flight when it was granted
    unmeasured_seen: int  # unmeasured places granted so far, at that moment
    timings: list[float] = field(default_factory=list)  # each attempt's round trip


class AdaptiveGate:
    """An async semaphore whose size follows an :class:`AdaptiveLimit`.

    Page reads take places too (a mass cull must not have a page read on top of its
    stops) but say nothing of what a stop costs. A stop is judged only if it never
    shared the gate with one: at two places, a stop beside a page read is one stop in
    flight, and counting it as two would make a second stop look like a gain.
    """

    def __init__(
        self,
        limit: AdaptiveLimit,
        on_change: Callable[[int, int, Mapping[int, float]], None] | None = None,
    ):
        self.limit = limit
        # Told of each change of the limit: (before, after, stops/s measured at each).
        self.on_change = on_change
        self.in_flight = 0
        self._unmeasured = 0  # places held now by page reads
        self._unmeasured_seen = 0  # places ever granted to them
        self._changed = asyncio.Condition()

    async def acquire(self, measured: bool = True) -> Slot:
        async with self._changed:
            await self._changed.wait_for(lambda: self.in_flight < self.limit.limit)
            self.in_flight += 1
            if not measured:
                self._unmeasured += 1
                self._unmeasured_seen += 1
            return Slot(self.in_flight, measured, self._unmeasured == 0, self._unmeasured_seen)

    async def release(self, slot: Slot) -> None:
        async with self._changed:
            self.in_flight -= 1
            if not slot.measured:
                self._unmeasured -= 1
            elif slot.timings and slot.clean and slot.unmeasured_seen == self._unmeasured_seen:
                # The last attempt's round trip: a 202 took the Hub's slow_stop_timeout,
                # the spawner, not the Hub, was slow.
                before = self.limit.limit
                after = self.limit.observe(slot.timings[-1], slot.in_flight)
                if after != before and self.on_change is not None:
                    rates = {n: self.limit.rate(n) for n in sorted({before, after})}
                    self.on_change(before, after, {n: r for n, r in rates.items() if r is not None})
            self._changed.notify_all()

    @asynccontextmanager
    async def place(self, measured: bool = True) -> AsyncIterator[Slot]:
        """Hold a place for the body of the ``async with``; a stop records its round
        trips in ``slot.timings``."""
        slot = await self.acquire(measured)
        try:
            yield slot
        finally:
            await self.release(slot)
