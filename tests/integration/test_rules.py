"""Culling rules on a real Hub: per-profile, per-group, per-user and named-server rules,
`hubcull explain`, and the start-up errors of bad rules.

Servers carry their profile in ``user_options`` as KubeSpawner's ``profile_list`` stores
it; a group "staff" is exempt; guests are deleted after their own user timeout.
"""

from __future__ import annotations

import asyncio
import json
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from hubcull.model import parse_timestamp
from hubcull.testing import LocalHub, ServerSpec

from .conftest import ago, run_hubcull, start_hubcull, stop_hubcull

RULES = """
c.HubCull.rules = [
    {"name": "staff", "groups": ["staff"], "cull": False},
    {"name": "gpu", "profile": "gpu*", "timeout": 8},
    {"name": "named", "named": True, "timeout": 14, "remove_named": True},
    {"name": "guests", "users": ["guest-*"], "timeout": 6, "user_timeout": 12},
]
"""


async def add_group(hub: LocalHub, group: str, users: list[str]) -> None:
    status, data = await hub.api("POST", f"/groups/{group}", body={})
    assert status in (201, 409), data
    status, data = await hub.api("POST", f"/groups/{group}/users", body={"users": users})
    assert status == 200, data


async def delete_group(hub: LocalHub, group: str) -> None:
    await hub.api("DELETE", f"/groups/{group}")


async def deadlines(hub: LocalHub, timeouts: dict[tuple[str, str], float]) -> dict[Any, float]:
    """Each server's deadline (epoch seconds): its last activity on the Hub plus its timeout."""
    active = await hub.active_servers()
    out = {}
    for key, timeout in timeouts.items():
        last = parse_timestamp(active[key]["last_activity"])
        assert last is not None
        out[key] = last.timestamp() + timeout
    return out


async def test_each_server_goes_at_its_own_rules_deadline_and_exempt_ones_never(
    clean_hub: LocalHub, tmp_path: Path
) -> None:
    hub = clean_hub
    (tmp_path / "hubcull_config.py").write_text(RULES)
    await hub.start_servers(
        [
            ServerSpec("ada", options={"profile": "gpu-small"}),  # rule gpu: 8 s
            ServerSpec("ben", options={"profile": "cpu"}),  # rule default: 20 s
            ServerSpec("ben", "big", options={"profile": "cpu"}),  # rule named: 14 s, removed
            ServerSpec("sam", options={"profile": "gpu-small"}),  # staff: exempt
            ServerSpec("guest-1"),  # rule guests: 6 s, user deleted 12 s later
        ]
    )
    await hub.create_users(["sue"])  # staff, no server, long inactive: never deleted
    await hub.api("POST", "/users/sue/activity", body={"last_activity": ago(9999).isoformat()})
    await add_group(hub, "staff", ["sam", "sue"])
    due = await deadlines(
        hub,
        {("ada", ""): 8, ("ben", "big"): 14, ("ben", ""): 20, ("guest-1", ""): 6},
    )
    try:
        proc = await start_hubcull(
            hub, "--timeout=20", "--cull-every=300", "--cull-users", "--user-timeout=3600"
        )
        gone: dict[tuple[str, str], float] = {}
        users_gone: dict[str, float] = {}
        end = time.time() + 45
        while time.time() < end and (len(gone) < 4 or "guest-1" not in users_gone):
            active = await hub.active_servers()
            for key in due:
                if key not in active and key not in gone:
                    gone[key] = time.time()
            if "guest-1" not in users_gone and "guest-1" not in await hub.user_names():
                users_gone["guest-1"] = time.time()
            await asyncio.sleep(0.25)
        log = await stop_hubcull(hub, proc)
        names = await hub.user_names()
        active = await hub.active_servers()
    finally:
        await delete_group(hub, "staff")

    assert set(gone) == set(due), (gone, log)
    for key, at in gone.items():
        late = at - due[key]
        assert -0.5 <= late <= 3.0, f"{key} stopped {late:+.1f} s from its rule's deadline"
    assert log.count("Pass done") == 1, "all between passes, by deadline checks"
    assert "Culling: stop server ada/: idle for 8s (rule gpu: timeout 8s) [idle]" in log
    assert "Culling: remove server ben/big: idle for 14s (rule named: timeout 14s) [idle]" in log
    assert "Culling: stop server ben/: idle for 20s (rule default: timeout 20s) [idle]" in log
    assert "Culling: stop server guest-1/: idle for 6s (rule guests: timeout 6s) [idle]" in log
    assert ("sam", "") in active, "staff servers are exempt"
    assert "sue" in names and "ben" in names, "only guests are deleted"
    assert "guest-1" not in names
    assert "Culling: delete user guest-1: inactive for " in log
    assert "(rule guests: user-timeout 12s) [idle]" in log
    assert "Rule 1 'staff': groups staff -> never culled (nor deleted)" in log
    status, model = await hub.api("GET", "/users/ben")
    assert "big" not in model["servers"], "removed for good (remove_named)"


