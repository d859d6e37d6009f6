"""hubcull's web server on a real Hub: metrics and health through the real proxy, the
audit log, JSON logs, and a misconfiguration made impossible to miss.

The pages themselves are tested in a real browser (test_pages.py).
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest_asyncio
from prometheus_client.parser import text_string_to_metric_families

from hubcull.testing import LocalHub, ServerSpec, Service, free_port

from .conftest import ago, assert_no_secret, run_hubcull, start_hubcull, stop_hubcull

SERVICE = "hubcull"
CONFIG = """
c.HubCull.rules = [
    {"name": "gpu", "profile": "gpu*", "timeout": 60},
]
"""


def metric(text: str, name: str, **labels: str) -> float:
    """One sample's value from Prometheus text (0 when absent)."""
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return sample.value
    return 0.0


async def get(url: str, token: str | None = None) -> tuple[int, str, dict[str, str]]:
    headers = {"Authorization": f"token {token}"} if token else {}
    async with aiohttp.ClientSession() as session:
        async with session.get(url, headers=headers, allow_redirects=False) as resp:
            return resp.status, await resp.text(), dict(resp.headers)


@pytest_asyncio.fixture(scope="module")
async def managed(tmp_path_factory: Any) -> AsyncIterator[LocalHub]:
    """A Hub that runs hubcull itself, as operators do: a managed service with a url."""
    folder = tmp_path_factory.mktemp("managed")
    config = folder / "hubcull_config.py"
    config.write_text(CONFIG)
    port = free_port()
    command = [
        sys.executable,
        "-m",
        "hubcull",
        f"--config={config}",
        "--timeout=3600",
        "--cull-every=2",
        f"--audit-log={folder / 'audit.log'}",
        f"--cookie-secret-file={folder / 'cookie_secret'}",
        "--log-level=DEBUG",
    ]
    hub = LocalHub(
        services=[Service(SERVICE, command=command, url=f"http://127.0.0.1:{port}")],
        workdir=folder / "hub",
    )
    await hub.start()
    try:
        yield hub
    finally:
        await hub.close()
        assert_no_secret(hub, hub.log_tail(100_000))


async def wait_until(check: Any, timeout: float = 30) -> None:
    end = time.monotonic() + timeout
    while not await check():
        assert time.monotonic() < end, "timed out"
        await asyncio.sleep(0.25)


async def test_health_needs_no_login_and_answers_through_the_proxy(managed: LocalHub) -> None:
    url = f"{managed.public_url}/services/{SERVICE}/health"
    await wait_until(lambda: _ok(url))
    status, body, headers = await get(url)
    data = json.loads(body)
    assert status == 200 and data["status"] == "ok", body
    assert data["hub_reachable"] is True and data["last_successful_pass"]
    assert "default-src 'none'" in headers["Content-Security-Policy"]


async def _ok(url: str) -> bool:
    try:
        status, body, _ = await get(url)
    except aiohttp.ClientError:
        return False
    return status == 200 and json.loads(body).get("last_successful_pass") is not None


