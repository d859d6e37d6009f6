"""A mass cull in virtual time: hubcull's real stop limit against a simulated Hub.

What the stop limit (hubcull/limits.py) must get right depends on how the Hub spends
its time, so the Hub here is reduced to that: **one event loop** that does one piece
of work at a time, first come first served, while pods take their own time to stop
without using it.

- A stop costs the loop a slice before the spawner is asked to stop (auth, database,
  the proxy's route: the loop waits on the proxy meanwhile) and a slice after it
  (database, the answer). In between the pod takes its ``stop_delay``; past
  ``slow_stop_timeout`` the Hub answers 202 and finishes the stop later.
- A ping (``GET /hub/api/``), a user's model, a page of users: a slice each.
- Each slice varies by ``jitter``; on a ``busy`` machine, some are held up as the
  Hub's process waits for a core (exponential delays).

On :class:`testkit.vclock.VirtualTimeLoop`, a mass cull of minutes runs in
milliseconds and every run is reproducible from its seed. The clients:

- :func:`hubcull_cull`: the real :class:`~hubcull.limits.AdaptiveGate` and
  :class:`~hubcull.limits.AdaptiveLimit`, used as hubcull's engine and HubClient use
  them: pages are read through the gate while ``workers`` users are handled at once
  (as many as the cap, as app.py has it), each stop goes through the gate, and a 202
  is followed up every second until the server is gone (by its worker, outside the
  gate: a worker following a 202 up sends no stop meanwhile);
- :func:`plain_cull`: a plain client keeping ``concurrency`` DELETEs in flight, in the
  order hubcull reaches the servers (:func:`walk_order`: where the slowest pods fall
  in that order decides the end of a cull as much as the limit does);
- :func:`incumbent_cull`: jupyterhub-idle-culler's shape: every page first, then one
  stop at a time.

The Hub keeps its own log (what it served, from arrival to answer), as the real
Hub's access log, for in-flight profiles; a bystander can time a user's request
every 50 ms.
"""

from __future__ import annotations

import asyncio
import random
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from hubcull.limits import AdaptiveGate, AdaptiveLimit, Change
from testkit.overlap import time_at_each_count


@dataclass(frozen=True)
class Costs:
    """Seconds of the Hub's loop per piece of work, and of the path to it."""

    # Most of a stop's work comes in one block, before the spawner is asked (the
    # token's check, the database, the route): with it, the probes see a Hub that
    # queues as the real one does (docs/benchmarks.md, "Figures the design rests on").
    stop_before: float = 0.012
    proxy: float = 0.002  # the proxy removing the route (the loop waits, free)
    stop_after: float = 0.003  # after the spawner's stop: database, the answer
    answer_202: float = 0.002  # answering 202 when slow_stop_timeout has passed
    ping: float = 0.0015  # no token, no database
    user: float = 0.004  # GET /users/{name}, with a token to check
    page_per_user: float = 0.0005
    net: float = 0.0003  # one way, client to Hub
    client: float = 0.001  # the client's own work between an answer and its next request
    jitter: float = 0.2  # each slice varies by up to this share, either way


@dataclass(frozen=True)
class Machine:
    """Other processes on the Hub's machine: a slice is held up with ``chance``, by an
    exponential delay of mean ``mean``; so is a client's view of an answer."""

    chance: float = 0.0
    mean: float = 0.02


QUIET = Machine()
BUSY = Machine(chance=0.05, mean=0.03)  # two busy processes on two cores, roughly


@dataclass(frozen=True, slots=True)
class Served:
    """One request, as the Hub's access log has it."""

    kind: str
    who: str
    start: float
    end: float
    status: int


