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
