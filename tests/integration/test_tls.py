"""--ssl-enabled against a Hub with internal TLS (JupyterHub.internal_ssl)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import datetime, timedelta, timezone

import pytest_asyncio

from hubcull.testing import LocalHub, ServerSpec, Service

from .conftest import run_hubcull


@pytest_asyncio.fixture(scope="module")
async def tls_hub() -> AsyncIterator[LocalHub]:
    hub = LocalHub(services=[Service("hubcull")], internal_ssl=True)
    await hub.start()
    yield hub
    await hub.close()


async def test_ssl_enabled_uses_the_hubs_internal_certificates(tls_hub: LocalHub) -> None:
    hub = tls_hub
    assert hub.api_url.startswith("https://")
    idle = datetime.now(timezone.utc) - timedelta(hours=2)
    await hub.start_servers([ServerSpec("tls-user", last_activity=idle)])

    run = await run_hubcull(
        hub, "--once", "--ssl-enabled", f"--internal-certs-location={hub.internal_certs}"
    )

    assert run.code == 0, run
    assert "stop server tls-user/" in run.stderr
    assert not await hub.active_servers()


async def test_without_ssl_enabled_the_tls_failure_is_one_line(tls_hub: LocalHub) -> None:
    run = await run_hubcull(tls_hub, "--once")
    assert run.code == 2, run
    (line,) = [x for x in run.stderr.splitlines() if x.startswith("[C ")]
    assert f"cannot reach the Hub at {tls_hub.api_url}: TLS error" in line


async def test_ssl_enabled_with_missing_certificates(tls_hub: LocalHub) -> None:
    run = await run_hubcull(tls_hub, "--once", "--ssl-enabled", "--internal-certs-location=/nope")
    assert run.code == 2, run
    (line,) = [x for x in run.stderr.splitlines() if x.startswith("[C ")]
    assert "--ssl-enabled: the internal key file /nope/hub-internal/hub-internal.key" in line
