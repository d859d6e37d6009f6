"""One pass at a time: a deadline check that needs a full listing must not start a
second pass while the periodic one is still walking (they would share the ledger,
the deadline marks and the probe memory)."""

from __future__ import annotations

import asyncio
from datetime import timedelta

from hubcull.engine import Engine
from hubcull.events import EventBus
from hubcull.rules import Flags, RuleSet
from testkit.fakehub import FakeHub, FakeServer
from testkit.vclock import run_virtual, virtual_now

TIMEOUT = 120
EVERY = 60


def test_a_deadline_listing_never_overlaps_the_periodic_pass() -> None:
    async def main() -> dict[str, int]:
        now = virtual_now()
        hub = FakeHub(virtual_now, latency={"list": 5.0})  # a page takes 5 s: passes are long
        # 200 servers, all due at t=65: inside the second periodic pass (t=60 to ~t=80).
        for i in range(200):
            hub.add_user(
                f"u{i:03d}", FakeServer(last_activity=now - timedelta(seconds=TIMEOUT - 65))
            )
        engine = Engine(hub, RuleSet((), Flags(timeout=TIMEOUT)), EventBus(), clock=virtual_now)
        task = asyncio.ensure_future(engine.run_forever(EVERY))
        await asyncio.sleep(150)
        engine.stopping.set()
        await task
        assert not hub.running(), "every due server was culled"
        return hub.most_in_flight

    most = run_virtual(main())
    assert most["list"] == 1, f"{most['list']} passes listed users at once"
