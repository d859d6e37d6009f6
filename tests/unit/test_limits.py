"""The adaptive stop limit: few stops in flight when the Hub queues them, many when it waits."""

from __future__ import annotations

import asyncio
import random

import pytest

from hubcull.limits import AdaptiveGate, AdaptiveLimit


def settle(limit: AdaptiveLimit, latency_of, rounds: int = 400) -> list[int]:  # type: ignore[no-untyped-def]
    """Feed the limit as a saturated culler would: always `limit` stops in flight."""
    seen = []
    for _ in range(rounds):
        n = limit.limit
        limit.observe(latency_of(n), n)
        seen.append(limit.limit)
    return seen[-100:]


def hub_bound(seed: int = 0):  # type: ignore[no-untyped-def]
    """Each stop costs 14 ms of the Hub's single loop: with n in flight, a stop waits
    behind 0 to n-1 others, so its latency is anywhere from 1 to n times the cost."""
    rng = random.Random(seed)
    return lambda n: 0.014 * rng.randint(1, max(1, n))


def test_a_hub_that_queues_gets_one_or_two_stops_at_a_time() -> None:
    history = sorted(settle(AdaptiveLimit(cap=10), hub_bound()))
    assert history[len(history) // 2] <= 2, "mostly one or two in flight"
    assert history[-1] <= 4, "far below the cap of 10"


def test_a_hub_waiting_on_slow_spawners_gets_the_whole_cap() -> None:
    # Spawner-bound: every stop takes 2 s whatever the number in flight.
    history = settle(AdaptiveLimit(cap=10), lambda n: 2.0)
    assert min(history) == 10


def test_it_starts_at_one_stop_and_earns_more() -> None:
    queueing = AdaptiveLimit(cap=10)
    assert queueing.limit == 1, "no opening burst of ten stops"
    assert max(settle(queueing, hub_bound(2), rounds=20)) <= 4, "far from the cap"
    waiting = AdaptiveLimit(cap=10)
    assert settle(waiting, lambda n: 2.0, rounds=9)[-1] == 10, "one step per answer"


def test_it_recovers_when_the_hub_stops_queueing() -> None:
    limit = AdaptiveLimit(cap=8, window=20)
    settle(limit, hub_bound(1))
    assert limit.limit <= 4
    history = settle(limit, lambda n: 1.0)
    assert history[-1] == 8


def test_bounds() -> None:
    with pytest.raises(ValueError):
        AdaptiveLimit(cap=0)
    limit = AdaptiveLimit(cap=3, floor=5)
    assert limit.floor == 3 and limit.limit == 3
    assert limit.observe(0, 1) == 3, "a zero latency carries no information"


async def test_the_gate_never_lets_more_than_the_limit_through() -> None:
    gate = AdaptiveGate(AdaptiveLimit(cap=3, floor=3))
    peak = 0

    async def stop() -> None:
        nonlocal peak
        n = await gate.acquire()
        peak = max(peak, gate.in_flight)
        await asyncio.sleep(0.001)
        await gate.release(None, n)

    await asyncio.gather(*(stop() for _ in range(30)))
    assert peak == 3 and gate.in_flight == 0
