"""Who is handling which user right now: a pass and a deadline check never both act on one.

A deadline check can come due for a user the periodic pass is about to handle, or is
handling. Each takes a claim on the user's name before acting; whoever finds it taken
leaves that user to the other (who reads the same Hub and decides the same way).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager


class UserClaims:
    def __init__(self) -> None:
        self._held: set[str] = set()

    @asynccontextmanager
    async def claim(self, name: str) -> AsyncIterator[bool]:
        """``async with claims.claim(name) as mine:`` ``mine`` is False when someone
        else holds the user; the claim is released when the block ends, however."""
        if name in self._held:
            yield False
            return
        self._held.add(name)
        try:
            yield True
        finally:
            self._held.discard(name)