async def test_metrics_need_a_token_and_count_each_cull_by_rule(managed: LocalHub) -> None:
    hub = managed
    url = f"{hub.public_url}/services/{SERVICE}/metrics"
    await wait_until(lambda: _ok(f"{hub.public_url}/services/{SERVICE}/health"))
    status, _, _ = await get(url)
    assert status == 403, "no token, no metrics"
    nobody = await hub.new_token(["read:users:name"], note="no access to the service")
    status, _, _ = await get(url, nobody)
    assert status == 403, "a token without access to the service"
    token = await hub.new_token([f"access:services!service={SERVICE}"], note="prometheus")
    status, before, headers = await get(url, token)
    assert status == 200, before
    assert headers["Content-Type"].startswith("text/plain")
    culled_before = metric(before, "hubcull_servers_culled_total", rule="gpu", action="stop")
    default_before = metric(before, "hubcull_servers_culled_total", rule="default", action="stop")

    await hub.start_servers(
        [
            ServerSpec(f"g{i}", last_activity=ago(120), options={"profile": "gpu-x"})
            for i in range(3)
        ]
        + [ServerSpec("keep", last_activity=ago(120), options={"profile": "cpu"})]
    )

    async def culled() -> bool:
        return not {u for u, _ in await hub.active_servers()} & {"g0", "g1", "g2"}

    await wait_until(culled)
    status, after, _ = await get(url, token)
    assert metric(after, "hubcull_servers_culled_total", rule="gpu", action="stop") == (
        culled_before + 3
    ), "moved by exactly the number culled"
    assert metric(after, "hubcull_servers_culled_total", rule="default", action="stop") == (
        default_before
    )
    assert metric(after, "hubcull_servers_tracked", rule="default") >= 1
    assert metric(after, "hubcull_passes_total", outcome="ok") >= 1
    assert metric(after, "hubcull_last_successful_pass_timestamp_seconds") > time.time() - 60
    assert metric(after, "hubcull_hub_requests_total", method="GET", outcome="2xx") > 0
    assert metric(after, "hubcull_pass_duration_seconds_count") >= 1
    names = {f.name for f in text_string_to_metric_families(after)}
    assert {
        "hubcull_servers_culled",
        "hubcull_users_deleted",
        "hubcull_passes",
        "hubcull_pass_duration_seconds",
        "hubcull_last_successful_pass_timestamp_seconds",
        "hubcull_hub_requests",
        "hubcull_stops_lost",
        "hubcull_probe_failures",
        "hubcull_servers_tracked",
        "hubcull_next_cull_timestamp_seconds",
    } <= names
    labels = {
        v
        for family in text_string_to_metric_families(after)
        for sample in family.samples
        for v in sample.labels.values()
    }
    assert not labels & {"g0", "g1", "g2", "keep"}, "no user name is ever a label"
    for secret in hub.secrets:
        assert secret not in after
    await hub.stop_servers([("keep", "")])


async def test_the_audit_log_records_each_cull_with_rule_and_reason(managed: LocalHub) -> None:
    hub = managed
    await hub.start_servers(
        [ServerSpec("audited", last_activity=ago(120), options={"profile": "gpu"})]
    )

    async def gone() -> bool:
        return ("audited", "") not in await hub.active_servers()

    await wait_until(gone)
    audit = Path(hub.workdir).parent / "audit.log"

    async def written() -> bool:
        return audit.exists() and '"audited"' in audit.read_text()

    await wait_until(written, timeout=10)
    lines = [json.loads(x) for x in audit.read_text().splitlines()]
    [line] = [x for x in lines if x["user"] == "audited"]
    assert line["server"] == "" and line["action"] == "stop" and line["rule"] == "gpu"
    assert (
        line["reason"].startswith("idle for 2m") and "(rule gpu: timeout 1m 00s)" in line["reason"]
    )
    assert line["activity_source"] == "hub" and line["hub_status"] in (202, 204)
    assert line["dry_run"] is False and line["version"]
    assert line["due_at"] < line["time"] and line["last_activity"] < line["due_at"]
    assert list(line) == [
        "time", "user", "server", "action", "rule", "reason", "last_activity",
        "activity_source", "due_at", "hub_status", "version", "dry_run",
    ]  # fmt: skip
    assert_no_secret(hub, audit.read_text())


async def test_the_audit_log_follows_logrotate(clean_hub: LocalHub, tmp_path: Path) -> None:
    hub = clean_hub
    audit = tmp_path / "audit.log"
    await hub.start_servers([ServerSpec("r1", last_activity=ago(7200))])
    proc = await start_hubcull(hub, "--timeout=600", "--cull-every=1", f"--audit-log={audit}")
    try:
        await wait_until(lambda: _has(audit, '"r1"'))
        os.rename(audit, tmp_path / "audit.log.1")  # what logrotate does
        await hub.start_servers([ServerSpec("r2", last_activity=ago(7200))])
        await wait_until(lambda: _has(audit, '"r2"'))
    finally:
        log = await stop_hubcull(hub, proc)
    rotated = (tmp_path / "audit.log.1").read_text()
    assert '"r1"' in rotated and '"r2"' not in rotated
    assert '"r1"' not in audit.read_text(), "new lines go to the new file"
    for text in (rotated, audit.read_text()):
        for line in text.splitlines():
            json.loads(line)
        assert_no_secret(hub, text)
    assert "Traceback" not in log


async def _has(path: Path, text: str) -> bool:
    return path.exists() and text in path.read_text()


