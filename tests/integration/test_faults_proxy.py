"""The fault proxy, proven against a real JupyterHub with a plain aiohttp client.

Reliability tests of hubcull will trust that the proxy is transparent when no rule
fires and that each fault looks, from the client's side, like the real thing: an
error status, a slow answer, a reset, a silent server, a Hub that went away, a
malformed or hostile page. Each test here pins one of those down, so a failure in
a later culler test points at the culler and not at the proxy.
"""

from __future__ import annotations

import asyncio
import errno
import json
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from hubcull.testing import LocalHub
from testkit.faults import FaultProxy, FaultRule

PAGINATION = "application/jupyterhub-pagination+json"


@pytest.fixture(scope="module")
async def hub() -> AsyncIterator[LocalHub]:
    """One real Hub for the whole module: starting one takes seconds, faults take none."""
    async with LocalHub() as h:
        yield h


def hub_root(hub: LocalHub) -> str:
    return hub.api_url.removesuffix("/hub/api")


@pytest.fixture
async def proxy(hub: LocalHub) -> AsyncIterator[FaultProxy]:
    async with FaultProxy(hub_root(hub), seed=1) as p:
        yield p


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as s:
        yield s


def auth(hub: LocalHub, **extra: str) -> dict[str, str]:
    return {"Authorization": f"token {hub.admin_token}", **extra}


async def fetch(
    session: aiohttp.ClientSession,
    method: str,
    url: str,
    *,
    headers: dict[str, str] | None = None,
    body: Any = None,
    timeout: float = 10,
) -> tuple[int, bytes, str]:
    """(status, body, content type) of one request."""
    async with session.request(
        method,
        url,
        headers=headers,
        data=None if body is None else json.dumps(body),
        timeout=aiohttp.ClientTimeout(total=timeout),
    ) as resp:
        return resp.status, await resp.read(), resp.headers.get("Content-Type", "")


# --- transparency ------------------------------------------------------------------


async def test_passthrough_is_transparent(
    hub: LocalHub, proxy: FaultProxy, session: aiohttp.ClientSession
) -> None:
    direct, via = hub.api_url, proxy.url + "/hub/api"
    # The Accept header must reach the Hub: only then does it answer the paginated form.
    for path, headers in [
        ("/users?offset=0&limit=50", auth(hub, Accept=PAGINATION)),
        ("/users", auth(hub)),
        ("/users/no-such-user", auth(hub)),
        ("/users", {}),  # no token: the Hub's own 403
        ("/", {}),
    ]:
        d = await fetch(session, "GET", direct + path, headers=headers)
        v = await fetch(session, "GET", via + path, headers=headers)
        assert v[0] == d[0], path
        assert json.loads(v[1]) == json.loads(d[1]), path
        assert v[2] == d[2], path
    page = json.loads(
        (await fetch(session, "GET", via + "/users", headers=auth(hub, Accept=PAGINATION)))[1]
    )
    assert "_pagination" in page

    # Bodies and other methods go through, and act on the real Hub.
    status, _, _ = await fetch(
        session, "POST", via + "/users/fp-alice", headers=auth(hub), body={"admin": False}
    )
    assert status == 201
    assert (await fetch(session, "GET", direct + "/users/fp-alice", headers=auth(hub)))[0] == 200
    assert (await fetch(session, "DELETE", via + "/users/fp-alice", headers=auth(hub)))[0] == 204
    assert (await fetch(session, "GET", direct + "/users/fp-alice", headers=auth(hub)))[0] == 404

    assert proxy.stats.seen == proxy.stats.forwarded == 8
    assert not proxy.stats.faults and proxy.stats.upstream_errors == 0
    assert [e.status for e in proxy.log] == [200, 200, 404, 403, 200, 200, 201, 204]
    assert all(e.fault is None for e in proxy.log)


async def test_log_never_holds_the_token(
    hub: LocalHub, proxy: FaultProxy, session: aiohttp.ClientSession
) -> None:
    proxy.add_rule(FaultRule("status", path="/users$", status=500, times=1))
    via = proxy.url + "/hub/api"
    await fetch(session, "GET", via + "/users", headers=auth(hub))
    await fetch(session, "GET", via + "/users", headers=auth(hub))
    await fetch(session, "GET", via + f"/users?token={hub.admin_token}&limit=1")
    everything = repr(proxy.log) + repr(proxy.stats) + repr(proxy.rules)
    assert hub.admin_token not in everything
    assert proxy.log[-1].path == "/hub/api/users?token=[secret]&limit=1"