def mixed_servers() -> list[ServerSpec]:
    """20 servers across the rules: some due now, some not, some exempt."""
    specs = []
    for i in range(5):
        specs.append(
            ServerSpec(f"gpu{i}", last_activity=ago(100 * i), options={"profile": "gpu-x"})
        )
        specs.append(ServerSpec(f"cpu{i}", last_activity=ago(300 * i), options={"profile": "cpu"}))
        specs.append(ServerSpec(f"cpu{i}", "nb", last_activity=ago(900 * i)))
    for i in range(3):
        specs.append(ServerSpec(f"guest-{i}", last_activity=ago(400 * i)))
    specs.append(ServerSpec("sam", last_activity=ago(99999), options={"profile": "gpu-x"}))
    specs.append(ServerSpec("sue", last_activity=ago(99999)))
    assert len(specs) == 20
    return specs


async def test_explain_says_exactly_what_once_then_culls(
    clean_hub: LocalHub, tmp_path: Path
) -> None:
    hub = clean_hub
    (tmp_path / "hubcull_config.py").write_text(
        """
c.HubCull.rules = [
    {"name": "staff", "groups": ["staff"], "cull": False},
    {"name": "gpu", "profile": "gpu*", "timeout": 250},
    {"name": "named", "named": True, "timeout": 1000, "remove_named": True},
    {"name": "guests", "users": ["guest-*"], "timeout": 500, "user_timeout": 100},
]
"""
    )
    await hub.start_servers(mixed_servers())
    await add_group(hub, "staff", ["sam", "sue"])
    args = ("--timeout=700", "--cull-users", "--user-timeout=999999")
    try:
        explain = await run_hubcull(hub, "explain", *args, "--output=json")
        table = await run_hubcull(hub, "explain", *args)
        before = await hub.active_servers()
        once = await run_hubcull(hub, "--once", *args)
        after = await hub.active_servers()
    finally:
        await delete_group(hub, "staff")

    assert explain.code == 0, explain
    rows = json.loads(explain.stdout)  # nothing else on stdout
    assert {(r["user"], r["server"]) for r in rows if r["server"] is not None} == set(before)
    due = {(r["user"], r["server"]) for r in rows if r["verdict"] in ("stop", "remove")}
    assert once.code == 0, once
    assert set(before) - set(after) == due, "server for server"
    assert due, "the Hub had due servers"
    assert set(after) & due == set()
    by_key = {(r["user"], r["server"]): r for r in rows}
    assert by_key[("gpu3", "")]["rule"] == "gpu" and by_key[("gpu3", "")]["verdict"] == "stop"
    assert by_key[("gpu2", "")]["verdict"] == "keep", "idle 200 s of 250"
    assert by_key[("cpu2", "nb")]["verdict"] == "remove"
    assert by_key[("sam", "")]["rule"] == "staff" and by_key[("sam", "")]["due_at"] is None
    assert by_key[("cpu1", "")]["rule"] == "default"
    keep = by_key[("cpu1", "")]
    assert keep["verdict"] == "keep" and 295 < keep["idle_seconds"] < 330
    assert datetime.fromisoformat(keep["due_at"].replace("Z", "+00:00")) > datetime.fromisoformat(
        by_key[("gpu1", "")]["due_at"].replace("Z", "+00:00")
    )
    # Rows are sorted by when they become due (never due last).
    dues = [r["due_at"] for r in rows]
    assert dues == sorted(d for d in dues if d) + [None] * dues.count(None)
    # Users due for deletion: guests whose servers are all due (their user_timeout is short).
    deleted = {r["user"] for r in rows if r["verdict"] == "delete-user"}
    names = await hub.user_names()
    assert deleted and not deleted & names, "explain's deletions are --once's deletions"
    assert {"sam", "sue"} <= names

    lines = table.stdout.splitlines()
    assert lines[0].split() == [
        "USER", "SERVER", "PROFILE", "RULE", "IDLE", "FOR", "RUNNING", "FOR", "DUE", "IN",
        "VERDICT",
    ]  # fmt: skip
    assert any(line.split()[:4] == ["sam", "(default)", "gpu-x", "staff"] for line in lines)
    assert "keep (exempt)" in table.stdout and "stop (idle)" in table.stdout