async def test_a_dry_run_is_audited_as_one(clean_hub: LocalHub, tmp_path: Path) -> None:
    hub = clean_hub
    audit = tmp_path / "audit.log"
    await hub.start_servers([ServerSpec("dry", last_activity=ago(7200))])
    run = await run_hubcull(hub, "--dry-run", "--timeout=600", f"--audit-log={audit}")
    assert run.code == 0, run
    [line] = [json.loads(x) for x in audit.read_text().splitlines()]
    assert line["dry_run"] is True and line["hub_status"] is None and line["user"] == "dry"
    assert ("dry", "") in await hub.active_servers()


async def test_json_logs_are_one_object_per_line(clean_hub: LocalHub) -> None:
    hub = clean_hub
    await hub.start_servers([ServerSpec("j", last_activity=ago(7200))])
    run = await run_hubcull(hub, "--once", "--timeout=600", "--log-format=json")
    assert run.code == 0, run
    records = [json.loads(line) for line in run.stderr.splitlines()]
    assert {"time", "level", "logger", "message"} <= set(records[0])
    messages = [r["message"] for r in records]
    assert "Culling: stop server j/: idle for 2h 00m (rule default: timeout 10m 00s) [idle]" in (
        messages
    )
    assert any(r["level"] == "DEBUG" and r["message"].startswith("GET /users") for r in records)


async def test_health_turns_503_while_the_hub_is_down_and_back_after(tmp_path: Path) -> None:
    hub = await LocalHub(services=[Service(SERVICE)]).start()
    port = free_port()
    url = f"http://127.0.0.1:{port}/health"
    proc = await start_hubcull(
        hub,
        "--timeout=600",
        "--cull-every=1",
        "--unhealthy-after=4",
        f"--web-url=http://127.0.0.1:{port}",
        f"--cookie-secret-file={tmp_path / 'secret'}",
        "--retries=0",
        "--request-timeout=2",
    )
    try:
        await wait_until(lambda: _ok(url))
        await hub.stop(kill=True)
        down_at = time.monotonic()

        async def unhealthy() -> bool:
            status, _, _ = await get(url)
            return status == 503

        await wait_until(unhealthy, timeout=30)
        assert time.monotonic() - down_at >= 3.5, "not before the limit"
        status, body, _ = await get(url)
        data = json.loads(body)
        assert data["status"] == "unhealthy" and data["hub_reachable"] is False
        assert data["reason"].startswith("no successful pass for "), data
        assert (
            "(unhealthy after 4s)" in data["reason"]
            and "the Hub has not answered" in data["reason"]
        )
        await hub.start()
        await wait_until(lambda: _ok(url), timeout=30)
        status, body, _ = await get(url)
        assert status == 200 and json.loads(body)["hub_reachable"] is True
    finally:
        log = await stop_hubcull(hub, proc)
        await hub.close()
    assert "Serving /health, /metrics at http://127.0.0.1:" in log
    assert "No page: the Hub gave no OAuth client" in log, "standalone without OAuth: no page"


async def test_check_kernels_without_a_way_to_reach_servers_is_one_loud_error(
    clean_hub: LocalHub, tmp_path: Path
) -> None:
    hub = clean_hub
    await hub.start_servers([ServerSpec("k", last_activity=ago(30))])
    port = free_port()
    proc = await start_hubcull(
        hub,
        "--timeout=600",
        "--cull-every=1",
        "--check-kernels",
        f"--web-url=http://127.0.0.1:{port}",
        f"--cookie-secret-file={tmp_path / 'secret'}",
    )
    try:
        await wait_until(lambda: _ok(f"http://127.0.0.1:{port}/health"))
        await asyncio.sleep(2.5)  # more passes: still said once
        status, body, _ = await get(f"http://127.0.0.1:{port}/health")
    finally:
        log = await stop_hubcull(hub, proc)
    errors = [line for line in log.splitlines() if line.startswith("[E ")]
    assert len(errors) == 1, errors
    assert "--check-kernels cannot reach single-user servers" in errors[0]
    assert "--proxy-url=http://proxy-public" in errors[0]
    problems = json.loads(body)["problems"]
    assert status == 200 and len(problems) == 1 and "--proxy-url" in problems[0]
