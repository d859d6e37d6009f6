"""One pass against a real Hub: the right servers and users culled, nothing else touched."""

from __future__ import annotations

import re
from datetime import datetime, timezone

from hubcull.testing import LocalHub, ServerSpec
from testkit.hublog import HubLog

from .conftest import ago, run_hubcull

NOW = datetime.now(timezone.utc)
IDLE = 7200.0  # seconds ago: well past the 600 s timeout used below
FRESH = 30.0


async def test_culls_idle_servers_and_keeps_active_ones(clean_hub: LocalHub) -> None:
    hub = clean_hub
    idle = [ServerSpec(f"idle{i}", last_activity=ago(IDLE)) for i in range(5)]
    active = [ServerSpec(f"active{i}", last_activity=ago(FRESH)) for i in range(5)]
    await hub.start_servers(idle + active)

    run = await run_hubcull(hub, "--once", "--timeout=600")

    assert run.code == 0, run
    left = set(await hub.active_servers())
    assert left == {(s.user, "") for s in active}
    for s in idle:
        assert (
            f"stop server {s.user}/: idle for 2h 00m (rule default: timeout 10m 00s)" in run.stderr
        )
    assert "stopped 5 servers" in run.stderr


async def test_one_pass_culls_100_idle_servers_with_small_pages(clean_hub: LocalHub) -> None:
    """The incumbent leaves a large share of these running: it stops while it pages
    forward. Pages of 10 make the walk long (11 pages) for the servers it culls."""
    hub = clean_hub
    specs = [ServerSpec(f"mass{i:03d}", last_activity=ago(IDLE)) for i in range(100)]
    # A few active users spread among them must survive.
    specs += [ServerSpec(f"mass{i:03d}x", last_activity=ago(FRESH)) for i in range(0, 100, 25)]
    await hub.start_servers(specs, concurrency=32)

    log = HubLog(hub.log_path)
    mark = log.mark()
    run = await run_hubcull(hub, "--once", "--timeout=600", "--api-page-size=10", debug=False)

    assert run.code == 0, run
    left = set(await hub.active_servers())
    assert left == {(f"mass{i:03d}x", "") for i in range(0, 100, 25)}
    assert "stopped 100 servers" in run.stderr
    # The stops are confirmed by listing again, not by one look per stop. (Counted in
    # the Hub's log, by hubcull's token: the stop limit's pings of the Hub's version,
    # a few a second while stops wait, carry no token and are no reads.)
    requests = len(log.by("hubcull", mark))
    assert 100 < requests < 100 + 40, requests
    assert int(re.search(r"\((\d+) Hub requests\)", run.stderr)[1]) >= requests


async def test_pending_servers_are_never_sent_a_delete(clean_hub: LocalHub) -> None:
    """A DELETE would cancel the spawn on JupyterHub >= 5.1."""
    hub = clean_hub
    # Its recorded activity is ancient, but the Hub is still spawning it.
    pending = ServerSpec("slowstart", last_activity=ago(IDLE), spawn_delay=60)
    await hub.start_servers([pending, ServerSpec("idle", last_activity=ago(IDLE))])

    run = await run_hubcull(hub, "--once", "--timeout=600", "--max-age=60")

    assert run.code == 0, run
    active = await hub.active_servers()
    assert set(active) == {("slowstart", "")}
    assert active[("slowstart", "")]["pending"] == "spawn"
    assert "Not culling slowstart/: pending 'spawn'" in run.stderr
    assert "DELETE /users/slowstart" not in run.stderr


async def test_named_servers_are_stopped_but_kept(clean_hub: LocalHub) -> None:
    hub = clean_hub
    await hub.start_servers(
        [
            ServerSpec("nina", "", last_activity=ago(FRESH)),
            ServerSpec("nina", "gpu", last_activity=ago(IDLE)),
        ]
    )

    run = await run_hubcull(hub, "--once", "--timeout=600")

    assert run.code == 0, run
    assert set(await hub.active_servers()) == {("nina", "")}
    status, model = await hub.api("GET", "/users/nina", params={"include_stopped_servers": "1"})
    assert status == 200
    assert "gpu" in model["servers"], "a stopped named server stays, for the user to restart"


async def test_remove_named_servers_deletes_them(clean_hub: LocalHub) -> None:
    hub = clean_hub
    await hub.start_servers(
        [
            ServerSpec("rita", "", last_activity=ago(IDLE)),
            ServerSpec("rita", "gpu", last_activity=ago(IDLE)),
        ]
    )

    run = await run_hubcull(hub, "--once", "--timeout=600", "--remove-named-servers")

    assert run.code == 0, run
    assert "remove server rita/gpu" in run.stderr
    assert "stop server rita/:" in run.stderr
    status, model = await hub.api("GET", "/users/rita", params={"include_stopped_servers": "1"})
    assert status == 200
    assert "gpu" not in model["servers"]
    assert not any(s.get("ready") for s in model["servers"].values())


async def test_default_and_named_toggles(clean_hub: LocalHub) -> None:
    hub = clean_hub
    specs = [
        ServerSpec("tom", "", last_activity=ago(IDLE)),
        ServerSpec("tom", "lab", last_activity=ago(IDLE)),
    ]
    await hub.start_servers(specs)

    run = await run_hubcull(hub, "--once", "--timeout=600", "--cull-named-servers=false")
    assert run.code == 0, run
    assert set(await hub.active_servers()) == {("tom", "lab")}

    await hub.start_servers([ServerSpec("tom", "", last_activity=ago(IDLE))])
    run = await run_hubcull(hub, "--once", "--timeout=600", "--cull-default-servers=False")
    assert run.code == 0, run
    assert set(await hub.active_servers()) == {("tom", "")}


