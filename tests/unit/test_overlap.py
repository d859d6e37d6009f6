"""The in-flight count that the stop-limit tests and the benchmarks read off logs."""

from __future__ import annotations

from testkit.overlap import count_over_time, time_at_each_count


def test_overlaps_are_counted_by_how_many_are_open() -> None:
    spent = time_at_each_count([(0.0, 2.0), (1.0, 3.0), (1.5, 1.75), (5.0, 6.0)])
    assert spent == {1: 1.0 + 1.0 + 1.0, 2: 0.5 + 0.25, 3: 0.25}


def test_one_ending_as_the_next_starts_is_not_an_overlap() -> None:
    assert time_at_each_count([(0.0, 1.0), (1.0, 2.0)]) == {1: 2.0}
    assert time_at_each_count([]) == {}


def test_the_count_over_time_is_the_mean_of_each_step() -> None:
    bins = count_over_time([(0.0, 2.0), (1.0, 3.0), (1.5, 1.75), (9.0, 20.0)], 0.0, 4.0, 1.0)
    assert bins == [(0.0, 1.0), (1.0, 2.25), (2.0, 1.0), (3.0, 0.0)]
