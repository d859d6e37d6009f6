"""Between full passes hubcull wakes at each server's deadline, re-reads that user, and culls.

Full passes are 120 s apart here, so anything culled within the test's few seconds was
culled by a deadline wake-up, not by a pass.
"""

from __future__ import annotations

import asyncio
import time
from datetime import datetime, timezone

from hubcull.testing import LocalHub, ServerSpec

from .conftest import ago, start_hubcull, stop_hubcull

TIMEOUT = 10


async def gone(hub: LocalHub, user: str, within: float) -> float | None:
    """Seconds until user's server is gone, or None if it outlived `within`."""
    start = time.monotonic()
    while time.monotonic() - start < within:
        if (user, "") not in await hub.active_servers():
            return time.monotonic() - start
        await asyncio.sleep(0.2)
    return None


async def test_servers_are_culled_at_their_deadline_not_a_pass_later(clean_hub: LocalHub) -> None:
    hub = clean_hub
    await hub.start_servers(
        [
            ServerSpec("soon", last_activity=ago(TIMEOUT - 4)),  # due in ~4 s
            ServerSpec("moved", last_activity=ago(TIMEOUT - 6)),  # due in ~6 s, then used
            ServerSpec("later", last_activity=ago(0)),  # due in ~10 s, but used all along
        ]
    )
    proc = await start_hubcull(hub, f"--timeout={TIMEOUT}", "--cull-every=120")
    try:
        await asyncio.sleep(2)

        async def keep_using(user: str, until: float) -> None:
            while time.monotonic() < until:
                now = datetime.now(timezone.utc).isoformat()
                await hub.api(
                    "POST",
                    f"/users/{user}/activity",
                    body={"last_activity": now, "servers": {"": {"last_activity": now}}},
                )
                await asyncio.sleep(1)

        # "moved" is used once, before its deadline: its deadline moves 10 s later.
        now = datetime.now(timezone.utc).isoformat()
        await hub.api(
            "POST",
            "/users/moved/activity",
            body={"last_activity": now, "servers": {"": {"last_activity": now}}},
        )
        user_of_later = asyncio.ensure_future(keep_using("later", time.monotonic() + 25))

        assert await gone(hub, "soon", within=15) is not None, "not culled at its deadline"
        assert ("moved", "") in await hub.active_servers(), "culled on stale activity"
        assert await gone(hub, "moved", within=20) is not None, "its moved deadline was missed"
        assert ("later", "") in await hub.active_servers()
        await user_of_later
    finally:
        stderr = await stop_hubcull(hub, proc)
    assert stderr.count("Pass done") == 1, "only the first full pass ran"
    assert "GET /users/soon -> 200" in stderr, "the deadline re-reads just that user"
    assert "Deadline check of 1 user(s)" in stderr
    assert "stop server soon/: idle for 10s (rule default: timeout 10s)" in stderr


async def test_without_deadline_checks_a_due_server_waits_for_the_next_pass(
    clean_hub: LocalHub,
) -> None:
    hub = clean_hub
    await hub.start_servers([ServerSpec("due", last_activity=ago(TIMEOUT - 6))])
    proc = await start_hubcull(
        hub, f"--timeout={TIMEOUT}", "--cull-every=20", "--deadline-checks=off"
    )
    try:
        # Due ~6 s from now, after hubcull's first pass (even if it takes a few seconds to
        # start on a loaded machine); the next pass comes 20 s after the first.
        await asyncio.sleep(12)
        assert ("due", "") in await hub.active_servers(), "culled between passes"
        assert await gone(hub, "due", within=20) is not None, "the next pass did not cull it"
    finally:
        log = await stop_hubcull(hub, proc)
    assert "Deadline check" not in log
    assert log.count("Pass done") >= 2


async def test_a_read_budget_keeps_reads_within_a_culler_listing_every_interval(
    clean_hub: LocalHub,
) -> None:
    """6 servers fall due 4 s apart, among 46 in use (52 users: two pages of 50). With
    one re-read each (--deadline-checks=always) that is 6 reads on top of the passes; a
    culler listing every 10 s in pages of 50 reads 3 per pass (version + 2 pages). Under
    the budget, hubcull's pages of 200 cost 1, the 2 saved per interval (a read every
    3.3 s) pay for deadline checks: some servers are culled between passes, all by the
    pass after, and reads stay within the reference. (Servers due closer together than
    the budget refills are checked together, by a full pass: a loaded machine that
    shifts the passes must still leave some due alone.)"""
    hub = clean_hub
    every, timeout = 10, 60
    busy = [ServerSpec(f"busy-{i:02d}", last_activity=ago(0)) for i in range(46)]
    await hub.start_servers(busy)  # first: starting 46 servers takes a while on a loaded machine
    # Due 8-28 s from now: after hubcull's first pass, and the budget pays for its first
    # deadline check ~7 s after that pass (1 read of 3 per 10 s overdrawn).
    due = [ServerSpec(f"due-{i:02d}", last_activity=ago(timeout - 8 - 4 * i)) for i in range(6)]
    await hub.start_servers(due)
    started = time.monotonic()
    proc = await start_hubcull(
        hub, f"--timeout={timeout}", f"--cull-every={every}", "--deadline-checks=budget"
    )
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            running = {u for u, _ in await hub.active_servers()}
            if not any(s.user in running for s in due):
                break
            await asyncio.sleep(0.5)
        elapsed = time.monotonic() - started
    finally:
        log = await stop_hubcull(hub, proc)
    running = {u for u, _ in await hub.active_servers()}
    assert not [s.user for s in due if s.user in running], "a due server was never culled"
    assert all(s.user in running for s in busy), "a server in use was culled"
    lines = log.splitlines()
    assert log.count("Pass done") >= 2, log
    paid = [x for x in lines if "Deadline check of" in x and " stopped 0 servers" not in x]
    assert paid, "no deadline check was paid for between passes:\n" + log
    reads = [line for line in lines if "GET /users" in line and " -> " in line]
    # The reference culler: one pass at start and one every interval since, 3 reads each.
    reference = 3 * (int(elapsed // every) + 1)
    assert 0 < len(reads) <= reference, (len(reads), reference)
    assert "Read budget: 3 Hub reads per 10" in log
    assert "GET /users?state=active&offset=0&limit=200" in log
