"""An asyncio event loop on virtual time: sleeping costs nothing, and time is exact.

Engine unit tests wait for deadlines, 202 follow-ups and intervals of minutes. On this
loop, whenever nothing is ready to run, the clock jumps straight to the next timer
instead of waiting for it, so an hour of culling runs in milliseconds and every
moment is reproducible. There is no real I/O in these tests; a test that would wait
for something that never comes (a deadlock) fails at once instead of hanging.

    result = run_virtual(main())      # main() sees loop.time() start at 0.0
"""

from __future__ import annotations

import asyncio
import selectors
from collections.abc import Coroutine
from datetime import datetime, timedelta, timezone
from typing import Any, TypeVar

T = TypeVar("T")

# The wall-clock moment that virtual time 0.0 stands for.
EPOCH = datetime(2030, 1, 1, 12, 0, 0, tzinfo=timezone.utc)


class Deadlock(RuntimeError):
    """Everything waits and no timer is set: in real time the loop would hang forever."""


class _JumpingSelector(selectors.BaseSelector):
    """Real readiness for the loop's own self-pipe, and a clock jump instead of a wait."""

    def __init__(self, loop: VirtualTimeLoop) -> None:
        self._loop = loop
        self._real = selectors.DefaultSelector()

    def register(self, fileobj: Any, events: int, data: Any = None) -> selectors.SelectorKey:
        return self._real.register(fileobj, events, data)

    def unregister(self, fileobj: Any) -> selectors.SelectorKey:
        return self._real.unregister(fileobj)

    def modify(self, fileobj: Any, events: int, data: Any = None) -> selectors.SelectorKey:
        return self._real.modify(fileobj, events, data)

    def get_map(self) -> Any:
        return self._real.get_map()

    def close(self) -> None:
        self._real.close()

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        ready = self._real.select(0)
        if ready:
            return ready
        if timeout is None:
            raise Deadlock("every task waits and no timer is set")
        if timeout > 0:
            self._loop.advance(timeout)
        return []


class VirtualTimeLoop(asyncio.SelectorEventLoop):
    """``loop.time()`` is virtual; it moves only when every task waits on a timer."""

    def __init__(self, start: float = 0.0) -> None:
        self._now = start
        super().__init__(selector=_JumpingSelector(self))

    def time(self) -> float:
        return self._now

    def advance(self, seconds: float) -> None:
        self._now += seconds


def run_virtual(coro: Coroutine[Any, Any, T], start: float = 0.0) -> T:
    """Run ``coro`` to completion on a fresh virtual-time loop."""
    loop = VirtualTimeLoop(start)
    try:
        return loop.run_until_complete(coro)
    finally:
        loop.close()


def virtual_now() -> datetime:
    """The wall-clock moment of the running loop's virtual time (a ``clock`` for the engine)."""
    return EPOCH + timedelta(seconds=asyncio.get_running_loop().time())
