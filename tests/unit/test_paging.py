"""The backward walk over a live, shifting list never skips a user that stayed listed.

The simulated list behaves like the Hub's ``GET /users?state=active``: ordered by
id, paged by offset, with a limit cap. Between two page reads the world changes:
other users start servers (insertions anywhere), stop them (deletions anywhere),
and the culler removes users it has already read.
"""

from __future__ import annotations

import bisect
import random
from dataclasses import dataclass, field

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hubcull.paging import BackwardWalk, PageRequest, WalkError


@dataclass
class LiveList:
    ids: list[int]
    max_limit: int = 200
    next_id: int = field(default=0)

    def __post_init__(self) -> None:
        self.ids.sort()
        self.next_id = (max(self.ids) + 1) if self.ids else 0

    def serve(self, req: PageRequest) -> tuple[int, int, list[str]]:
        limit = min(req.limit, self.max_limit)
        page = self.ids[req.offset : req.offset + limit]
        return limit, len(self.ids), [f"u{i}" for i in page]

    def insert_below(self, rng: random.Random, position: int) -> None:
        # A user with a lower id than the cursor starts a server: it enters the list there.
        ceiling = self.ids[position] if position < len(self.ids) else self.next_id
        present = set(self.ids)
        for _ in range(20):
            candidate = rng.randrange(ceiling + 1)
            if candidate not in present:
                self.ids.insert(bisect.bisect(self.ids, candidate), candidate)
                return

    def remove(self, name: str) -> None:
        i = int(name[1:])
        if i in self.ids:
            self.ids.remove(i)


