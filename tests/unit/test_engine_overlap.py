"""One pass at a time: a deadline check that needs a full listing must not start a
second pass while the periodic one is still walking (they would share the ledger,
the deadline marks and the probe memory)."""

from __future__ import annotations

import asyncio
import logging
from datetime import timedelta

import pytest

from hubcull.engine import Culler, run_scheduled
from hubcull.limits import AdaptiveGate, AdaptiveLimit
from hubcull.policy import Rules
from testkit.fakehub import FakeHub, FakeServer
from testkit.vclock import run_virtual, virtual_now

TIMEOUT = 120
EVERY = 60


@pytest.mark.xfail(
    strict=True, reason="today's engine runs a deadline's pass beside the periodic one"
)
def test_a_deadline_listing_never_overlaps_the_periodic_pass() -> None:
    async def main() -> dict[str, int]:
        now = virtual_now()
        hub = FakeHub(virtual_now, latency=5.0)  # each request takes 5 s: passes are long
        hub.stop_gate = AdaptiveGate(AdaptiveLimit(cap=10))  # type: ignore[attr-defined]
        # 200 servers, all due at t=65: inside the second periodic pass (t=60 to ~t=80).
        for i in range(200):
            hub.add_user(
                f"u{i:03d}", FakeServer(last_activity=now - timedelta(seconds=TIMEOUT - 65))
            )
        log = logging.getLogger("test-overlap")
        culler = Culler(
            hub, Rules(timeout=TIMEOUT), clock=virtual_now, log=log, emit=lambda s: None
        )
        task = asyncio.ensure_future(run_scheduled(culler, EVERY, log))
        await asyncio.sleep(150)
        culler.stopping.set()
        await task
        assert not hub.running(), "every due server was culled"
        return hub.most_in_flight

    most = run_virtual(main())
    assert most["list"] == 1, f"{most['list']} passes listed users at once"