class SimHub:
    """Servers that stop at their own pace, on a Hub with one event loop."""

    def __init__(
        self,
        delays: Sequence[float] | Callable[[int], float],
        *,
        users: int | None = None,
        costs: Costs = Costs(),
        machine: Machine = QUIET,
        slow_stop_timeout: float = 10.0,
        seed: int = 0,
    ):
        # A stop's delay: by user (a list), or by how many stops the Hub began before it
        # (a function: a change of pace mid-cull, whoever is stopped).
        self._delays = delays
        n = len(delays) if not callable(delays) else users
        assert n is not None, "users= with a function of delays"
        self.users = [f"user-{i:05d}" for i in range(n)]
        self._index = {u: i for i, u in enumerate(self.users)}
        self.running = set(self.users)
        self.stopping: set[str] = set()
        self.costs = costs
        self.machine = machine
        self.slow_stop_timeout = slow_stop_timeout
        self.rng = random.Random(seed)
        self.log: list[Served] = []
        self.gone_at: dict[str, float] = {}
        self.all_stopped = asyncio.Event()
        self._cpu = asyncio.Lock()  # the loop: one slice at a time, first come first served
        self._begun = 0
        self.began: list[float] = []  # when each stop began, in order

    def _now(self) -> float:
        return asyncio.get_running_loop().time()

    def _held_up(self) -> float:
        m = self.machine
        return self.rng.expovariate(1 / m.mean) if m.chance and self.rng.random() < m.chance else 0

    async def _work(self, seconds: float) -> None:
        j = self.costs.jitter
        async with self._cpu:
            await asyncio.sleep(seconds * self.rng.uniform(1 - j, 1 + j) + self._held_up())

    async def _net(self) -> None:
        await asyncio.sleep(self.costs.net)

    def _served(self, kind: str, who: str, start: float, status: int) -> None:
        self.log.append(Served(kind, who, start, self._now(), status))

    def delay_of(self, user: str) -> float:
        if callable(self._delays):
            return self._delays(self._begun)
        return self._delays[self._index[user]]

    # --- the API ---------------------------------------------------------------------

    async def stop(self, user: str, who: str) -> int:
        """DELETE /users/{user}/server: 204 once stopped, 202 past slow_stop_timeout."""
        c = self.costs
        await self._net()
        start = self._now()
        if user not in self.running or user in self.stopping:
            await self._work(c.user)
            status = 404 if user not in self.running else 202
            self._served("stop", who, start, status)
            await self._net()
            return status
        delay = self.delay_of(user)
        self._begun += 1
        self.began.append(self._now())
        self.stopping.add(user)
        await self._work(c.stop_before)
        await asyncio.sleep(c.proxy)
        finish = asyncio.ensure_future(self._finish(user, delay))
        done, _ = await asyncio.wait({finish}, timeout=self.slow_stop_timeout)
        if done:
            status = 204
        else:
            await self._work(c.answer_202)
            status = 202
        self._served("stop", who, start, status)
        await self._net()
        return status

    async def _finish(self, user: str, delay: float) -> None:
        await asyncio.sleep(delay)
        await self._work(self.costs.stop_after)
        self.running.discard(user)
        self.stopping.discard(user)
        self.gone_at[user] = self._now()
        if len(self.gone_at) == len(self.users):
            self.all_stopped.set()

    async def ping(self, who: str = "hubcull") -> float:
        """GET /hub/api/: the round trip, as the client sees it."""
        sent = self._now()
        await self._net()
        start = self._now()
        await self._work(self.costs.ping)
        self._served("ping", who, start, 200)
        await self._net()
        await asyncio.sleep(self._held_up())  # the client's own process, on that machine
        return self._now() - sent

    async def user_model(self, user: str, who: str) -> str | None:
        """GET /users/{user}: "stopping", "running" or None (no server)."""
        await self._net()
        start = self._now()
        await self._work(self.costs.user)
        self._served("user", who, start, 200)
        await self._net()
        if user in self.stopping:
            return "stopping"
        return "running" if user in self.running else None

    async def page(self, offset: int, limit: int, who: str) -> list[str]:
        """GET /users?offset=&limit=: a page of the users listed at first (enough here)."""
        await self._net()
        start = self._now()
        items = self.users[offset : offset + limit]
        await self._work(self.costs.page_per_user * max(1, len(items)))
        self._served("list", who, start, 200)
        await self._net()
        return items

    # --- what the log says -------------------------------------------------------------

    def stops(self, who: str) -> list[Served]:
        return [s for s in self.log if s.who == who and s.kind == "stop"]


