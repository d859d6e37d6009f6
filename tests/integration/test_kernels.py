"""--check-kernels with real jupyterhub-singleuser servers, real ipykernel kernels, the real proxy.

The Hub in these tests never learns of kernel or terminal traffic by itself (no proxy
polling, activity reports once an hour): exactly the blind spot --check-kernels fills.
"""

from __future__ import annotations

import asyncio
import re
import sys
import time
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio

from hubcull.activity import ProbeError, Prober
from hubcull.engine import Engine, EngineOptions, utcnow
from hubcull.events import Culling, ProbeFailed
from hubcull.hub import HubClient, HubUnreachable, TokenSource
from hubcull.rules import Flags, RuleSet
from hubcull.testing import LocalHub, Service
from testkit.recorder import Recorder

from .conftest import assert_no_secret, run_hubcull, start_real
from .jupyter_client_ws import JupyterClient

pytestmark = pytest.mark.singleuser
TIMEOUT = 8


def client(hub: LocalHub, user: str) -> JupyterClient:
    return JupyterClient(hub._get_session(), f"{hub.public_url}/user/{user}/", hub.admin_token)


def blind_hub(**kwargs: object) -> LocalHub:
    return LocalHub(
        services=[Service("hubcull")],
        spawner="local",
        extra_config='c.Spawner.environment = {"JUPYTERHUB_ACTIVITY_INTERVAL": "3600"}\n',
        **kwargs,  # type: ignore[arg-type]
    )


@pytest_asyncio.fixture(scope="module")
async def kernel_hub() -> AsyncIterator[LocalHub]:
    hub = blind_hub()
    await hub.start()
    yield hub
    await hub.close()


def probe_args(hub: LocalHub, *extra: str) -> list[str]:
    return ["--check-kernels", f"--proxy-url={hub.public_url}", f"--timeout={TIMEOUT}", *extra]


async def test_busy_kernel_kept_with_the_option_until_the_busy_cap(kernel_hub: LocalHub) -> None:
    hub = kernel_hub
    await start_real(hub, "busy")
    jc = client(hub, "busy")
    kernel = await jc.start_kernel()
    # A long computation with no output; then the browser tab is closed.
    await jc.execute(kernel, "import time\nwhile True:\n    time.sleep(1)\n", wait=False)
    busy_since = time.monotonic()
    await asyncio.sleep(TIMEOUT + 1)

    # Without the option the Hub's view decides: the server looks idle.
    run = await run_hubcull(hub, "--dry-run", f"--timeout={TIMEOUT}")
    assert run.code == 0, run
    assert run.stdout.startswith("would stop server busy/: idle for "), run.stdout

    # With it, the busy kernel keeps the server, and the decision says why.
    run = await run_hubcull(hub, "--once", *probe_args(hub, "--busy-timeout=25"))
    assert run.code == 0, run
    assert ("busy", "") in await hub.active_servers()
    assert re.search(
        r"Keeping busy/, idle in the Hub's view: kernel busy \(python3\), no other activity "
        r"for \d+s; kept up to busy-timeout 25s \(1 kernel \(1 busy\)",
        run.stderr,
    ), run.stderr
    # Probing is not activity: the kernel list was read without touching its activity.
    assert "api/kernels?no_track_activity=1" in run.stderr

    # Once the kernel has been busy past the cap with nothing else going on, it goes.
    await asyncio.sleep(max(0.0, 26 - (time.monotonic() - busy_since)))
    run = await run_hubcull(hub, "--once", *probe_args(hub, "--busy-timeout=25"))
    assert run.code == 0, run
    assert "stop server busy/: kernel busy (python3) with no other activity" in run.stderr
    assert "past busy-timeout 25s" in run.stderr
    assert ("busy", "") not in await hub.active_servers()


async def test_idle_kernels_with_old_activity_are_culled(kernel_hub: LocalHub) -> None:
    hub = kernel_hub
    await start_real(hub, "calm")
    jc = client(hub, "calm")
    kernel = await jc.start_kernel()
    await jc.execute(kernel, "x = 1 + 1")
    await asyncio.sleep(TIMEOUT + 1)

    run = await run_hubcull(hub, "--once", *probe_args(hub))

    assert run.code == 0, run
    assert "stop server calm/: idle for" in run.stderr
    assert "server confirms: 1 kernel, all idle" in run.stderr
    assert ("calm", "") not in await hub.active_servers()


