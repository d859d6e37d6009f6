"""The long-running schedule: a full pass every ``every`` seconds, deadline checks between.

Two loops side by side, so a long pass (a big Hub) does not delay deadlines, and a
user is never handled by both at once (user claims). Only the pass loop starts
passes: when a deadline check finds a listing cheaper than its reads, it asks that
loop for one. While a pass runs, such a check waits for it instead: the pass reads
those users itself, and what it read before their deadline is due again after it.
A pass run for deadlines counts as the periodic one and restarts the interval.
"""

from __future__ import annotations

import asyncio
import contextlib

from ..events import Emit, EngineError, PassTrigger
from .context import Clock
from .deadlines import Checked, DeadlineChecker
from .flow import UserFlow
from .passes import Passes

# Longest sleep without a deadline in sight: the loop looks again this often anyway.
IDLE_WAKE = 3600.0


async def _until(*events: asyncio.Event, timeout: float) -> None:
    """Wait until one of ``events`` is set, or ``timeout`` seconds."""
    waits = {asyncio.ensure_future(e.wait()) for e in events}
    try:
        await asyncio.wait(waits, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for w in waits:
            w.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.gather(*waits, return_exceptions=True)


async def run_scheduled(
    passes: Passes,
    deadlines: DeadlineChecker,
    flow: UserFlow,
    every: float,
    emit: Emit,
    clock: Clock,
    stopping: asyncio.Event,
) -> None:
    deadlines.run_every(every)
    wanted = asyncio.Event()  # a deadline check asked for a full pass

    async def pass_loop() -> None:
        while not stopping.is_set():
            last = passes.last_started
            if last is not None and not wanted.is_set():
                delay = every - (clock() - last).total_seconds()
                if delay > 0:
                    await _until(stopping, wanted, timeout=delay)
                    continue
            trigger = PassTrigger.DEADLINES if wanted.is_set() else PassTrigger.SCHEDULE
            wanted.clear()
            try:
                await passes.run(trigger)
            except asyncio.CancelledError:
                raise
            except Exception as e:
                emit(EngineError(clock(), "pass", e))

    async def deadline_loop() -> None:
        while not stopping.is_set():
            nxt = deadlines.next_wake()
            delay = IDLE_WAKE if nxt is None else (nxt - clock()).total_seconds()
            if delay > 0:
                deadlines.changed.clear()
                await _until(stopping, deadlines.changed, timeout=delay)
                continue
            try:
                checked = await deadlines.check(flow, pass_running=passes.running)
                if checked is Checked.NEED_PASS:
                    wanted.set()
                elif checked is Checked.AFTER_PASS:
                    await _until(stopping, passes.idle, timeout=IDLE_WAKE)
            except asyncio.CancelledError:
                raise
            except Exception as e:
                emit(EngineError(clock(), "deadline check", e))

    await asyncio.gather(pass_loop(), deadline_loop())
