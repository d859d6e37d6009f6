"""How many stops to have in flight: as many as the Hub's own loop takes without making
everyone else wait, and no more.

JupyterHub serves every request on one event loop. A stop costs that loop a slice of
work (docs/benchmarks.md, "Figures the design rests on") and, on Kubernetes, seconds
of waiting on the pod, during which the loop is free for others. How long a stop
takes therefore says little about the Hub: it mixes the loop's work with the pod's
waiting, and only the loop's part makes other users wait. So the limit asks the Hub
directly. While stops wait for a place, the gate times a request of its own that
costs the Hub next to nothing (``GET /hub/api/``, the version: no token, no database)
a few times a second. Its round trip, over the lowest one seen recently, is how long
the Hub's loop kept it queued.

Little's law turns that delay into what matters: with our requests answered at ``X``
per second and a queueing delay of ``d`` each, ``X * d`` of them wait in the Hub's
queue on average (TCP Vegas' estimate of packets queued in the network, with the probe
in place of the packets' own round trips). The limit keeps that at most ``QUEUE``,
half a request: about what a culler sending one quick stop after another makes the
Hub hold (docs/benchmarks.md, "Figures the design rests on").

- Quick spawners: the Hub is the bottleneck, one stop already keeps its loop busy,
  and the queue a second one would add rules it out: the limit stays at one.
- Slow pods: the loop waits, the probe goes through at once whatever the pods'
  stop times, and the limit doubles each window up to the cap.
- In between (stops of a fraction of a second) the limit settles where the queue
  it causes reaches ``QUEUE``, and moves when the pods' pace moves.

To choose a new level the queue is taken to grow with the square of the stops in
flight (throughput and delay each grow with them while the Hub waits on its pods);
a Hub that queues grows it faster, and shows it at the next window. Coming down
needs a queue over ``QUEUE``; going up needs the predicted one under ``CLIMB``, half
of it: a limit at the edge does not go up and down at every window of noise. A rise
that the very next window takes back was let in by noise (a window in which the probes
happened to find the Hub free): further rises wait a few windows, longer each time,
unless the Hub gets far freer meanwhile (the pods slowed down).

:class:`AdaptiveLimit` is the pure state machine (no I/O, no clock: times are given);
:class:`AdaptiveGate` holds the places and runs the probes.
"""

from __future__ import annotations

import asyncio
import enum
import math
import random
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass

QUEUE = 0.5  # our requests waiting in the Hub's queue, on average, above which we come down
CLIMB = QUEUE / 2  # ... that a higher level is predicted to stay under, to go up
WINDOW = 8  # probes per judgment
BASELINE = 200  # probes over which the lowest round trip is the Hub's idle one
PROBE_EVERY = 0.1  # seconds between probes, on average (jittered by half either way)
# A rise that the next window takes back holds further rises off for this many windows,
# doubling with each such rise in a row up to MAX_HOLD, unless the Hub frees up first.
FIRST_HOLD = 8
MAX_HOLD = 64


class Phase(enum.Enum):
    """Where the limit is in its cycle: rest, settle at a level, measure it, judge it."""

    RESTING = "resting"  # the gate is not full: the limit holds nothing back, no probes
    SETTLING = "settling"  # the limit moved: waiting for exactly `limit` places taken
    MEASURING = "measuring"  # a window of probes, all sent with `limit` places taken


@dataclass(frozen=True, slots=True)
class Reading:
    """What one window of probes said about the Hub, at one level."""

    level: int  # places taken (stops and page reads) when each probe was sent
    delay: float  # mean seconds a probe waited in the Hub, over the baseline (largest left out)
    baseline: float  # the lowest recent round trip: the Hub's loop free
    answered: float  # our requests answered per second during the window

    @property
    def queue(self) -> float:
        """Our requests waiting in the Hub's queue on average (Little's law)."""
        return self.answered * self.delay


