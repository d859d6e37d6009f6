"""Warnings before a cull and keeps, on a real Hub, with real HTTP receivers.

A webhook receiver runs in the test (aiohttp, on loopback) and records what arrives,
when; it can answer 500, hang, or not listen at all. Culls are timed from the Hub's own
records: each server's deadline is its last activity on the Hub plus the timeout.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import sys
import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import pytest_asyncio
from aiohttp import web

from hubcull.model import parse_timestamp
from hubcull.testing import LocalHub, ServerSpec, Service, free_port

from .conftest import ago, assert_no_secret, run_hubcull, start_hubcull, stop_hubcull

SECRET = b"a shared secret for signatures"


@dataclass
class Receiver:
    """A webhook receiver: what arrived, when (epoch seconds)."""

    mode: str = "ok"  # ok, 500, hang
    port: int = field(default_factory=free_port)
    got: list[tuple[float, dict[str, str], dict[str, Any]]] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook/s3cr3t-path"

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        self.got.append((time.time(), dict(request.headers), json.loads(body)))
        if self.mode == "hang":
            await asyncio.sleep(60)
        if self.mode == "500":
            return web.Response(status=500)
        return web.Response(status=204)

    def events(self, kind: str) -> list[tuple[float, dict[str, str], dict[str, Any]]]:
        return [g for g in self.got if g[2]["event"] == kind]


@asynccontextmanager
async def listening(receiver: Receiver) -> AsyncIterator[Receiver]:
    """Serve ``receiver`` on loopback (a "refused" one listens nowhere)."""
    if receiver.mode == "refused":
        yield receiver
        return
    app = web.Application()
    app.router.add_post("/hook/{rest:.*}", receiver.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    # A hanging request is not waited for at the end (60 s otherwise).
    await web.TCPSite(runner, "127.0.0.1", receiver.port, shutdown_timeout=0.5).start()
    try:
        yield receiver
    finally:
        await runner.cleanup()


@pytest_asyncio.fixture
async def receiver() -> AsyncIterator[Receiver]:
    async with listening(Receiver()) as r:
        yield r


async def deadlines(hub: LocalHub, users: list[str], timeout: float) -> dict[str, float]:
    active = await hub.active_servers()
    out = {}
    for user in users:
        last = parse_timestamp(active[(user, "")]["last_activity"])
        assert last is not None
        out[user] = last.timestamp() + timeout
    return out


async def watch_culls(hub: LocalHub, users: list[str], within: float) -> dict[str, float]:
    """When each user's server disappeared (epoch seconds)."""
    gone: dict[str, float] = {}
    end = time.monotonic() + within
    while len(gone) < len(users) and time.monotonic() < end:
        active = {u for u, _ in await hub.active_servers()}
        for user in users:
            if user not in active and user not in gone:
                gone[user] = time.time()
        await asyncio.sleep(0.2)
    return gone


def notify_args(receiver: Receiver, tmp_path: Path, *extra: str) -> list[str]:
    secret = tmp_path / "notify_secret"
    secret.write_bytes(SECRET)
    return [
        "--timeout=30",
        "--cull-every=120",
        "--warn-before=10",
        "--min-warning=2",
        f"--notify-webhook={receiver.url}",
        f"--notify-secret-file={secret}",
        f"--state-file={tmp_path / 'state.sqlite'}",
        *extra,
    ]


async def test_each_server_is_warned_once_on_time_then_culled_on_time(
    clean_hub: LocalHub, receiver: Receiver, tmp_path: Path
) -> None:
    hub = clean_hub
    users = ["w1", "w2", "w3"]
    await hub.start_servers(
        [ServerSpec(u, last_activity=ago(2 + 2 * i)) for i, u in enumerate(users)]
    )
    due = await deadlines(hub, users, 30)
    proc = await start_hubcull(hub, *notify_args(receiver, tmp_path))
    try:
        gone = await watch_culls(hub, users, within=45)
    finally:
        log = await stop_hubcull(hub, proc)
    assert set(gone) == set(users), log
    for user in users:
        assert 0 <= gone[user] - due[user] <= 2.0, f"{user} culled {gone[user] - due[user]:+.1f}s"
        [(when, headers, body)] = [g for g in receiver.events("warning") if g[2]["user"] == user]
        assert abs(when - (due[user] - 10)) <= 2.0, f"{user} warned {when - due[user] + 10:+.1f}s"
        assert body["server"] == "" and body["rule"] == "default"
        assert parse_timestamp(body["cull_at"]).timestamp() == pytest.approx(due[user], abs=1)
        assert 8 <= body["idle_seconds"] <= 22 and body["keep_url"] == "/"
        expected = (
            "sha256=" + hmac.new(SECRET, json.dumps(body).encode(), hashlib.sha256).hexdigest()
        )
        assert headers["X-Hubcull-Signature"] == expected, "signed"
        [culled] = [g[2] for g in receiver.events("culled") if g[2]["user"] == user]
        assert culled["reason"].startswith("idle for 30s (rule default: timeout 30s)")
    assert "s3cr3t-path" not in log, "the webhook's URL is never logged whole"
    assert_no_secret(hub, json.dumps(receiver.got))