@pytest.mark.parametrize(
    ("rules", "message"),
    [
        pytest.param(
            '[{"name": "gpu", "timout": 60}]',
            "rule gpu: unknown key 'timout' (did you mean 'timeout'?)",
            id="typo",
        ),
        pytest.param(
            '[{"name": "gpu", "timeout": "30m"}]',
            "rule gpu: 'timeout' must be a number of seconds, not '30m'",
            id="type",
        ),
        pytest.param(
            '[{"name": "gpu", "timeout": -60}]',
            "rule gpu: 'timeout' must be positive, not -60",
            id="negative",
        ),
        pytest.param(
            '[{"name": "a"}, {"name": "a", "timeout": 5}]',
            "rule a: the name is used by an earlier rule",
            id="duplicate",
        ),
        pytest.param(
            '[{"name": "x", "server": "gpu*", "named": False}]',
            "rule x: 'server' 'gpu*' never matches the default server, but 'named' is false: "
            "it could never match",
            id="never-matches",
        ),
    ],
)
async def test_an_invalid_rule_stops_hubcull_in_one_line(
    clean_hub: LocalHub, tmp_path: Path, rules: str, message: str
) -> None:
    (tmp_path / "hubcull_config.py").write_text(f"c.HubCull.rules = {rules}\n")
    run = await run_hubcull(clean_hub, "--once", debug=False)
    assert run.code == 2, run
    assert run.stderr.strip() == f"hubcull: error: {message}", run


async def test_rules_in_a_json_config_file(clean_hub: LocalHub, tmp_path: Path) -> None:
    hub = clean_hub
    (tmp_path / "hubcull_config.json").write_text(
        json.dumps({"HubCull": {"rules": [{"name": "quick", "users": ["q*"], "timeout": 60}]}})
    )
    await hub.start_servers(
        [ServerSpec("quinn", last_activity=ago(120)), ServerSpec("rita", last_activity=ago(120))]
    )
    run = await run_hubcull(hub, "--once", "--timeout=600")
    assert run.code == 0, run
    assert set(await hub.active_servers()) == {("rita", "")}
    assert "Rule 1 'quick': users q* -> timeout 1m 00s" in run.stderr


async def test_a_groups_rule_needs_the_scope_to_read_groups(
    clean_hub: LocalHub, tmp_path: Path
) -> None:
    hub = clean_hub
    (tmp_path / "hubcull_config.py").write_text(
        'c.HubCull.rules = [{"name": "staff", "groups": ["staff"], "cull": False}]\n'
    )
    token = await hub.new_token(["list:users", "read:servers", "delete:servers"])
    run = await run_hubcull(hub, "--once", token=token)
    assert run.code == 2, run
    assert (
        "lacks scopes: read:users:groups (to see users' groups (rules with groups))" in run.stderr
    )
    assert '"scopes": ["list:users", "read:servers", "delete:servers", "read:users:groups"]' in (
        run.stderr
    ), "the role snippet grants it"
