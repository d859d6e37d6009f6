"""The deadline queue: earliest first, one live entry per server, stale entries forgotten."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

from hypothesis import given
from hypothesis import strategies as st

from hubcull.schedule import DeadlineQueue

T0 = datetime(2026, 1, 1, tzinfo=timezone.utc)


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def test_lists_only_what_is_due_earliest_first() -> None:
    q = DeadlineQueue()
    q.push(("b", ""), at(20), at(0))
    q.push(("a", ""), at(10), at(0))
    q.push(("c", "gpu"), at(30), at(0))
    assert q.next_due() == at(10)
    assert q.due(at(5)) == []
    assert q.due(at(20)) == [("a", ""), ("b", "")]
    assert len(q) == 3, "due() lists without removing"


def test_a_new_deadline_replaces_the_old_one() -> None:
    q = DeadlineQueue()
    q.push(("a", ""), at(10), at(0))
    q.push(("a", ""), at(50), at(1))  # activity moved it
    assert q.due(at(20)) == []
    assert q.next_due() == at(50)
    q.discard(("a", ""))  # culled, or no longer due before the next pass
    assert q.next_due() is None and len(q) == 0


def test_a_complete_pass_forgets_servers_it_did_not_list() -> None:
    q = DeadlineQueue()
    q.push(("gone", ""), at(10), at(0))
    q.push(("kept", ""), at(10), at(0))
    q.push(("new", ""), at(10), at(6))  # pushed (by a deadline check) after the pass began
    q.retain({("kept", "")}, since=at(5))
    assert q.due(at(100)) == [("kept", ""), ("new", "")]


@given(
    st.lists(st.tuples(st.sampled_from("abcde"), st.integers(0, 100)), max_size=50),
    st.integers(0, 100),
)
def test_due_matches_the_latest_push_per_server(pushes: list[tuple[str, int]], now: int) -> None:
    q = DeadlineQueue()
    latest: dict[str, int] = {}
    for user, t in pushes:
        q.push((user, ""), at(t), at(0))
        latest[user] = t
    due = q.due(at(now))
    assert sorted(u for u, _ in due) == sorted(u for u, t in latest.items() if t <= now)
    assert [latest[u] for u, _ in due] == sorted(latest[u] for u, _ in due)
    assert q.next_due() == (at(min(latest.values())) if latest else None)


def test_discard_takes_a_server_out() -> None:
    q = DeadlineQueue()
    q.push(("b", ""), at(20), at(0))
    q.push(("a", ""), at(10), at(0))
    q.discard(("a", ""))
    assert q.due(at(25)) == [("b", "")] and q.next_due() == at(20)