@dataclass
class Hold:
    """Rises held off after one that did not last (a window of noise let it happen)."""

    windows: int = 0  # windows left
    length: int = FIRST_HOLD  # the next hold's length
    until: float = 0.0  # a queue under this ends it: the Hub (or the pods) changed pace


@dataclass(frozen=True, slots=True)
class Change:
    """The limit moved, and the reading that moved it."""

    before: int
    after: int
    reading: Reading


class AdaptiveLimit:
    """A concurrency limit between ``floor`` and ``cap``, steered by probes of the Hub.

    Feed it every probe's round trip with the places taken when it was sent
    (:meth:`probed`), every answer to a request in the gate (:meth:`answered`), and
    the end of a stretch with the gate full (:meth:`rest`).

    Invariant: a window judges exactly one level. It holds only probes sent with
    ``limit`` places taken, in one unbroken stretch of a full gate, and counts the
    answers of that stretch. It holds because a window is filled only in MEASURING,
    which is entered on the first probe sent with ``limit`` places taken; a change
    of the limit leaves it for SETTLING (after a fall, the stops above the new limit
    must finish first) and a rest for RESTING, and both discard the window.
    """

    def __init__(self, cap: int, floor: int = 1):
        if cap < 1:
            raise ValueError("cap must be at least 1")
        self.cap = cap
        self.floor = max(1, min(floor, cap))
        # Start low and earn more: a Hub that queues never sees a burst of `cap` stops.
        self.limit = self.floor
        self.phase = Phase.RESTING
        self._recent: deque[float] = deque(maxlen=BASELINE)  # round trips, for the baseline
        self._window: list[float] = []  # this window's round trips
        self._since = 0.0  # when the window's first probe came back
        self._answers = 0  # requests answered since then
        self._rise: Reading | None = None  # the reading that let the last rise happen
        self.hold = Hold()

    @property
    def baseline(self) -> float | None:
        return min(self._recent) if self._recent else None

    def answered(self) -> None:
        """A request that held a place was answered."""
        if self.phase is Phase.MEASURING:
            self._answers += 1

    def rest(self) -> None:
        """The gate is no longer full: the window in progress is void."""
        self.phase = Phase.RESTING
        self._window = []

    def probed(self, rtt: float, places: int, now: float) -> Change | None:
        """A probe came back at ``now`` after ``rtt`` seconds, sent with ``places``
        taken. Returns the change it decided, if any."""
        self._recent.append(rtt)
        if self.phase is not Phase.MEASURING:
            if places != self.limit:
                self.phase = Phase.SETTLING  # (after a fall: stops above the limit still out)
                return None
            self.phase = Phase.MEASURING
            self._window, self._since, self._answers = [], now, 0
        elif places != self.limit:
            return None  # sent in the instant between an answer and the next grant
        self._window.append(rtt)
        if len(self._window) < WINDOW:
            return None
        base = min(self._recent)
        # The largest delay is left out: one probe held up by the machine (the Hub's
        # process waiting for a core) rather than by the Hub's queue must not decide.
        kept = sorted(self._window)[:-1]
        reading = Reading(
            level=self.limit,
            delay=sum(rtt - base for rtt in kept) / len(kept),
            baseline=base,
            answered=self._answers / (now - self._since) if now > self._since else 0.0,
        )
        self._window, self._since, self._answers = [], now, 0
        after = self._judge(reading)
        if after == self.limit:
            return None
        change = Change(self.limit, after, reading)
        self.limit = after
        self.phase = Phase.SETTLING
        return change

    def _judge(self, r: Reading) -> int:
        """The level for the next window."""
        n, queue = r.level, r.queue
        rise, self._rise = self._rise, None
        hold = self.hold
        if queue > QUEUE:
            if rise is not None:
                # The last rise did not last: it came from a window of noise, most
                # likely. Hold the next ones off, longer each time in a row.
                hold.windows = hold.length
                hold.length = min(MAX_HOLD, 2 * hold.length)
                hold.until = rise.queue / 4
            # Down to where the model puts the queue back at QUEUE, one step at least.
            return max(self.floor, min(n - 1, int(n * math.sqrt(QUEUE / queue))))
        if rise is not None:
            hold.length = FIRST_HOLD  # the rise lasted
        if hold.windows:
            if queue >= hold.until:
                hold.windows -= 1
                return n
            hold.windows = 0  # far freer than when the rise failed: the pace changed
        # Up to the highest level, at most twice this one, predicted under CLIMB.
        fits = [m for m in range(n + 1, min(self.cap, 2 * n) + 1) if queue * (m / n) ** 2 <= CLIMB]
        after = max(fits, default=n)
        if after > n:
            self._rise = r
        return after