async def test_a_restart_sends_no_second_warning_but_new_activity_rearms(
    clean_hub: LocalHub, receiver: Receiver, tmp_path: Path
) -> None:
    hub = clean_hub
    await hub.start_servers(
        [ServerSpec("again", last_activity=ago(6)), ServerSpec("back", last_activity=ago(6))]
    )
    due = await deadlines(hub, ["again", "back"], 30)
    proc = await start_hubcull(hub, *notify_args(receiver, tmp_path))
    try:
        end = time.monotonic() + 30
        while time.monotonic() < end:
            if len(receiver.events("warning")) >= 2:
                break
            await asyncio.sleep(0.2)
        assert len(receiver.events("warning")) == 2, "both warned"
        await stop_hubcull(hub, proc)  # a restart between warning and cull
        now = time.time()
        await hub.api(  # back's user comes back: a new idle spell
            "POST",
            "/users/back/activity",
            body={
                "servers": {"": {"last_activity": ago(0).isoformat()}},
                "last_activity": ago(0).isoformat(),
            },
        )
        proc = await start_hubcull(hub, *notify_args(receiver, tmp_path))
        gone = await watch_culls(hub, ["again", "back"], within=50)
    finally:
        log = await stop_hubcull(hub, proc)
    warned = [g[2]["user"] for g in receiver.events("warning")]
    assert warned.count("again") == 1, "no second warning because hubcull restarted"
    assert warned.count("back") == 2, "new activity, a new idle spell, a second warning"
    assert 0 <= gone["again"] - due["again"] <= 2.0
    assert gone["back"] >= now + 30 - 1, "its new deadline"
    assert "Traceback" not in log


async def test_a_server_first_seen_near_its_deadline_is_warned_at_once_then_given_time(
    clean_hub: LocalHub, receiver: Receiver, tmp_path: Path
) -> None:
    """Due 2 s after hubcull starts, with warnings 10 s ahead: warned at once, culled no
    sooner than --min-warning (5 s) after the warning. People always get their warning."""
    hub = clean_hub
    await hub.start_servers([ServerSpec("late", last_activity=ago(28))])
    due = await deadlines(hub, ["late"], 30)
    args = notify_args(receiver, tmp_path)
    args = [a for a in args if not a.startswith("--min-warning")] + ["--min-warning=5"]
    proc = await start_hubcull(hub, *args)
    try:
        gone = await watch_culls(hub, ["late"], within=30)
    finally:
        log = await stop_hubcull(hub, proc)
    [(warned_at, _, body)] = receiver.events("warning")
    assert gone["late"] - warned_at >= 5 - 0.5, "culled min-warning after the warning"
    assert gone["late"] - due["late"] >= 2, "so later than its deadline"
    assert abs(parse_timestamp(body["cull_at"]).timestamp() - gone["late"]) <= 2.0
    assert "Warning late/: culled at " in log


async def test_failing_receivers_never_delay_a_cull(clean_hub: LocalHub, tmp_path: Path) -> None:
    """A receiver that answers 500, one that hangs for 60 s, one that refuses connections:
    three hubculls side by side, each culling only its own group (group-filtered scopes)."""
    hub = clean_hub
    modes = ["500", "hang", "refused"]
    users = {m: f"f-{m}" for m in modes}
    await hub.start_servers([ServerSpec(u, last_activity=ago(6)) for u in users.values()])
    due = await deadlines(hub, list(users.values()), 30)
    async with AsyncExitStack() as stack:
        procs = {}
        for mode in modes:
            receiver = await stack.enter_async_context(listening(Receiver(mode)))
            group = f"g-{mode}"
            await add_to_group(hub, group, users[mode])
            token = await hub.new_token(
                [f"{s}!group={group}" for s in ("list:users", "read:servers", "delete:servers")]
            )
            folder = tmp_path / mode
            folder.mkdir()
            procs[mode] = (
                receiver,
                await start_hubcull(hub, *notify_args(receiver, folder), token=token),
            )
        try:
            gone = await watch_culls(hub, list(users.values()), within=45)
            await asyncio.sleep(1)
        finally:
            logs = {m: await stop_hubcull(hub, p) for m, (_, p) in procs.items()}
            for mode in modes:
                await hub.api("DELETE", f"/groups/g-{mode}")
    for mode in modes:
        user, (receiver, _) = users[mode], procs[mode]
        assert 0 <= gone[user] - due[user] <= 2.0, (mode, logs[mode])
        assert f"The warning for {user}/ could not be sent before its cull (webhook: " in logs[mode]
    assert len(procs["500"][0].events("warning")) >= 2, "retried"