def walk_all(
    live: LiveList,
    page_size: int,
    rng: random.Random,
    cull_fraction: float = 0.0,
    churn: float = 0.0,
    start_hint: int = 0,
    burst: int = 1,
    insert_only: bool = False,
) -> tuple[set[str], BackwardWalk, set[str]]:
    """Walk while culling and churning; return names processed and names that never left."""
    original = {f"u{i}" for i in live.ids}
    left: set[str] = set()
    processed: set[str] = set()
    walk = BackwardWalk(page_size, start_hint=start_hint)
    culled_pending: list[str] = []
    steps = 0
    while (req := walk.next_request()) is not None:
        steps += 1
        assert steps < 10_000, "walk does not terminate"
        limit, total, names = live.serve(req)
        for i in walk.feed(req, limit, total, names):
            name = names[i]
            processed.add(name)
            if rng.random() < cull_fraction:
                culled_pending.append(name)
            else:
                walk.kept(name)
        # Some of our stops complete before the next page is read.
        rng.shuffle(culled_pending)
        done, culled_pending = (
            culled_pending[: len(culled_pending) // 2 + 1],
            culled_pending[len(culled_pending) // 2 + 1 :],
        )
        for name in done:
            live.remove(name)
            left.add(name)
        # Other people's changes.
        for _ in range(burst):
            if not (live.ids and rng.random() < churn):
                continue
            pos = rng.randrange(len(live.ids))
            if not insert_only and rng.random() < 0.5:
                victim = f"u{live.ids[pos]}"
                live.remove(victim)
                left.add(victim)
            else:
                live.insert_below(rng, pos)
    return processed, walk, original - left


def test_empty_list_is_one_request() -> None:
    walk = BackwardWalk(50)
    req = walk.next_request()
    assert req == PageRequest(0, 50)
    assert walk.feed(req, 50, 0, []) == []
    assert walk.done


def test_small_list_fits_one_page() -> None:
    processed, walk, _ = walk_all(LiveList(list(range(30))), 50, random.Random(1))
    assert processed == {f"u{i}" for i in range(30)}
    assert walk.requests == 1


def test_no_churn_costs_little_more_than_a_forward_walk() -> None:
    live = LiveList(list(range(2000)))
    processed, walk, _ = walk_all(live, 200, random.Random(2))
    assert len(processed) == 2000
    forward = 2000 // 200 + 1
    assert walk.requests <= forward + 3, walk.requests
    assert walk.climbs == 0


@pytest.mark.parametrize("total", [200, 450, 2000])
def test_a_hint_from_last_pass_spends_no_request_finding_the_end(total: int) -> None:
    """With the list unchanged since the hint, the first page comes back short: the
    walk reads exactly the pages that tile the list with their overlaps."""
    live = LiveList(list(range(total)))
    processed, walk, _ = walk_all(live, 200, random.Random(5), start_hint=total)
    assert processed == {f"u{i}" for i in range(total)}
    step = 200 - walk.overlap
    # A short first page of `step` users, then one page per `step` users below it.
    assert walk.requests == 1 + -(-(total - step) // step)
    assert walk.climbs == 0


def test_culling_everything_while_walking_skips_nobody() -> None:
    # The incumbent's failure: 450 idle users, small pages, all stopped during the walk.
    live = LiveList(list(range(450)))
    processed, walk, _ = walk_all(live, 50, random.Random(3), cull_fraction=1.0)
    assert processed == {f"u{i}" for i in range(450)}


def test_hub_page_cap_is_respected() -> None:
    # The operator asks for 500 per page; the Hub serves at most 200.
    live = LiveList(list(range(1000)), max_limit=200)
    processed, walk, _ = walk_all(live, 500, random.Random(4), cull_fraction=0.5)
    assert len(processed) == 1000
    assert walk.limit == 200


def test_start_hint_past_the_end_recovers() -> None:
    live = LiveList(list(range(120)))
    processed, walk, _ = walk_all(live, 50, random.Random(5), start_hint=5000)
    assert processed == {f"u{i}" for i in range(120)}


def test_insertions_below_the_cursor_make_the_walk_climb() -> None:
    live = LiveList(list(range(0, 4000, 4)))  # room for lower ids to appear
    rng = random.Random(6)
    processed, walk, stayed = walk_all(live, 50, rng, churn=1.0, burst=6, insert_only=True)
    assert stayed <= processed
    assert walk.climbs > 0


@settings(max_examples=300, deadline=None)
@given(
    n=st.integers(0, 700),
    page_size=st.sampled_from([2, 3, 7, 20, 50, 200, 500]),
    max_limit=st.sampled_from([2, 50, 200]),
    cull_fraction=st.floats(0, 1),
    churn=st.floats(0, 1),
    hint=st.integers(0, 1500),
    burst=st.integers(1, 8),
    seed=st.integers(0, 2**32),
)
def test_every_user_that_stays_listed_is_read(
    n: int,
    page_size: int,
    max_limit: int,
    cull_fraction: float,
    churn: float,
    hint: int,
    burst: int,
    seed: int,
) -> None:
    rng = random.Random(seed)
    ids = rng.sample(range(n * 3 + 1), n)
    live = LiveList(ids, max_limit=max_limit)
    processed, _, stayed = walk_all(live, page_size, rng, cull_fraction, churn, hint, burst)
    missing = stayed - processed
    assert not missing, f"skipped {sorted(missing)[:10]}"


def test_a_list_that_never_ends_is_refused() -> None:
    """A hostile or broken Hub that always answers a full page cannot hold a pass forever."""
    walk = BackwardWalk(50)
    with pytest.raises(WalkError, match="did not end after|of a list it says holds"):
        for _ in range(10_000):
            req = walk.next_request()
            assert req is not None
            names = [f"x{req.offset + i}" for i in range(50)]
            walk.feed(req, 50, 100, names)
    assert walk.requests < 100


def test_a_page_past_the_claimed_total_is_refused() -> None:
    """Items at an offset the Hub's own total says is past the end: the answer is nonsense."""
    walk = BackwardWalk(50)
    req = walk.next_request()
    assert req is not None
    walk.feed(req, 50, 500, [f"u{i}" for i in range(50)])  # full: jump to the end
    req = walk.next_request()
    assert req is not None and req.offset > 0
    with pytest.raises(WalkError, match="at offset"):
        walk.feed(PageRequest(600, 50), 50, 500, [f"v{i}" for i in range(50)])


def test_endless_full_pages_are_cut_off_by_the_budget() -> None:
    """A Hub whose total keeps ahead of the offset: the page budget ends the walk."""
    walk = BackwardWalk(50)
    with pytest.raises(WalkError, match="did not end after"):
        for _ in range(10_000):
            req = walk.next_request()
            assert req is not None
            names = [f"x{req.offset + i}" for i in range(50)]
            walk.feed(req, 50, req.offset + 100, names)
