"""--check-kernels when servers cannot be asked: each failure falls back to the Hub's view.

Simulated servers (the stub answers /api/status, /api/kernels, /api/terminals and
/api/metrics/v1 as configured) behind the real proxy, with a fault proxy in front of it.
"""

from __future__ import annotations

import re
from datetime import datetime, timedelta, timezone

from hubcull.testing import LocalHub, ServerSpec
from testkit.faults import FaultProxy, FaultRule

from .conftest import run_hubcull


def stamp(seconds_ago: float) -> str:
    return (datetime.now(timezone.utc) - timedelta(seconds=seconds_ago)).isoformat()


def jupyter(own_idle: float, kernels: list[dict] | None = None, cpu: float | None = None) -> dict:
    status: dict = {
        "api/status": {"last_activity": stamp(own_idle), "started": stamp(9000)},
        "api/kernels": kernels or [],
        "api/terminals": [],
    }
    if cpu is not None:
        status["api/metrics/v1"] = {"rss": 1000, "cpu_percent": cpu}
    return status


async def test_every_probe_failure_falls_back_with_one_warning(clean_hub: LocalHub) -> None:
    hub = clean_hub
    idle = 7200
    specs = [
        ServerSpec("good", last_activity=idle, status=jupyter(idle)),
        ServerSpec("recent", last_activity=idle, status=jupyter(60)),
        ServerSpec(
            "busy",
            last_activity=idle,
            status=jupyter(
                idle,
                [
                    {
                        "name": "python3",
                        "execution_state": "busy",
                        "last_activity": stamp(idle),
                        "connections": 0,
                    }
                ],
            ),
        ),
        ServerSpec("cpu", last_activity=idle, status=jupyter(idle, cpu=55.0)),
        ServerSpec("slow", last_activity=idle, status=jupyter(idle)),
        ServerSpec("broken", last_activity=idle, status=jupyter(idle)),
        ServerSpec("forbidden", last_activity=idle, status=jupyter(idle)),
        ServerSpec("missing", last_activity=idle, status=jupyter(idle)),
        ServerSpec("plain", last_activity=idle),  # the stub answers text: not a Jupyter server
    ]
    await hub.start_servers(specs)
    async with FaultProxy(hub.public_url) as proxy:
        proxy.add_rule(FaultRule("blackhole", path="/user/slow/", duration=30))
        proxy.add_rule(FaultRule("status", path="/user/broken/", status=502))
        proxy.add_rule(FaultRule("status", path="/user/forbidden/", status=403))
        proxy.add_rule(FaultRule("status", path="/user/missing/", status=404))
        run = await run_hubcull(
            hub,
            "--once",
            "--timeout=600",
            "--check-kernels",
            f"--proxy-url={proxy.url}",
            "--probe-timeout=1",
            "--cpu-threshold=10",
            "--busy-timeout=86400",
        )

    assert run.code == 0, run
    assert set(await hub.active_servers()) == {("recent", ""), ("busy", ""), ("cpu", "")}
    expected_warnings = {
        "slow": "timed out after 1s",
        "broken": "/api/status answered 502 (server error)",
        "forbidden": "/api/status answered 403: does the token have access:servers?",
        "missing": "/api/status answered 404: not a Jupyter server?",
        "plain": "/api/status answered something that is not JSON",
    }
    for user, reason in expected_warnings.items():
        lines = [x for x in run.stderr.splitlines() if f"Cannot look inside {user}/" in x]
        assert len(lines) == 1, (user, lines)
        assert reason in lines[0], (user, lines[0])
        culled = f"stop server {user}/: idle for 2h 00m (rule default: timeout 10m 00s) [idle]"
        assert culled in run.stderr
    assert (
        "stop server good/: idle for 2h 00m (rule default: timeout 10m 00s); server confirms: "
        "no kernels" in run.stderr
    )
    # The stub's activity is a minute old when the Hub starts it; a loaded machine may
    # take a second more before hubcull asks.
    assert re.search(
        r"Keeping recent/, idle in the Hub's view: the server reports activity 1m 0\ds ago",
        run.stderr,
    )
    assert "Keeping busy/, idle in the Hub's view: kernel busy (python3)" in run.stderr
    assert "Keeping cpu/, idle in the Hub's view: in use: CPU 55% >= 10%" in run.stderr


async def test_only_servers_the_hub_finds_due_are_asked(clean_hub: LocalHub) -> None:
    hub = clean_hub
    specs = [ServerSpec(f"fresh{i}", last_activity=30, status=jupyter(30)) for i in range(5)]
    specs.append(ServerSpec("due", last_activity=7200, status=jupyter(7200)))
    await hub.start_servers(specs)
    run = await run_hubcull(
        hub, "--once", "--timeout=600", "--check-kernels", f"--proxy-url={hub.public_url}"
    )
    assert run.code == 0, run
    probes = [x for x in run.stderr.splitlines() if "probe GET" in x]
    assert probes and all("/user/due/" in x for x in probes), probes
    assert len(probes) == 3, "status, kernels, terminals: for the one due server only"


async def test_dry_run_says_why_a_server_is_kept(clean_hub: LocalHub) -> None:
    hub = clean_hub
    await hub.start_servers([ServerSpec("reader", last_activity=7200, status=jupyter(120))])
    run = await run_hubcull(
        hub, "--dry-run", "--timeout=600", "--check-kernels", f"--proxy-url={hub.public_url}"
    )
    assert run.code == 0, run
    # The seconds are left open: the stamp is set when the server starts, and a loaded
    # machine may take a second or two before the dry run reads it.
    assert re.match(
        r"would keep server reader/: the server reports activity 2m 0(\d)s ago: "
        r"idle for 2m 0\1s only",
        run.stdout,
    ), run.stdout