# --- faults -------------------------------------------------------------------------


async def test_status_fires_times_then_forwards(
    hub: LocalHub, proxy: FaultProxy, session: aiohttp.ClientSession
) -> None:
    rule = proxy.add_rule(
        FaultRule("status", method="GET", path=r"^/hub/api/users\b", status=503, times=2)
    )
    url = proxy.url + "/hub/api/users"
    got = [await fetch(session, "GET", url, headers=auth(hub)) for _ in range(3)]
    assert [g[0] for g in got] == [503, 503, 200]
    assert json.loads(got[0][1])["status"] == 503
    assert "message" in json.loads(got[0][1])
    assert got[0][2].startswith("application/json")
    # Unmatched method and path are untouched, and the injected answers never reached the Hub.
    assert (await fetch(session, "GET", proxy.url + "/hub/api/"))[0] == 200
    assert rule.fired == 2 and rule.matched == 3
    assert proxy.stats.faults["status"] == 2 and proxy.stats.forwarded == 2
    assert [(e.status, e.fault) for e in proxy.log] == [
        (503, "status"),
        (503, "status"),
        (200, None),
        (200, None),
    ]

    proxy.clear()
    proxy.add_rule(FaultRule("status", status=429, headers={"Retry-After": "3"}, after=1))
    first = await session.get(url, headers=auth(hub))
    second = await session.get(url, headers=auth(hub))
    assert (first.status, second.status) == (200, 429)
    assert second.headers["Retry-After"] == "3"
    first.release()
    second.release()


async def test_seeded_probability_is_reproducible(
    hub: LocalHub, session: aiohttp.ClientSession
) -> None:
    async def pattern(seed: int) -> list[int]:
        async with FaultProxy(hub_root(hub), seed=seed) as p:
            p.add_rule(FaultRule("status", status=500, probability=0.5))
            return [(await fetch(session, "GET", p.url + "/hub/api/"))[0] for _ in range(24)]

    a, b, c = await pattern(7), await pattern(7), await pattern(8)
    assert a == b
    assert set(a) == {200, 500}
    assert a != c


async def test_latency_delays_the_real_answer(
    hub: LocalHub, proxy: FaultProxy, session: aiohttp.ClientSession
) -> None:
    proxy.add_rule(FaultRule("latency", path="/users$", delay=0.5))
    url = proxy.url + "/hub/api/users"
    t0 = time.monotonic()
    status, body, _ = await fetch(session, "GET", url, headers=auth(hub))
    slow = time.monotonic() - t0
    assert status == 200 and isinstance(json.loads(body), list)
    assert slow >= 0.5
    t0 = time.monotonic()
    assert (await fetch(session, "GET", proxy.url + "/hub/api/"))[0] == 200
    assert time.monotonic() - t0 < 0.5
    assert proxy.log[0].fault == "latency" and proxy.log[0].status == 200


async def test_reset_is_a_client_side_connection_error(
    hub: LocalHub, proxy: FaultProxy, session: aiohttp.ClientSession
) -> None:
    url = proxy.url + "/hub/api/users"
    # aiohttp's client silently retries an idempotent request once after a
    # disconnect, so one reset of a GET is invisible: it takes two in a row.
    proxy.add_rule(FaultRule("reset", method="GET", path="/users$", times=1))
    assert (await fetch(session, "GET", url, headers=auth(hub)))[0] == 200
    assert [e.fault for e in proxy.log] == ["reset", None]

    proxy.clear()
    proxy.add_rule(FaultRule("reset", path="/users", times=2))
    with pytest.raises(aiohttp.ClientConnectionError):
        await fetch(session, "GET", url, headers=auth(hub))
    assert proxy.stats.faults["reset"] == 3
    # A POST is never retried: one reset is enough, and the Hub never saw it.
    proxy.clear()
    proxy.add_rule(FaultRule("reset", method="POST", times=1))
    with pytest.raises(aiohttp.ClientConnectionError):
        await fetch(session, "POST", url + "/fp-reset", headers=auth(hub), body={})
    status, _, _ = await fetch(session, "GET", hub.api_url + "/users/fp-reset", headers=auth(hub))
    assert status == 404
    assert (await fetch(session, "GET", url, headers=auth(hub)))[0] == 200


