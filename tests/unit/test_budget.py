"""The read budget of --deadline-checks=budget: never more reads than the reference culler."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hubcull.budget import ReadBudget, reference_pass_cost


def test_reference_pass_is_one_version_request_and_the_pages() -> None:
    assert reference_pass_cost([200], 50) == 1 + 4
    assert reference_pass_cost([201], 50) == 1 + 5
    # An empty list still costs its one (empty) page.
    assert reference_pass_cost([0], 50) == 2
    # --cull-users: the inactive list too.
    assert reference_pass_cost([1000, 120], 200) == 1 + 5 + 1
    with pytest.raises(ValueError):
        reference_pass_cost([10], 0)


def test_reads_accrue_at_the_allowance_and_bank_at_most_one_window() -> None:
    b = ReadBudget(window=60, allowance=6)
    assert b.affordable(0) == 0  # starts empty: the first pass is paid from what accrues
    assert b.affordable(10) == 1
    assert b.affordable(30) == 3
    assert b.affordable(10_000) == 6  # a quiet night banks one window, no more


def test_a_pass_may_overdraw_then_checks_wait() -> None:
    b = ReadBudget(window=60, allowance=6)
    b.charge(4, 0)  # the first pass: always paid, even below zero
    assert b.affordable(0) == 0
    assert b.seconds_until(1, 0) == pytest.approx(50)  # 5 reads at 1 per 10 s
    assert b.affordable(50) == 1
    b.charge(1, 50)
    assert b.affordable(55) == 0


def test_more_than_the_bank_can_hold_is_never_affordable() -> None:
    b = ReadBudget(window=60, allowance=3)
    assert b.seconds_until(4, 0) is None
    assert ReadBudget(window=60).seconds_until(1, 0) is None  # nothing priced yet


def test_a_new_allowance_applies_from_now_on() -> None:
    b = ReadBudget(window=60, allowance=6)
    b.charge(0, 0)  # accrual starts at the first call
    assert b.affordable(60) == 6
    b.set_allowance(2, 60)  # the Hub shrank: the bank shrinks with it
    assert b.affordable(60) == 2
    assert b.affordable(90) == 2


@given(
    allowance=st.integers(1, 50),
    events=st.lists(st.tuples(st.floats(0, 120), st.booleans(), st.integers(1, 10)), max_size=60),
)
def test_a_check_never_brings_reads_above_what_accrued(
    allowance: int, events: list[tuple[float, bool, int]]
) -> None:
    """Whatever the mix of passes (always paid, maybe overdrawn) and deadline checks
    (paid only when affordable): right after any check, all reads made so far, passes
    included, are within what accrued. The promise to operators."""
    window = 60.0
    b = ReadBudget(window=window, allowance=allowance)
    now, spent = 0.0, 0
    for gap, is_pass, cost in events:
        now += gap
        if is_pass:
            b.charge(cost, now)
            spent += cost
            continue
        n = min(cost, b.affordable(now))
        if n:
            b.charge(n, now)
            spent += n
            assert spent <= now * allowance / window + 1e-6