async def bystander(hub: SimHub, out: list[float], every: float = 0.05) -> None:
    """A user's requests, one every ``every`` seconds: their latencies go to ``out``."""
    loop = asyncio.get_running_loop()
    while True:
        t0 = loop.time()
        await hub.user_model(hub.users[0], "bystander")
        out.append(loop.time() - t0)
        await asyncio.sleep(max(0.0, every - (loop.time() - t0)))


@dataclass
class Cull:
    """What a culler did, from its first request to the last server gone."""

    who: str
    started: float
    finished: float  # the last server gone (the Hub's side)
    stops: list[Served]
    limits: list[tuple[float, int]] = field(default_factory=list)  # (time, limit) changes
    confirmed: int = 0  # 202s followed up until the server was gone
    answered_202: int = 0

    @property
    def seconds(self) -> float:
        return self.finished - self.started

    def time_at(self) -> dict[int, float]:
        """Seconds with each number of this culler's stops in the Hub's hands."""
        return dict(time_at_each_count((s.start, s.end) for s in self.stops))

    def limit_at(self, t: float) -> int:
        """hubcull's limit at virtual time ``t``."""
        level = self.limits[0][1]
        for when, after in self.limits:
            if when > t:
                break
            level = after
        return level

    def time_off(self, since: float, until: float, right: Callable[[int], bool]) -> float:
        """Seconds of [since, until] during which hubcull's limit was not ``right``."""
        edges = [since, *(t for t, _ in self.limits if since < t < until), until]
        return sum(
            b - a for a, b in zip(edges, edges[1:], strict=False) if not right(self.limit_at(a))
        )

    def level_held(self, since: float, until: float) -> float:
        """The median of hubcull's limit over [since, until], in time."""
        step = (until - since) / 200
        return statistics.median(self.limit_at(since + i * step) for i in range(200))

    def mean_in_flight(self) -> float:
        spent = self.time_at()
        total = sum(spent.values())
        return sum(k * v for k, v in spent.items()) / total if total else 0.0


def walk_order(users: Sequence[str], page_size: int = 50) -> list[str]:
    """The order in which hubcull reaches them: pages from the end of the list, each
    page in list order (hubcull/paging.py, less the overlap of its pages)."""
    starts = reversed(range(0, len(users), page_size))
    return [u for start in starts for u in users[start : start + page_size]]


async def _until_gone(hub: SimHub) -> float:
    await hub.all_stopped.wait()
    return max(hub.gone_at.values())


async def hubcull_cull(
    hub: SimHub,
    cap: int = 10,
    *,
    workers: int | None = None,
    page_size: int = 50,
    poll_interval: float = 1.0,
    seed: int = 0,
    limit: AdaptiveLimit | None = None,
) -> Cull:
    """hubcull's shape of a mass cull through the real gate (see the module docstring)."""
    loop = asyncio.get_running_loop()
    who = "hubcull"
    changes: list[tuple[float, int]] = []
    limit = limit or AdaptiveLimit(cap=cap)
    changes.append((loop.time(), limit.limit))

    def changed(c: Change) -> None:
        changes.append((loop.time(), c.after))

    gate = AdaptiveGate(limit, on_change=changed, rng=random.Random(seed))
    gate.probe_with(lambda: hub.ping(who))
    queue: asyncio.Queue[str] = asyncio.Queue(maxsize=page_size)
    cull = Cull(who, loop.time(), 0.0, [])

    async def follow_up(user: str) -> None:
        while True:
            await asyncio.sleep(poll_interval)
            if await hub.user_model(user, who) is None:
                cull.confirmed += 1
                return

    async def work() -> None:
        while True:
            user = await queue.get()
            try:
                async with gate.place():
                    status = await hub.stop(user, who)
                await asyncio.sleep(hub.costs.client)
                if status == 202:
                    cull.answered_202 += 1
                    await follow_up(user)
            finally:
                queue.task_done()

    tasks = [asyncio.ensure_future(work()) for _ in range(workers or cap)]
    try:
        # Pages from the end of the list backwards, as hubcull walks it (walk_order).
        for offset in reversed(range(0, len(hub.users), page_size)):
            async with gate.place():
                page = await hub.page(offset, page_size, who)
            await asyncio.sleep(hub.costs.client)
            for user in page:
                await queue.put(user)
        await queue.join()
        cull.finished = await _until_gone(hub)
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await gate.close()
    cull.stops = hub.stops(who)
    cull.limits = changes
    return cull