async def test_blackhole_makes_the_client_time_out(
    hub: LocalHub, proxy: FaultProxy, session: aiohttp.ClientSession
) -> None:
    proxy.add_rule(FaultRule("blackhole", path="/users$", duration=30, times=1))
    t0 = time.monotonic()
    with pytest.raises(asyncio.TimeoutError):
        await fetch(session, "GET", proxy.url + "/hub/api/users", headers=auth(hub), timeout=0.5)
    assert 0.5 <= time.monotonic() - t0 < 2
    assert proxy.stats.faults["blackhole"] == 1 and proxy.stats.forwarded == 0

    # After its duration the proxy hangs up; a POST is not retried, so the client sees it.
    proxy.clear()
    proxy.add_rule(FaultRule("blackhole", method="POST", duration=0.3))
    t0 = time.monotonic()
    with pytest.raises(aiohttp.ServerDisconnectedError):
        await fetch(session, "POST", proxy.url + "/hub/api/users/fp-bh", headers=auth(hub), body={})
    assert time.monotonic() - t0 >= 0.3


async def test_stop_releases_blackholed_requests(
    hub: LocalHub, session: aiohttp.ClientSession
) -> None:
    proxy = await FaultProxy(hub_root(hub)).start()
    proxy.add_rule(FaultRule("blackhole", duration=60))
    pending = asyncio.create_task(fetch(session, "POST", proxy.url + "/hub/api/x", body={}))
    for _ in range(500):  # until the proxy holds the request
        if proxy.log:
            break
        await asyncio.sleep(0.01)
    t0 = time.monotonic()
    await proxy.stop()
    assert time.monotonic() - t0 < 2
    with pytest.raises(aiohttp.ClientConnectionError):
        await pending


async def test_down_refuses_everything_then_recovers(
    hub: LocalHub, proxy: FaultProxy, session: aiohttp.ClientSession
) -> None:
    proxy.add_rule(FaultRule("down", path="/users$", duration=1.0, times=1))
    via = proxy.url + "/hub/api"
    t0 = time.monotonic()
    with pytest.raises(aiohttp.ClientConnectionError):
        await fetch(session, "GET", via + "/users", headers=auth(hub))
    assert proxy.down
    # Any path, new connections: refused like a dead Hub.
    with pytest.raises(aiohttp.ClientConnectorError) as info:
        await fetch(session, "GET", via + "/")
    assert info.value.os_error.errno == errno.ECONNREFUSED
    # Back after the duration, on the same address.
    while True:
        try:
            status, _, _ = await fetch(session, "GET", via + "/users", headers=auth(hub))
            break
        except aiohttp.ClientConnectionError:
            assert time.monotonic() - t0 < 3, "the proxy never came back"
            await asyncio.sleep(0.1)
    assert status == 200
    assert time.monotonic() - t0 >= 1.0
    assert not proxy.down and proxy.stats.faults["down"] == 1


async def test_body_replaces_the_answer(
    hub: LocalHub, proxy: FaultProxy, session: aiohttp.ClientSession
) -> None:
    proxy.add_rule(FaultRule("body", path="/users", body=b'{"items": [ truncat'))
    status, body, ctype = await fetch(
        session, "GET", proxy.url + "/hub/api/users", headers=auth(hub)
    )
    assert status == 200 and body == b'{"items": [ truncat'
    assert ctype.startswith("application/json")
    # The status stays the Hub's own.
    status, body, _ = await fetch(
        session, "GET", proxy.url + "/hub/api/users/nobody", headers=auth(hub)
    )
    assert status == 404 and body == b'{"items": [ truncat'


async def test_transform_injects_records_into_a_real_page(
    hub: LocalHub, proxy: FaultProxy, session: aiohttp.ClientSession
) -> None:
    hostile = {"name": None, "servers": "not-a-dict", "last_activity": "yesterday"}

    def inject(page: dict[str, Any]) -> dict[str, Any]:
        page["items"].append(hostile)
        return page

    proxy.add_rule(FaultRule("transform", path=r"^/hub/api/users\?", fn=inject))
    path = "/users?offset=0&limit=50"
    headers = auth(hub, Accept=PAGINATION)
    direct = json.loads((await fetch(session, "GET", hub.api_url + path, headers=headers))[1])
    status, body, _ = await fetch(session, "GET", proxy.url + "/hub/api" + path, headers=headers)
    via = json.loads(body)
    assert status == 200
    assert via["items"] == [*direct["items"], hostile]
    assert via["_pagination"] == direct["_pagination"]
    assert proxy.log[0].fault == "transform"