async def test_terminal_in_use_keeps_its_server(kernel_hub: LocalHub) -> None:
    hub = kernel_hub
    await start_real(hub, "term")
    jc = client(hub, "term")
    terminal = await jc.start_terminal()

    async def keep_typing() -> None:
        while True:
            await jc.type_in_terminal(terminal, "echo working\r")
            await asyncio.sleep(2)

    # Someone works in the terminal throughout, also while hubcull runs: on a loaded
    # machine, starting hubcull twice can take longer than the timeout by itself.
    typing = asyncio.create_task(keep_typing())
    try:
        await asyncio.sleep(TIMEOUT + 1)
        run = await run_hubcull(hub, "--dry-run", f"--timeout={TIMEOUT}")
        assert run.stdout.startswith("would stop server term/"), "the Hub cannot see terminals"

        run = await run_hubcull(hub, "--once", *probe_args(hub))
    finally:
        typing.cancel()
    assert run.code == 0, run
    assert ("term", "") in await hub.active_servers()
    assert re.search(
        r"Keeping term/, idle in the Hub's view: the server reports activity", run.stderr
    )
    assert "1 terminal" in run.stderr


async def test_unprobeable_real_server_falls_back_with_one_warning(kernel_hub: LocalHub) -> None:
    """A token without access:servers: the server refuses the probe; the Hub's view decides."""
    hub = kernel_hub
    await start_real(hub, "closed")
    await asyncio.sleep(TIMEOUT + 1)
    token = await hub.new_token(["list:users", "read:servers", "delete:servers"])
    # The start-up check refuses the option without access:servers ...
    run = await run_hubcull(hub, "--once", *probe_args(hub), token=token)
    assert run.code == 2, run
    assert "access:servers (to look inside servers (--check-kernels))" in run.stderr
    # ... so drive the engine directly to see what a refused probe does.
    events = Recorder()
    async with HubClient(hub.api_url, TokenSource(token)) as hub_client:

        async def fetch(url: str) -> tuple[int, bytes]:
            try:
                return await hub_client.probe_get(url, 10)
            except HubUnreachable as e:
                raise ProbeError(e.cause) from None

        engine = Engine(
            hub_client,
            RuleSet((), Flags(timeout=TIMEOUT)),
            events,
            EngineOptions(dry_run=True),
            prober=Prober(fetch, utcnow, proxy_url=hub.public_url),
        )
        for _ in range(3):
            report = await engine.run_pass()
            assert report.ok
    failures = [f for f in events.of(ProbeFailed) if f.user == "closed"]
    assert len(failures) == 3 and [f.first for f in failures] == [True, False, False], (
        "one warning per server, not one per pass"
    )
    assert "access:servers" in failures[0].error
    culls = [e.verdict for e in events.of(Culling) if e.verdict.subject == "closed/"]
    assert len(culls) == 3, "each pass completed and judged on the Hub's view"
    assert all(v.reason.startswith("idle for") for v in culls)
    assert_no_secret(hub, repr(events.events))


async def test_probing_alone_never_keeps_a_server_alive() -> None:
    """With the proxy's activity polled into the Hub, every probe lifts the Hub's view.

    A server is probed again and again while its kernel computes; once the cell ends it
    must be culled about one timeout later, however often it was probed.
    """
    hub = blind_hub(last_activity_interval=1)
    await hub.start()
    try:
        await start_real(hub, "watched")
        jc = client(hub, "watched")
        kernel = await jc.start_kernel()
        await jc.execute(kernel, "import time\ntime.sleep(14)\n", wait=False)
        compute_ends = time.monotonic() + 14
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "hubcull",
            f"--url={hub.api_url}",
            *probe_args(hub, "--cull-every=1"),
            "--log-level=DEBUG",
            env={"JUPYTERHUB_API_TOKEN": hub.token("hubcull"), "PATH": "/usr/bin:/bin"},
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        lifted = False
        culled_at = None
        deadline = compute_ends + TIMEOUT + 15
        while time.monotonic() < deadline:
            active = await hub.active_servers()
            if ("watched", "") not in active:
                culled_at = time.monotonic()
                break
            status, model = await hub.api("GET", "/users/watched")
            last = model["servers"][""]["last_activity"]
            started = model["servers"][""]["started"]
            lifted = lifted or last > started
            await asyncio.sleep(0.5)
        proc.terminate()
        out, err = await proc.communicate()
        stderr = err.decode()
    finally:
        await hub.close()
    assert culled_at is not None, stderr[-4000:]
    assert lifted, "the Hub's last_activity never moved: the hazard was not exercised"
    assert stderr.count("/api/status?no_track_activity=1") >= 3, "probed only a few times"
    assert culled_at >= compute_ends, "culled while the kernel was still busy"
    assert culled_at <= compute_ends + TIMEOUT + 8, "probing kept the server alive too long"
    assert_no_secret(hub, stderr + out.decode())
