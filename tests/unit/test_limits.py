"""The adaptive stop limit: few stops in flight when the Hub queues them, many when it waits."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable

import pytest

from hubcull.limits import MIN_WINDOW, MIN_WINDOW_S, AdaptiveGate, AdaptiveLimit

Latency = Callable[[int], float]


def settle(limit: AdaptiveLimit, latency_of: Latency, rounds: int = 600) -> list[int]:
    """Feed the limit as a saturated culler would: always `limit` stops in flight.
    Returns the limit after each answer."""
    seen = []
    for _ in range(rounds):
        n = limit.limit
        limit.observe(latency_of(n), n)
        seen.append(limit.limit)
    return seen


def hub_bound(seed: int = 0) -> Latency:
    """Each stop costs ~14 ms of the Hub's single loop: with n always in flight, each
    waits for the others, so latency is n times the cost (Little's law), with jitter."""
    rng = random.Random(seed)
    return lambda n: 0.014 * n * rng.uniform(0.9, 1.2)


def spawner_bound(low: float, high: float, seed: int = 0) -> Latency:
    """Pods that take between `low` and `high` seconds to go, however many at once."""
    rng = random.Random(seed)
    return lambda n: rng.uniform(low, high)


def median(xs: list[int]) -> int:
    return sorted(xs)[len(xs) // 2]


@pytest.mark.parametrize("seed", range(4))
def test_a_hub_that_queues_gets_one_stop_at_a_time(seed: int) -> None:
    history = settle(AdaptiveLimit(cap=10), hub_bound(seed))[-300:]
    assert history.count(1) >= 0.9 * len(history), "one in flight nearly all the time"
    assert max(history) <= 2, "a rare try at two, never more"


def test_a_hub_waiting_on_slow_spawners_gets_the_whole_cap() -> None:
    history = settle(AdaptiveLimit(cap=10), lambda n: 2.0, rounds=2000)[-1000:]
    # Now and then a window one below, to learn whether the cap is still needed.
    assert min(history) == 9
    assert history.count(10) >= 0.85 * len(history)


@pytest.mark.parametrize("seed", range(4))
def test_spawners_whose_stop_times_vary_still_get_many_stops_at_once(seed: int) -> None:
    # The case that defeats a latency-only (Vegas) estimate: the fastest stop is far
    # below the typical one without any queue, which looks like congestion.
    history = settle(AdaptiveLimit(cap=10), spawner_bound(1, 3, seed))[-300:]
    assert median(history) >= 6


def test_a_mass_cull_of_pods_gets_many_stops_at_once_early() -> None:
    # 150 pods whose stops take 0.5 to 2.5 s: the climb must not eat the whole cull.
    means = []
    for seed in range(8):
        history = settle(AdaptiveLimit(cap=10), spawner_bound(0.5, 2.5, seed), rounds=150)
        means.append(sum(history) / len(history))
    assert min(means) >= 4 and sum(means) / len(means) >= 6.5, means


def test_it_starts_at_one_stop_and_earns_more() -> None:
    queueing = AdaptiveLimit(cap=10)
    assert queueing.limit == 1, "no opening burst of ten stops"
    first = settle(queueing, hub_bound(2), rounds=40)
    assert max(first) <= 2
    # Quick stops are judged over a minimum time, not a handful of answers.
    assert first.index(2) >= MIN_WINDOW_S / (0.014 * 1.2) - 1
    waiting = AdaptiveLimit(cap=10)
    steps = sum(max(MIN_WINDOW, n) for n in (1, 2, 4, 8))
    history = settle(waiting, lambda n: 2.0, rounds=steps + 1)
    assert history[-1] == 10, "doubling: 1, 2, 4, 8, then the cap, a window each"
    assert sorted(set(history)) == [1, 2, 4, 8, 10]


def test_it_recovers_when_the_hub_stops_queueing() -> None:
    limit = AdaptiveLimit(cap=8)
    settle(limit, hub_bound(1), rounds=3000)  # failed tries: the next is a minute away
    assert limit.limit <= 2
    history = settle(limit, lambda n: 1.0)
    # Stops got slow (pods): the pace at one stop fell, so the limit tries again at
    # once instead of after its hold, and climbs a step per window.
    assert history.index(8) <= sum(max(MIN_WINDOW, n) for n in range(1, 8)) + MIN_WINDOW


@pytest.mark.parametrize("seed", range(4))
def test_a_slow_patch_does_not_leave_stops_queued(seed: int) -> None:
    # The Hub was busy with something else while one stop was in flight (a burst of
    # users, a noisy neighbour): two and three looked like gains. Once the patch is
    # over, the limit must find out that they only queue, not keep them for good.
    limit = AdaptiveLimit(cap=10)
    hub = hub_bound(seed)
    slow = iter(range(20))  # the next 20 answers with one stop in flight are slow

    def patch(n: int) -> float:
        return hub(n) * (4 if n == 1 and next(slow, None) is not None else 1)

    climbed = settle(limit, patch, 80)
    assert max(climbed) >= 3, "the patch fooled it, as on a loaded machine"
    history = settle(limit, hub)[-300:]
    assert history.count(1) >= 0.9 * len(history)


def test_it_comes_down_when_spawners_get_quick() -> None:
    limit = AdaptiveLimit(cap=8)
    settle(limit, lambda n: 1.0)
    assert limit.limit == 8
    history = settle(limit, hub_bound(3), rounds=1000)[-300:]
    assert history.count(1) >= 0.9 * len(history)


def test_the_end_of_a_descent_is_not_tried_again_at_once() -> None:
    limit = AdaptiveLimit(cap=8)
    settle(limit, lambda n: 1.0)
    history = settle(limit, hub_bound(3), rounds=1000)
    landed = history.index(1)
    assert history[landed : landed + 3 * MIN_WINDOW] == [1] * (3 * MIN_WINDOW)


def test_answers_sent_at_another_limit_are_not_counted() -> None:
    limit = AdaptiveLimit(cap=10)
    for _ in range(20):
        limit.observe(1.0, 5)  # sent before the limit came down to 1: says nothing of 1
    assert limit.limit == 1 and limit.rate(1) is None


def test_bounds() -> None:
    with pytest.raises(ValueError):
        AdaptiveLimit(cap=0)
    limit = AdaptiveLimit(cap=3, floor=5)
    assert limit.floor == 3 and limit.limit == 3
    assert limit.observe(0, 3) == 3, "a zero latency carries no information"


async def test_the_gate_never_lets_more_than_the_limit_through() -> None:
    gate = AdaptiveGate(AdaptiveLimit(cap=3, floor=3))
    peak = 0

    async def stop(measured: bool) -> None:
        nonlocal peak
        async with gate.place(measured):
            peak = max(peak, gate.in_flight)
            await asyncio.sleep(0.001)

    await asyncio.gather(*(stop(i % 4 != 0) for i in range(30)))
    assert peak == 3 and gate.in_flight == 0


async def test_a_stop_beside_a_page_read_is_not_judged() -> None:
    gate = AdaptiveGate(AdaptiveLimit(cap=4, floor=2))

    async def stop(latency: float) -> None:
        async with gate.place() as slot:
            await asyncio.sleep(0.001)
            slot.timings.append(latency)

    # Two places: a page read holds one, so a stop granted beside it is one stop in
    # flight, not two.
    read = await gate.acquire(measured=False)
    await asyncio.gather(*(stop(0.1) for _ in range(4 * MIN_WINDOW)))
    await gate.release(read)
    assert gate.limit.rate(2) is None and gate.in_flight == 0
    # Stops with the gate to themselves are judged.
    await asyncio.gather(*(stop(0.1) for _ in range(4 * MIN_WINDOW)))
    assert gate.limit.rate(2) is not None


async def test_a_stop_that_saw_a_page_read_come_is_not_judged() -> None:
    gate = AdaptiveGate(AdaptiveLimit(cap=3, floor=3))
    for _ in range(2 * MIN_WINDOW):
        first, second = await gate.acquire(), await gate.acquire()
        judged = await gate.acquire()  # the third place, with the gate to the stops
        await gate.release(first)
        read = await gate.acquire(measured=False)  # granted while `judged` is in flight
        await gate.release(read)
        judged.timings.append(0.1)
        await gate.release(judged)
        await gate.release(second)
    assert gate.limit.rate(3) is None and gate.in_flight == 0