async def plain_cull(hub: SimHub, concurrency: int = 10, page_size: int = 50) -> Cull:
    """A plain client: every server's DELETE, ``concurrency`` always in flight, in the
    order hubcull would send them."""
    loop = asyncio.get_running_loop()
    who = f"plain-{concurrency}"
    sem = asyncio.Semaphore(concurrency)
    cull = Cull(who, loop.time(), 0.0, [])

    async def one(user: str) -> None:
        async with sem:
            if await hub.stop(user, who) == 202:
                cull.answered_202 += 1
            await asyncio.sleep(hub.costs.client)

    await asyncio.gather(*(one(u) for u in walk_order(hub.users, page_size)))
    cull.finished = await _until_gone(hub)
    cull.stops = hub.stops(who)
    return cull


async def incumbent_cull(hub: SimHub, page_size: int = 50) -> Cull:
    """jupyterhub-idle-culler's shape: list every page, then stop one server at a time."""
    loop = asyncio.get_running_loop()
    who = "incumbent"
    cull = Cull(who, loop.time(), 0.0, [])
    users: list[str] = []
    for offset in range(0, len(hub.users), page_size):
        users += await hub.page(offset, page_size, who)
        await asyncio.sleep(hub.costs.client)
    for user in users:
        if await hub.stop(user, who) == 202:
            cull.answered_202 += 1
        await asyncio.sleep(hub.costs.client)
    cull.finished = await _until_gone(hub)
    cull.stops = hub.stops(who)
    return cull


# --- the regimes of tests/unit/test_limits.py, as a table -----------------------------------


def compare(delays: Sequence[float], seed: int, machine: Machine = QUIET, reference: int = 10):
    """hubcull's time to cull these servers / a plain client's with ``reference`` in flight."""
    from testkit.vclock import run_virtual

    mine = run_virtual(hubcull_cull(SimHub(delays, machine=machine, seed=seed), seed=seed))
    theirs = run_virtual(plain_cull(SimHub(delays, machine=machine, seed=seed), reference))
    return mine.seconds / theirs.seconds


def pod_delays(seed: int, n: int = 150, slow: float = 0.0) -> list[float]:
    """0.5-2.5 s each; with ``slow``, that share take 5-20 s (past slow_stop_timeout)."""
    rng = random.Random(seed)
    return [rng.uniform(5, 20) if rng.random() < slow else rng.uniform(0.5, 2.5) for _ in range(n)]


def regimes(draws: int) -> dict[str, list[float]]:
    """hubcull's time / the reference's, draw by draw, in each regime."""
    out: dict[str, list[float]] = {}
    for machine, label in ((QUIET, "quiet"), (BUSY, "busy")):
        out[f"quick stops, / one at a time ({label})"] = [
            compare([0.0] * 400, s, machine, reference=1) for s in range(draws)
        ]
        out[f"pods 0.5-2.5 s, / ten in flight ({label})"] = [
            compare(pod_delays(s), s, machine) for s in range(draws)
        ]
    out["one pod in five 5-20 s (202s), / ten in flight"] = [
        compare(pod_delays(s, slow=0.2), s) for s in range(draws)
    ]
    return out


if __name__ == "__main__":
    import sys

    n = int(sys.argv[1]) if len(sys.argv) > 1 else 20
    print(f"| regime ({n} draws) | worst | median |\n|---|---|---|")
    for name, ratios in regimes(n).items():
        print(f"| {name} | {max(ratios):.2f}x | {statistics.median(ratios):.2f}x |")
