"""How many requests were in flight at once, from their start and end times.

Tests read them from hubcull's log, benchmarks from the Hub's; the count is the same.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable


def time_at_each_count(intervals: Iterable[tuple[float, float]]) -> Counter[int]:
    """Seconds spent with each number of the ``(start, end)`` intervals open at once
    (time with none open is left out). An interval ending when another starts does not
    overlap it."""
    edges = sorted(e for start, end in intervals for e in ((start, 1), (end, -1)))
    spent: Counter[int] = Counter()
    now, last = 0, 0.0
    for t, step in edges:  # at equal times, an end (-1) sorts before a start
        if now:
            spent[now] += t - last
        now, last = now + step, t
    return spent


def count_over_time(
    intervals: Iterable[tuple[float, float]], start: float, end: float, step: float
) -> list[tuple[float, float]]:
    """The mean number of the intervals open in each ``step`` from ``start`` to ``end``:
    ``(bin's start - start, mean count)``, for plots and levels over time."""
    bins = max(1, round((end - start) / step))
    spent = [0.0] * bins
    for a, b in intervals:
        a, b = max(a, start), min(b, start + bins * step)
        i = int((a - start) // step)
        while a < b and i < bins:
            edge = start + (i + 1) * step
            spent[i] += min(b, edge) - a
            a, i = edge, i + 1
    return [(i * step, v / step) for i, v in enumerate(spent)]
