"""hubcull as a long-running process: as a Hub-managed service, and through failed passes."""

from __future__ import annotations

import asyncio
import signal
import sys
import time

from hubcull.testing import CULLER_SCOPES, LocalHub, ServerSpec, Service
from testkit.faults import FaultProxy, FaultRule

from .conftest import ago, assert_no_secret, run_hubcull, start_hubcull


async def wait_until(predicate, timeout: float, what: str) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not await predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.3)


async def test_managed_service_culls_with_the_hubs_environment() -> None:
    """The Hub starts hubcull with only its own environment: token and URL come from there."""
    service = Service(
        "culler",
        scopes=CULLER_SCOPES,
        command=[sys.executable, "-m", "hubcull", "--timeout=600", "--cull-every=1"],
    )
    async with LocalHub(services=[service], slow_stop_timeout=1) as hub:
        # The service may cull sleepy/ before it is even seen ready: do not wait for that.
        await hub.start_servers(
            [
                ServerSpec("sleepy", last_activity=ago(7200)),
                ServerSpec("busy", last_activity=ago(5)),
            ],
            wait_ready=False,
        )
        await hub.wait_for([("busy", "")])

        async def only_busy_left() -> bool:
            return set(await hub.active_servers()) == {("busy", "")}

        await wait_until(only_busy_left, 30, "the managed service to cull sleepy/")
        log = hub.log_path.read_text()
    ours = [line for line in log.splitlines() if " hubcull " in line]
    assert any("Connected to JupyterHub" in line and "as service 'culler'" in line for line in ours)
    assert any("stop server sleepy/: idle for 2h 00m" in line for line in ours)
    assert_no_secret(hub, "\n".join(ours))


async def test_once_exits_1_when_a_stop_fails_and_culls_the_rest(clean_hub: LocalHub) -> None:
    hub = clean_hub
    await hub.start_servers(
        [
            ServerSpec("victim", last_activity=ago(7200)),
            ServerSpec("other", last_activity=ago(7200)),
        ]
    )
    async with FaultProxy(f"http://127.0.0.1:{hub.hub_port}") as proxy:
        proxy.add_rule(FaultRule("status", method="DELETE", path="/users/victim/", status=500))
        run = await run_hubcull(hub, "--once", "--timeout=600", url=proxy.url + "/hub/api")
    assert run.code == 1, run
    assert "Could not stop victim/: DELETE /users/victim/server: 500" in run.stderr
    assert "Pass done" in run.stderr and "1 errors" in run.stderr
    assert set(await hub.active_servers()) == {("victim", "")}


async def test_failed_passes_do_not_end_the_long_running_process(clean_hub: LocalHub) -> None:
    hub = clean_hub
    await hub.start_servers([ServerSpec("later", last_activity=ago(7200))])
    async with FaultProxy(f"http://127.0.0.1:{hub.hub_port}") as proxy:
        # The first two listings fail even after their retries (4 attempts each):
        # two passes fail, the third culls.
        proxy.add_rule(FaultRule("status", method="GET", path=r"/users\?", status=500, times=8))
        proc = await start_hubcull(
            hub, "--timeout=600", "--cull-every=1", url=proxy.url + "/hub/api"
        )
        try:

            async def culled() -> bool:
                return not await hub.active_servers()

            await wait_until(culled, 30, "the third pass to cull later/")
            assert proc.returncode is None, "hubcull exited after a failed pass"
            started = time.monotonic()
            proc.send_signal(signal.SIGTERM)
            out, err = await asyncio.wait_for(proc.communicate(), 15)
            assert time.monotonic() - started < 10
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.communicate()
    stderr = err.decode()
    assert proc.returncode == 0, stderr
    assert stderr.count("Pass stopped early: GET /users?state=active") == 2, stderr
    assert "stop server later/" in stderr
    assert "Received SIGTERM" in stderr
    assert_no_secret(hub, stderr + out.decode())
    assert "Traceback" not in stderr