# The probe: one cheap request to the Hub; its round trip in seconds, None without answer.
Ping = Callable[[], Awaitable[float | None]]


class AdaptiveGate:
    """An async semaphore whose size follows an :class:`AdaptiveLimit`.

    Stops take places, and so do page reads (a mass cull must not have a page read on
    top of its stops). Once a request has had to wait for a place, and as long as the
    gate stays full, the gate probes the Hub with ``ping`` (given by
    :class:`~hubcull.hub.HubClient`, :meth:`probe_with`) about every PROBE_EVERY
    seconds, one probe at a time, and feeds the limit. A stop now and then never waits,
    and costs the Hub no extra request.
    """

    def __init__(
        self,
        limit: AdaptiveLimit,
        on_change: Callable[[Change], None] | None = None,
        rng: random.Random | None = None,
    ):
        self.limit = limit
        self.on_change = on_change  # told of each change of the limit, with its reading
        self.in_flight = 0
        self.waiting = 0
        self._ping: Ping | None = None
        self._rng = rng or random.Random()
        self._changed = asyncio.Condition()
        self._prober: asyncio.Task[None] | None = None

    def probe_with(self, ping: Ping) -> None:
        self._ping = ping

    async def acquire(self) -> None:
        async with self._changed:
            if self.in_flight >= self.limit.limit:
                self.waiting += 1
                self._start_probing()
                try:
                    await self._changed.wait_for(lambda: self.in_flight < self.limit.limit)
                finally:
                    self.waiting -= 1
            self.in_flight += 1

    async def release(self) -> None:
        async with self._changed:
            self.in_flight -= 1
            self.limit.answered()
            self._changed.notify_all()

    @asynccontextmanager
    async def place(self) -> AsyncIterator[None]:
        """Hold a place for the body of the ``async with``."""
        await self.acquire()
        try:
            yield
        finally:
            await self.release()

    def _start_probing(self) -> None:
        if self._ping is not None and self._prober is None and self.limit.cap > self.limit.floor:
            self._prober = asyncio.ensure_future(self._probe())

    @property
    def full(self) -> bool:
        """Stops wait for a place, or would: every place is taken."""
        return self.waiting > 0 or self.in_flight >= self.limit.limit

    async def _probe(self) -> None:
        assert self._ping is not None
        loop = asyncio.get_running_loop()
        idle = 0
        try:
            # Until the gate has not been full twice in a row: the instant between an
            # answer and the next stop's grant does not end the probing.
            while idle < 2:
                await asyncio.sleep(PROBE_EVERY * self._rng.uniform(0.5, 1.5))
                if not self.full:
                    idle += 1
                    self.limit.rest()  # a window is one unbroken stretch of a full gate
                    continue
                idle = 0
                places = self.in_flight
                rtt = await self._ping()
                if rtt is None:
                    continue
                change = self.limit.probed(rtt, places, loop.time())
                if change is not None:
                    async with self._changed:
                        self._changed.notify_all()  # a higher limit lets waiters in
                    if self.on_change is not None:
                        self.on_change(change)
        finally:
            self.limit.rest()
            self._prober = None

    async def close(self) -> None:
        """Stop probing (the client is closing)."""
        prober = self._prober
        if prober is not None:
            prober.cancel()
            with suppress(asyncio.CancelledError):
                await prober