async def test_max_age_culls_active_servers(clean_hub: LocalHub) -> None:
    hub = clean_hub
    await hub.start_servers(
        [
            ServerSpec("old", started=ago(4000), last_activity=ago(FRESH)),
            ServerSpec("young", started=ago(100), last_activity=ago(FRESH)),
        ]
    )

    run = await run_hubcull(hub, "--once", "--timeout=600", "--max-age=3600")

    assert run.code == 0, run
    assert set(await hub.active_servers()) == {("young", "")}
    assert "stop server old/: running for 1h 06m (rule default: max-age 1h 00m)" in run.stderr


async def test_dry_run_changes_nothing_and_says_why(clean_hub: LocalHub) -> None:
    hub = clean_hub
    await hub.start_servers(
        [
            ServerSpec("dora", "", last_activity=ago(IDLE)),
            ServerSpec("dora", "big", started=ago(90000), last_activity=ago(FRESH)),
            ServerSpec("eve", "", last_activity=ago(FRESH)),
        ]
    )
    status, _ = await hub.api("POST", "/users", body={"usernames": ["ghost"]})
    assert status == 201
    await hub.api("POST", "/users/ghost/activity", body={"last_activity": ago(IDLE).isoformat()})
    before_servers = await hub.active_servers()
    before_users = await hub.user_names()

    run = await run_hubcull(hub, "--dry-run", "--timeout=600", "--max-age=86400", "--cull-users")

    assert run.code == 0, run
    assert await hub.active_servers() == before_servers
    assert await hub.user_names() == before_users
    lines = sorted(run.stdout.splitlines())
    assert lines[:2] == [
        "would delete user ghost: inactive for 2h 00m (rule default: user-timeout 10m 00s)",
        "would stop server dora/: idle for 2h 00m (rule default: timeout 10m 00s)",
    ], run.stdout
    # dora/big was used 30 s before hubcull started; a loaded machine takes a while.
    assert re.fullmatch(
        r"would stop server dora/big: running for 1d 1h \(rule default: max-age 1d 0h\), "
        r"idle for 3\ds",
        lines[2],
    ), run.stdout
    assert len(lines) == 3, run.stdout
    assert "DELETE" not in run.stderr


async def test_users_are_deleted_only_after_all_their_servers_stop(clean_hub: LocalHub) -> None:
    hub = clean_hub
    await hub.start_servers(
        [
            # Both servers idle: both stopped, then the user deleted.
            ServerSpec("gone", "", last_activity=ago(IDLE)),
            ServerSpec("gone", "nb", last_activity=ago(IDLE)),
            # One server still active: the idle one is stopped, the user stays.
            ServerSpec("half", "", last_activity=ago(IDLE)),
            ServerSpec("half", "nb", last_activity=ago(FRESH)),
            # Slow to stop (answered 202 by the Hub): followed up, then deleted.
            ServerSpec("slow", "", last_activity=ago(IDLE), stop_delay=3),
        ]
    )

    run = await run_hubcull(hub, "--once", "--timeout=600", "--cull-users")

    assert run.code == 0, run
    users = await hub.user_names()
    assert "gone" not in users
    assert "slow" not in users
    assert "half" in users
    assert set(await hub.active_servers()) == {("half", "nb")}
    assert "slow/ is slow to stop" in run.stderr
    # Deletion is decided on the activity seen before the stop (the stop stamps "now").
    assert "delete user gone: inactive for 2h 00m" in run.stderr


async def test_inactive_users_without_servers_are_deleted(clean_hub: LocalHub) -> None:
    hub = clean_hub
    status, _ = await hub.api("POST", "/users", body={"usernames": ["old1", "old2", "new1"]})
    assert status == 201
    for name in ("old1", "old2"):
        await hub.api(
            "POST", f"/users/{name}/activity", body={"last_activity": ago(IDLE).isoformat()}
        )
    await hub.api("POST", "/users/new1/activity", body={"last_activity": ago(FRESH).isoformat()})

    run = await run_hubcull(hub, "--once", "--timeout=600", "--cull-users", "--api-page-size=2")

    assert run.code == 0, run
    users = await hub.user_names()
    assert {"old1", "old2"} & users == set()
    assert "new1" in users


async def test_admins_are_spared_with_cull_admin_users_false(clean_hub: LocalHub) -> None:
    hub = clean_hub
    await hub.create_users(["boss"], admin=True)
    await hub.start_servers(
        [ServerSpec("boss", last_activity=ago(IDLE)), ServerSpec("worker", last_activity=ago(IDLE))]
    )

    run = await run_hubcull(
        hub, "--once", "--timeout=600", "--cull-users", "--cull-admin-users=False"
    )

    assert run.code == 0, run
    users = await hub.user_names()
    assert "boss" in users, "admins are spared"
    assert "worker" not in users
    assert not await hub.active_servers(), "an admin's idle server is still culled"
    assert "Not deleting user boss: admins are spared" in run.stderr
