"""Walking the Hub's paginated user list without skipping anyone.

The Hub pages ``GET /users`` by offset into a live, id-ordered list. It is not a
snapshot: when a user leaves the list (their last server stops, they are deleted)
every later user moves one place down, and a reader walking *forward* skips one
user per departure. A culler that stops servers while it pages forward therefore
skips the very users it is looking for (a large share of them on a real Hub:
docs/benchmarks.md).

This walk goes *backward*, from the end of the list to its start. What we cull has
already been read, and sits above the next page: its departure moves nothing we
have yet to read. What can still move unread users is other people's changes
below the cursor (a user starting a server, mostly), so every page overlaps the
previous one by a few places and must contain a user we already know; if it does
not, something shifted, and the walk climbs back up until it finds known ground.
A page shorter than the limit reaches the end of the list, which is known ground
too. Reading a user twice is harmless (decisions are idempotent); skipping one
is what this module exists to prevent.

The walk is pure bookkeeping: it plans requests and judges replies. Memory is a
few pages of names, whatever the size of the Hub.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

# No pass reads more pages than this, whatever total the Hub claims (4 million users
# at 200 per page): a Hub that claims an absurd total cannot hold a pass forever.
MAX_PAGES = 20_000


class WalkError(Exception):
    """The list cannot be walked to its start: the Hub keeps answering as if it never ends."""


@dataclass(frozen=True, slots=True)
class PageRequest:
    offset: int
    limit: int


class BackwardWalk:
    """Plans and checks the pages of one pass over a list ordered by a stable key.

    Use: ``while (req := walk.next_request()) is not None``: fetch it, then
    ``walk.feed(req, limit, total, names)`` returns the indices of the items to
    process. Call :meth:`kept` for items that stay in the list (not culled), so
    they can serve as landmarks for later pages.
    """

    def __init__(self, page_size: int, start_hint: int = 0, max_climbs: int | None = None):
        if page_size < 1:
            raise ValueError("page_size must be at least 1")
        self.page_size = page_size
        self.limit: int | None = None  # what the Hub really serves (it caps page sizes)
        # Aim the first page so that, if the list has not grown, it comes back short:
        # it then holds the end of the list and no request is spent looking for it.
        first = max(0, start_hint - (page_size - self.overlap))
        self._next: PageRequest | None = PageRequest(first, page_size)
        self._found_top = False
        # Names read in the last two accepted pages, and recent survivors, in insertion order.
        self._recent_pages: list[set[str]] = []
        self._survivors: OrderedDict[str, None] = OrderedDict()
        self._max_climbs = max_climbs
        self.requests = 0
        self.climbs = 0  # pages re-read because the list shifted under us
        self.unconfirmed = 0  # pages accepted without a landmark after max_climbs
        self.total_seen: int | None = None
        self._budget: int | None = None

    @property
    def overlap(self) -> int:
        """Places each page shares with the previous one: enough to find a landmark."""
        limit = self.limit or self.page_size
        return 0 if limit < 2 else max(1, limit // 50)

    @property
    def done(self) -> bool:
        return self._next is None

    def next_request(self) -> PageRequest | None:
        return self._next

    def _known(self, name: str | None) -> bool:
        if name is None:
            return False
        return name in self._survivors or any(name in page for page in self._recent_pages)

    def kept(self, name: str) -> None:
        """Remember an item that stays listed: a landmark for the pages below it."""
        self._survivors[name] = None
        self._survivors.move_to_end(name)
        while len(self._survivors) > max(self.limit or 0, self.page_size):
            self._survivors.popitem(last=False)

    def _accept(self, req: PageRequest, names: Sequence[str | None]) -> list[int]:
        fresh = [i for i, n in enumerate(names) if not self._known(n)]
        self._recent_pages.append({n for n in names if n is not None})
        del self._recent_pages[:-2]
        if req.offset == 0:
            self._next = None
        else:
            step = (self.limit or self.page_size) - self.overlap
            self._next = PageRequest(max(0, req.offset - step), self.limit or self.page_size)
        return fresh

    def feed(
        self, req: PageRequest, limit: int, total: int, names: Sequence[str | None]
    ) -> list[int]:
        """Judge one reply; returns the indices (into ``names``) to process now."""
        self.requests += 1
        self.limit = max(1, int(limit))
        self.total_seen = max(0, int(total))
        limit = self.limit
        full = len(names) >= limit
        step = limit - self.overlap
        if names and req.offset >= self.total_seen:
            # An honest Hub counts what it pages: items past its own total are nonsense.
            self._next = None
            raise WalkError(
                f"the Hub sent {len(names)} users at offset {req.offset} of a list it says "
                f"holds {self.total_seen}"
            )
        if self._budget is None:
            # A generous bound from the first answer: three times the pages the list
            # needed then, plus room for every climb (themselves bounded by max_climbs).
            # A Hub that answers as if its list never ends stops here.
            self._budget = min(3 * (self.total_seen // max(step, 1) + 1) + 20, MAX_PAGES)
        if self.requests > self._budget + 3 * self.climbs:
            self._next = None
            raise WalkError(
                f"the user list did not end after {self.requests} pages "
                f"(the Hub said {self.total_seen} users at first)"
            )

        if not self._found_top:
            aim = max(0, total - step)
            if not names and req.offset > 0 and aim != req.offset:
                # We started past the end (the list shrank since last time): aim again.
                self._next = PageRequest(aim, limit)
                return []
            if not full:
                # A short page holds the end of the list: the walk starts here.
                self._found_top = True
                return self._accept(req, names)
            # More may lie above: jump to where the end is now said to be.
            top = max(req.offset + max(step, 1), total - step)
            self._next = PageRequest(top, limit)
            return []

        landmark = not full or self._known_any(names)
        if landmark or limit < 2:
            return self._accept(req, names)
        if self._max_climbs is not None and self.climbs >= self._max_climbs:
            # The list keeps shifting faster than we can read it; take the page as is.
            self.unconfirmed += 1
            return self._accept(req, names)
        # No known user in the overlap: the list shifted by more than the overlap
        # below us. Climb until known ground, then come back down from there.
        self.climbs += 1
        self._next = PageRequest(req.offset + step, limit)
        return []

    def _known_any(self, names: Sequence[str | None]) -> bool:
        return any(self._known(n) for n in names)
