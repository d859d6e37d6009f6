"""Real jupyterhub-singleuser servers (jupyter_server) behind the real proxy, not the simulation."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import datetime, timezone

import pytest
import pytest_asyncio

from hubcull.testing import LocalHub, Service

from .conftest import alive, run_hubcull, start_real

pytestmark = pytest.mark.singleuser
TIMEOUT = 6  # seconds: short, so real servers become idle within the test


@pytest_asyncio.fixture(scope="module")
async def real_hub() -> AsyncIterator[LocalHub]:
    hub = LocalHub(
        services=[Service("hubcull")],
        spawner="local",
        slow_stop_timeout=10,
        extra_config='c.Spawner.environment = {"JUPYTERHUB_ACTIVITY_INTERVAL": "3600"}\n',
    )
    await hub.start()
    yield hub
    await hub.close()


async def test_idle_real_server_is_stopped_and_its_process_ends(real_hub: LocalHub) -> None:
    hub = real_hub
    pid_idle, pid_active = await asyncio.gather(start_real(hub, "real1"), start_real(hub, "real2"))
    assert alive(pid_idle) and alive(pid_active)
    await asyncio.sleep(TIMEOUT + 1)
    # real2 is used: its activity reaches the Hub as jupyter_server would report it.
    now = datetime.now(timezone.utc).isoformat()
    status, _ = await hub.api(
        "POST", "/users/real2/activity", body={"servers": {"": {"last_activity": now}}}
    )
    assert status == 200

    run = await run_hubcull(hub, "--once", f"--timeout={TIMEOUT}")

    assert run.code == 0, run
    assert set(await hub.active_servers()) == {("real2", "")}
    for _ in range(50):
        if not alive(pid_idle):
            break
        await asyncio.sleep(0.2)
    assert not alive(pid_idle), "the culled jupyter_server process is still running"
    assert alive(pid_active)
    # The kept server still answers through the real proxy.
    session = hub._get_session()
    async with session.get(
        f"{hub.public_url}/user/real2/api/status",
        headers={"Authorization": f"token {hub.admin_token}"},
    ) as resp:
        assert resp.status == 200


async def test_dry_run_on_real_servers_reports_without_stopping(real_hub: LocalHub) -> None:
    hub = real_hub
    await hub.reset()
    pid = await start_real(hub, "real3")
    await asyncio.sleep(TIMEOUT + 1)

    run = await run_hubcull(hub, "--dry-run", f"--timeout={TIMEOUT}")

    assert run.code == 0, run
    assert run.stdout.startswith("would stop server real3/: idle for ")
    assert alive(pid)
    assert set(await hub.active_servers()) == {("real3", "")}
    await hub.reset()
