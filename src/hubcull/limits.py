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
from dataclasses import dataclass, field

QUEUE = 0.5  # our requests waiting in the Hub's queue, on average, above which we come down
CLIMB = QUEUE / 2  # ... that a higher level is predicted to stay under, to go up
FREE = CLIMB / 4  # ... predicted at twice the level: the Hub is far from busy, double again
WINDOW = 8  # probes per judgment
BASELINE = 200  # probes over which the lowest round trip is the Hub's idle one
PROBE_EVERY = 0.1  # seconds between probes, on average (jittered by half either way)
# A rise that the next window takes back holds further rises off for this many windows,
# doubling with each such rise in a row up to MAX_HOLD, unless the Hub frees up first.
FIRST_HOLD = 8
MAX_HOLD = 64


class Phase(enum.Enum):
    """How the limit moves at the end of a window."""

    DOUBLING = "doubling"  # the Hub is free: up to twice the level (a cull's start, slow pods)
    STEPPING = "stepping"  # near the level the Hub takes: one stop more at a time
    HOLDING = "holding"  # a rise was taken back at once: none for a few windows


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

    def predicted(self, level: int) -> float:
        """The queue at another level, taken to grow with its square."""
        return self.queue * (level / self.level) ** 2


@dataclass
class Window:
    """Probes at one level, in one unbroken stretch of a full gate, and its answers."""

    since: float  # when its first probe came back
    rtts: list[float] = field(default_factory=list)
    answers: int = 0


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
    the end of a stretch with the gate full (:meth:`rest`). Each full window of
    probes is a :class:`Reading`, judged by the phase:

    - DOUBLING: up to the highest level, at most twice this one, predicted under
      CLIMB. Where none is, STEPPING.
    - STEPPING: one more if predicted under CLIMB; back to DOUBLING if twice this
      level is predicted under FREE (the pods got slow: the Hub is far from busy).
    - HOLDING: no rise for ``hold_left`` windows, unless the queue falls under
      ``hold_until`` (a quarter of what let the failed rise happen: the pace changed);
      then STEPPING.
    - In any phase, a queue over QUEUE brings the limit down to where the model puts
      it back at QUEUE (one step at least), and the phase to STEPPING; or to HOLDING
      when the window before was a rise's first (the rise was let in by noise).

    Invariant: a reading judges exactly one level. Its window holds only probes sent
    with ``limit`` places taken, in one unbroken stretch of a full gate, and the
    answers of that stretch. It holds because a window starts (``_window`` set) only
    on a probe sent with ``limit`` places taken, and every change of the limit, and
    every rest, drops it (after a fall, the stops above the new limit must finish
    before the next one starts).
    """

    def __init__(self, cap: int, floor: int = 1):
        if cap < 1:
            raise ValueError("cap must be at least 1")
        self.cap = cap
        self.floor = max(1, min(floor, cap))
        # Start low and earn more: a Hub that queues never sees a burst of `cap` stops.
        self.limit = self.floor
        self.phase = Phase.DOUBLING
        self.hold_left = 0  # HOLDING: windows left
        self.hold_until = 0.0  # HOLDING: a queue under this ends it
        self._hold_next = FIRST_HOLD  # the next hold's length
        self._trial: Reading | None = None  # the reading that let the last rise in
        self._window: Window | None = None
        self._recent: deque[float] = deque(maxlen=BASELINE)  # round trips, for the baseline

    @property
    def baseline(self) -> float | None:
        return min(self._recent) if self._recent else None

    @property
    def measuring(self) -> bool:
        return self._window is not None

    def answered(self) -> None:
        """A request that held a place was answered."""
        if self._window is not None:
            self._window.answers += 1

    def rest(self) -> None:
        """The gate is no longer full: the window in progress is void."""
        self._window = None

    def probed(self, rtt: float, places: int, now: float) -> Change | None:
        """A probe came back at ``now`` after ``rtt`` seconds, sent with ``places``
        taken. Returns the change it decided, if any."""
        self._recent.append(rtt)
        if places != self.limit:
            # Sent after a fall, with stops above the limit still out; or in the
            # instant between an answer and the next grant.
            return None
        if self._window is None:
            self._window = Window(since=now)
        window = self._window
        window.rtts.append(rtt)
        if len(window.rtts) < WINDOW:
            return None
        base = min(self._recent)
        # The largest delay is left out: one probe held up by the machine (the Hub's
        # process waiting for a core) rather than by the Hub's queue must not decide.
        kept = sorted(window.rtts)[:-1]
        reading = Reading(
            level=self.limit,
            delay=sum(rtt - base for rtt in kept) / len(kept),
            baseline=base,
            answered=window.answers / (now - window.since) if now > window.since else 0.0,
        )
        self._window = Window(since=now)
        after = self._judge(reading)
        if after == self.limit:
            return None
        self._window = None
        change = Change(self.limit, after, reading)
        self.limit = after
        return change

    def _judge(self, r: Reading) -> int:
        """The level for the next window (and the phase)."""
        n = r.level
        trial, self._trial = self._trial, None
        if r.queue > QUEUE:
            if trial is not None:
                # The rise did not last a window: noise let it in, most likely. Hold
                # the next ones off, longer each time in a row.
                self.phase = Phase.HOLDING
                self.hold_left, self.hold_until = self._hold_next, trial.queue / 4
                self._hold_next = min(MAX_HOLD, 2 * self._hold_next)
            elif self.phase is not Phase.HOLDING:
                self.phase = Phase.STEPPING
            return max(self.floor, min(n - 1, int(n * math.sqrt(QUEUE / r.queue))))
        if trial is not None:
            self._hold_next = FIRST_HOLD  # the rise lasted
        if self.phase is Phase.HOLDING:
            self.hold_left -= 1
            if r.queue >= self.hold_until and self.hold_left > 0:
                return n
            self.phase = Phase.STEPPING
        if self.phase is Phase.STEPPING and r.predicted(min(self.cap, 2 * n)) <= FREE:
            self.phase = Phase.DOUBLING
        top = min(self.cap, 2 * n if self.phase is Phase.DOUBLING else n + 1)
        after = max((m for m in range(n + 1, top + 1) if r.predicted(m) <= CLIMB), default=n)
        if after > n:
            self._trial = r
        elif self.phase is Phase.DOUBLING and n < self.cap:
            self.phase = Phase.STEPPING
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