async def add_to_group(hub: LocalHub, group: str, user: str) -> None:
    status, data = await hub.api("POST", f"/groups/{group}", body={})
    assert status in (201, 409), data
    status, data = await hub.api("POST", f"/groups/{group}/users", body={"users": [user]})
    assert status == 200, data


async def test_the_command_notifier_gets_the_details_and_a_failing_one_blocks_nothing(
    clean_hub: LocalHub, tmp_path: Path
) -> None:
    hub = clean_hub
    record = tmp_path / "record.jsonl"
    script = tmp_path / "notify.py"
    script.write_text(
        "import json, os, sys\n"
        f"with open({str(record)!r}, 'a') as f:\n"
        "    env = {k: v for k, v in os.environ.items() if k.startswith('HUBCULL_')}\n"
        "    f.write(json.dumps({'env': env, 'stdin': json.loads(sys.stdin.read()),\n"
        "                        'token': os.environ.get('JUPYTERHUB_API_TOKEN')}) + '\\n')\n"
        "sys.exit(int(os.environ.get('HUBCULL_USER') == 'cmd-fail') * 3)\n"
    )
    await hub.start_servers(
        [ServerSpec("cmd-ok", last_activity=ago(6)), ServerSpec("cmd-fail", last_activity=ago(6))]
    )
    due = await deadlines(hub, ["cmd-ok", "cmd-fail"], 30)
    proc = await start_hubcull(
        hub,
        "--timeout=30",
        "--cull-every=120",
        "--warn-before=10",
        "--min-warning=2",
        f"--notify-command={sys.executable} {script}",
        f"--state-file={tmp_path / 'state.sqlite'}",
    )
    try:
        gone = await watch_culls(hub, ["cmd-ok", "cmd-fail"], within=40)
        await asyncio.sleep(2)
    finally:
        log = await stop_hubcull(hub, proc)
    for user in ("cmd-ok", "cmd-fail"):
        assert 0 <= gone[user] - due[user] <= 2.0, (user, log)
    lines = [json.loads(x) for x in record.read_text().splitlines()]
    ok_warning = [
        x
        for x in lines
        if x["env"]["HUBCULL_USER"] == "cmd-ok" and x["env"]["HUBCULL_EVENT"] == "warning"
    ]
    assert len(ok_warning) == 1
    env, stdin = ok_warning[0]["env"], ok_warning[0]["stdin"]
    assert env["HUBCULL_SERVER"] == "" and env["HUBCULL_RULE"] == "default"
    assert env["HUBCULL_CULL_AT"] == stdin["cull_at"] and stdin["event"] == "warning"
    assert ok_warning[0]["token"] is None, "the command never gets hubcull's token"
    assert any(x["env"]["HUBCULL_EVENT"] == "culled" for x in lines)
    assert "The warning for cmd-fail/ could not be sent before its cull (command: " in log
    assert "exited 3" in log


async def test_a_corrupt_state_file_is_logged_and_rebuilt_and_culling_goes_on(
    clean_hub: LocalHub, tmp_path: Path
) -> None:
    hub = clean_hub
    state = tmp_path / "state.sqlite"
    state.write_bytes(b"\x00 garbage, not SQLite" * 50)
    await hub.start_servers([ServerSpec("c", last_activity=ago(7200))])
    run = await run_hubcull(hub, "--once", "--timeout=600", f"--state-file={state}")
    assert run.code == 0, run
    assert f"The state file {state} cannot be read" in run.stderr
    assert "starting a new one" in run.stderr
    assert not await hub.active_servers()
    assert list(tmp_path.glob("state.sqlite.corrupt-*")), "the bad file is kept aside"


# --- keeping a server through the API, with a user's own Hub token -----------------------


@pytest_asyncio.fixture(scope="module")
async def keep_hub() -> AsyncIterator[LocalHub]:
    hub = LocalHub(
        services=[Service("hubcull")],
        extra_config='c.JupyterHub.extra_user_scopes = {"access:services!service=hubcull"}\n',
    )
    await hub.start()
    yield hub
    await hub.close()


async def user_token(hub: LocalHub, user: str) -> str:
    await hub.create_users([user])
    status, data = await hub.api(
        "POST", f"/users/{user}/tokens", body={"scopes": ["access:services!service=hubcull"]}
    )
    assert status == 201, data
    hub.secrets.add(data["token"])
    return data["token"]


