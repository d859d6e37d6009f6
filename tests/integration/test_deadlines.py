"""Between full passes hubcull wakes at each server's deadline, re-reads that user, and culls.

Full passes are 120 s apart here, so anything culled within the test's few seconds was
culled by a deadline wake-up, not by a pass.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
from datetime import datetime, timezone

from hubcull.testing import LocalHub, ServerSpec

from .conftest import ago, assert_no_secret

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
    env = {k: v for k, v in os.environ.items() if not k.startswith("JUPYTERHUB_")}
    env["JUPYTERHUB_API_TOKEN"] = hub.token("hubcull")
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "hubcull",
        f"--url={hub.api_url}",
        f"--timeout={TIMEOUT}",
        "--cull-every=120",
        "--log-level=DEBUG",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=env,
    )
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
        proc.send_signal(signal.SIGTERM)
        out, err = await asyncio.wait_for(proc.communicate(), 15)
    stderr = err.decode()
    assert proc.returncode == 0, stderr
    assert stderr.count("Pass done") == 1, "only the first full pass ran"
    assert "GET /users/soon -> 200" in stderr, "the deadline re-reads just that user"
    assert "Deadline check of 1 user(s)" in stderr
    assert "stop server soon/: idle for 10s (timeout 10s)" in stderr
    assert_no_secret(hub, stderr + out.decode())
