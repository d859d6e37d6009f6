"""Drop-in configuration: jupyterhub-idle-culler's config files, hooks and flags work unchanged."""

from __future__ import annotations

import asyncio
import re
import sys
from pathlib import Path

from hubcull.testing import LocalHub, ServerSpec

from .conftest import ago, run_hubcull


def half_hour_idle() -> list[ServerSpec]:
    return [ServerSpec("cfg", last_activity=ago(1800))]


async def test_incumbent_config_file_is_loaded(clean_hub: LocalHub, tmp_path: Path) -> None:
    """An idle_culler_config.py written for jupyterhub-idle-culler is picked up as is."""
    await clean_hub.start_servers(half_hour_idle())
    (tmp_path / "idle_culler_config.py").write_text("c.IdleCuller.timeout = 3600\n")

    run = await run_hubcull(clean_hub, "--dry-run")
    assert run.code == 0, run
    assert run.stdout == "", "30 minutes idle is under the config file's one hour"

    # The command line wins over the config file.
    run = await run_hubcull(clean_hub, "--dry-run", "--timeout=600")
    assert "would stop server cfg/: idle for 30m" in run.stdout


async def test_hubcull_config_file_and_explicit_config(clean_hub: LocalHub, tmp_path: Path) -> None:
    await clean_hub.start_servers(half_hour_idle())
    (tmp_path / "hubcull_config.py").write_text("c.HubCull.timeout = 900\n")
    run = await run_hubcull(clean_hub, "--dry-run")
    assert re.match(
        r"would stop server cfg/: idle for 30m \d\ds \(rule default: timeout 15m 00s\)", run.stdout
    )

    other = tmp_path / "elsewhere.py"
    other.write_text("c.IdleCuller.timeout = 7200\n")
    run = await run_hubcull(clean_hub, "--dry-run", f"--config={other}")
    assert run.code == 0 and run.stdout == "", run


async def test_broken_config_file_is_one_line(clean_hub: LocalHub, tmp_path: Path) -> None:
    (tmp_path / "hubcull_config.py").write_text("c.IdleCuller.timeout = (\n")
    run = await run_hubcull(clean_hub, "--once", debug=False)
    assert run.code == 2, run
    assert run.stderr.strip() == (
        "hubcull: error: config file hubcull_config.py, line 1: '(' was never closed"
    )

    (tmp_path / "hubcull_config.py").write_text("x = 1\nc.IdleCuller.timeout = undefined\n")
    run = await run_hubcull(clean_hub, "--once", debug=False)
    assert run.code == 2, run
    assert run.stderr.strip() == (
        "hubcull: error: config file hubcull_config.py, line 2: "
        "NameError: name 'undefined' is not defined"
    )

    (tmp_path / "hubcull_config.py").write_text("c.IdleCuller.timeout = 'soon'\n")
    run = await run_hubcull(clean_hub, "--once", debug=False)
    assert run.code == 2, run
    assert run.stderr.strip() == "hubcull: error: --timeout: expected an int, not the str 'soon'."


ARBITER = """
def arbiter(inactive, inactive_limit, server):
    # Named server "scratch" goes after 1 minute, everything else keeps the timeout.
    limit = 60 if server["name"] == "scratch" else inactive_limit
    return inactive.total_seconds() >= limit
c.IdleCuller.cull_arbiter_hook = arbiter
"""

ASYNC_ARBITER = """
import asyncio
import re
async def arbiter(inactive, inactive_limit, server):
    await asyncio.sleep(0)
    profile = (server.get("user_options") or {}).get("profile")
    return profile == "short" and inactive.total_seconds() > 60
c.IdleCuller.cull_arbiter_hook = arbiter
"""


async def test_cull_arbiter_hook(clean_hub: LocalHub, tmp_path: Path) -> None:
    hub = clean_hub
    await hub.start_servers(
        [
            ServerSpec("arb", "", last_activity=ago(300)),
            ServerSpec("arb", "scratch", last_activity=ago(300)),
        ]
    )
    (tmp_path / "idle_culler_config.py").write_text(ARBITER)
    run = await run_hubcull(hub, "--once", "--timeout=3600")
    assert run.code == 0, run
    assert set(await hub.active_servers()) == {("arb", "")}
    # The seconds are left open: on a loaded machine the pass may judge it a second or two
    # after the server was started with 5 minutes of idleness.
    assert re.search(
        r"stop server arb/scratch: idle for 5m 0\ds; cull_arbiter_hook said cull \(rule default\)",
        run.stderr,
    ), run


async def test_async_cull_arbiter_hook_sees_the_server_model(
    clean_hub: LocalHub, tmp_path: Path
) -> None:
    hub = clean_hub
    await hub.start_servers(
        [
            ServerSpec("p1", last_activity=ago(300), options={"profile": "short"}),
            ServerSpec("p2", last_activity=ago(300), options={"profile": "long"}),
        ]
    )
    (tmp_path / "hubcull_config.py").write_text(ASYNC_ARBITER)
    run = await run_hubcull(hub, "--once", "--timeout=3600")
    assert run.code == 0, run
    assert set(await hub.active_servers()) == {("p2", "")}


async def test_failing_arbiter_keeps_the_server(clean_hub: LocalHub, tmp_path: Path) -> None:
    hub = clean_hub
    await hub.start_servers([ServerSpec("boom", last_activity=ago(7200))])
    (tmp_path / "hubcull_config.py").write_text(
        "def arbiter(inactive, inactive_limit, server):\n    return 1 / 0\n"
        "c.IdleCuller.cull_arbiter_hook = arbiter\n"
    )
    run = await run_hubcull(hub, "--once", "--timeout=600")
    assert set(await hub.active_servers()) == {("boom", "")}
    assert "cull_arbiter_hook failed for boom/ (ZeroDivisionError: division by zero)" in run.stderr


async def test_generate_config_lists_every_option(clean_hub: LocalHub) -> None:
    run = await run_hubcull(clean_hub, "--generate-config", token=None, debug=False)
    assert run.code == 0, run
    for option in (
        "c.IdleCuller.timeout",
        "c.IdleCuller.cull_every",
        "c.IdleCuller.max_age",
        "c.IdleCuller.cull_users",
        "c.IdleCuller.cull_admin_users",
        "c.IdleCuller.remove_named_servers",
        "c.IdleCuller.cull_default_servers",
        "c.IdleCuller.cull_named_servers",
        "c.IdleCuller.concurrency",
        "c.IdleCuller.api_page_size",
        "c.IdleCuller.ssl_enabled",
        "c.IdleCuller.internal_certs_location",
        "c.IdleCuller.url",
        "c.IdleCuller.cull_arbiter_hook",
        "c.HubCull.dry_run",
        "c.HubCull.once",
        "c.HubCull.api_token_file",
    ):
        assert f"# {option} = " in run.stdout, option


async def test_old_script_name_still_works(clean_hub: LocalHub) -> None:
    """Deployments that still call cull_idle_servers.py get hubcull."""
    script = Path(sys.executable).parent / "cull_idle_servers.py"
    assert script.exists()
    proc = await asyncio.create_subprocess_exec(
        str(script), "--help", stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, _ = await proc.communicate()
    assert proc.returncode == 0
    assert b"--cull-users" in out and b"--timeout" in out