async def keep(
    port: int, token: str, method: str = "POST", wait: bool = False, **body: Any
) -> tuple[int, dict[str, Any]]:
    """One call of the keep API; ``wait``: until hubcull's web server listens (20 s)."""
    for attempt in range(100 if wait else 1):
        try:
            async with aiohttp.ClientSession() as session:
                async with session.request(
                    method,
                    f"http://127.0.0.1:{port}/api/keep",
                    json=body,
                    headers={"Authorization": f"token {token}"},
                ) as resp:
                    return resp.status, await resp.json()
        except aiohttp.ClientConnectionError:
            if attempt == 99 or not wait:
                raise
            await asyncio.sleep(0.2)
    raise AssertionError("unreachable")


async def test_keeping_a_server_through_the_api(keep_hub: LocalHub, tmp_path: Path) -> None:
    hub = keep_hub
    alice = await user_token(hub, "alice")
    await user_token(hub, "bob")
    await hub.start_servers(
        [ServerSpec("alice", last_activity=ago(4)), ServerSpec("bob", last_activity=ago(4))]
    )
    due = await deadlines(hub, ["alice"], 12)
    port = free_port()
    args = [
        "--timeout=12",
        "--cull-every=120",
        "--max-keep=20",
        f"--web-url=http://127.0.0.1:{port}",
        f"--state-file={tmp_path / 'state.sqlite'}",
        f"--cookie-secret-file={tmp_path / 'cookie'}",
        f"--audit-log={tmp_path / 'audit.log'}",
    ]
    proc = await start_hubcull(hub, *args)
    try:
        status, body = await keep(port, alice, wait=True, server="", seconds=16)
        assert status == 200, body
        kept_until = parse_timestamp(body["kept_until"]).timestamp()
        assert kept_until > due["alice"] + 8
        assert (await keep(port, alice, server="", seconds=100))[0] == 400, "over the limit"
        status, body = await keep(port, alice, user="bob", server="", seconds=5)
        assert status == 403 and "only your own" in body["error"]
        status, body = await keep(port, alice, server="nope", seconds=5)
        assert status == 404 and "no running server alice/nope" in body["error"]
        status, body = await keep(port, "not-a-token", server="", seconds=5)
        assert status == 403
        # The keep shows in explain (from the same state file) and in the metrics.
        explain = await run_hubcull(
            hub, "explain", "--timeout=12", f"--state-file={tmp_path / 'state.sqlite'}",
            "--output=json",
        )  # fmt: skip
        [row] = [r for r in json.loads(explain.stdout) if r["user"] == "alice"]
        assert row["cause"] == "kept" and "by alice" in row["reason"], row
        async with aiohttp.ClientSession() as session:
            async with session.get(
                f"http://127.0.0.1:{port}/metrics", headers={"Authorization": f"token {alice}"}
            ) as resp:
                assert "hubcull_servers_kept 1.0" in await resp.text()
        # A restart between the keep and its end: the keep holds.
        await stop_hubcull(hub, proc)
        proc = await start_hubcull(hub, *args)
        await asyncio.sleep(max(0.0, due["alice"] + 2 - time.time()))
        assert ("alice", "") in await hub.active_servers(), "kept past its deadline"
        gone = await watch_culls(hub, ["alice"], within=30)
        assert 0 <= gone["alice"] - kept_until <= 2.0, "culled when the keep ended"
        await hub.stop_servers([("alice", "")])
        status, body = await keep(port, alice, server="", seconds=5)
        assert status == 404, "a stopped server cannot be kept"
    finally:
        log = await stop_hubcull(hub, proc)
    assert "alice/: kept until " in log and " by alice" in log
    [line] = [
        json.loads(x) for x in (tmp_path / "audit.log").read_text().splitlines() if '"keep"' in x
    ]
    assert line["user"] == "alice" and line["reason"].endswith("by alice"), line


async def test_a_rule_without_max_keep_refuses_keeps(keep_hub: LocalHub, tmp_path: Path) -> None:
    hub = keep_hub
    carol = await user_token(hub, "carol")
    await hub.start_servers([ServerSpec("carol", last_activity=ago(1))])
    port = free_port()
    proc = await start_hubcull(
        hub,
        "--timeout=600",
        f"--web-url=http://127.0.0.1:{port}",
        f"--state-file={tmp_path / 'state.sqlite'}",
        f"--cookie-secret-file={tmp_path / 'cookie'}",
    )
    try:
        status, body = await keep(port, carol, wait=True, server="", seconds=60)
    finally:
        await stop_hubcull(hub, proc)
        await hub.stop_servers([("carol", "")])
    assert status == 403 and "keeping is turned off for carol/ (rule default)" in body["error"]
